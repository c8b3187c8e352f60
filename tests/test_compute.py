"""How training runs on the hardware (params compute, transfer/training/compute.py), proved on a CPU: the mixed
precision each machine gets, every forward of a training step under the autocast as a GPU runs it, a model
wrapped for several devices, gradient accumulation that trains as the bigger batch, gradient checkpointing."""
import contextlib

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from transfer import strategies
from transfer.modeling import load_classifier, load_encoder, load_tokenizer
from transfer.schema import UserError
from transfer.training import compute
from transfer.training.classifier import ResumableTrainer, train_classifier
from transfer.training.masked_lm import MaskedLMTrainer, masked_positions_loss, train_masked_lm
from tests.conftest import default_params, toy_texts
from tests.test_training_controls import NAMES, toy_parts

GPUS = {  # what torch.cuda reports: (bf16 support, compute capability)
    "cpu": None, "A100": (True, (8, 0)), "H100": (True, (9, 0)), "V100": (False, (7, 0)), "T4": (False, (7, 5))}


def on(monkeypatch, machine):
    gpu = GPUS[machine]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    if gpu is not None:
        # as torch's: before Ampere bf16 counts as supported unless emulation is left out
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu[0] or including_emulation)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: gpu[1])
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: f"NVIDIA {machine}")


@pytest.mark.parametrize("machine,setting,expected", [
    ("cpu", "auto", dict(bf16=False, fp16=False, tf32=None, use_cpu=True)),
    ("cpu", "bf16", dict(bf16=True, fp16=False, tf32=None, use_cpu=True)),
    ("A100", "auto", dict(bf16=True, fp16=False, tf32=True, use_cpu=False)),
    ("H100", "fp16", dict(bf16=False, fp16=True, tf32=True, use_cpu=False)),
    ("A100", "fp32", dict(bf16=False, fp16=False, tf32=None, use_cpu=False)),
    ("V100", "auto", dict(bf16=False, fp16=True, tf32=None, use_cpu=False)),
    ("T4", "auto", dict(bf16=False, fp16=True, tf32=None, use_cpu=False)),
])
def test_each_machine_trains_in_the_format_it_has(monkeypatch, machine, setting, expected):
    on(monkeypatch, machine)
    arguments = compute.training_arguments({"precision": setting, "gradient_checkpointing": False})
    assert {key: arguments[key] for key in expected} == expected


@pytest.mark.parametrize("machine,setting,message", [
    ("cpu", "fp16", r"compute.precision is fp16, which needs a GPU \(CUDA\) and none is visible here"),
    ("V100", "bf16", r"compute.precision is bf16, which this GPU \(NVIDIA V100\) cannot run"),
])
def test_a_format_the_machine_cannot_train_in_is_refused_before_anything_runs(monkeypatch, machine, setting,
                                                                              message, tiny_bert):
    on(monkeypatch, machine)
    params = default_params()
    params["model"]["name"] = str(tiny_bert)
    params["compute"]["precision"] = setting
    with pytest.raises(UserError, match=message):
        strategies.preflight(params)  # what the check and pretrain stages run first (finetune, peft: compute.check)


class HeadDtypes(TrainerCallback):
    """Forward hooks on a Linear layer: the dtype of each output and the rows it computed, in training steps only."""

    def __init__(self, layer):
        self.seen, self.training = [], False
        layer.register_forward_hook(self.record)

    def record(self, module, inputs, output):
        if self.training:
            self.seen.append((output.dtype, output.reshape(-1, output.shape[-1]).shape[0]))

    def on_step_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_step_end(self, args, state, control, **kwargs):
        self.training = False


def as_on_a_gpu(monkeypatch, trainer_class):
    """On a CPU the Trainer wraps compute_loss in its own autocast; on a GPU it leaves autocast to the wrapper
    accelerate puts around model.forward. Take the CPU one away, so only what a GPU run has is left."""
    monkeypatch.setattr(trainer_class, "autocast_smart_context_manager",
                        lambda self, cache_enabled=True: contextlib.nullcontext())


def test_the_masked_lm_head_runs_under_the_autocast_as_the_task_forward_does(tiny_bert, tmp_path, monkeypatch):
    as_on_a_gpu(monkeypatch, MaskedLMTrainer)
    params = default_params()
    params["compute"]["precision"] = "bf16"
    cfg = {**params["pretrain"], "batch_size": 8, "max_length": 32}
    torch.manual_seed(0)
    model = load_encoder(str(tiny_bert), masked_lm=True)
    spy = HeadDtypes(model.cls.predictions.transform.dense)
    original = MaskedLMTrainer.compute_loss
    masked_rows = []

    def counting(self, model, inputs, *args, **kwargs):
        masked_rows.append(int((inputs["labels"] != -100).sum()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(MaskedLMTrainer, "compute_loss", counting)
    monkeypatch.setattr(MaskedLMTrainer, "__init__", lambda self, *a, callbacks=(), **k: original_init(
        self, *a, callbacks=[*callbacks, spy], **k))
    train_masked_lm(model, load_tokenizer(str(tiny_bert)), toy_texts(32)["review"].tolist(), cfg, params["compute"],
                    0, tmp_path / "mlm", max_steps=2, learning_rate=1e-3, save_every=100)
    assert [dtype for dtype, _ in spy.seen] == [torch.bfloat16] * 2
    assert [rows for _, rows in spy.seen] == masked_rows  # the head ran on the masked positions alone


original_init = MaskedLMTrainer.__init__


@pytest.mark.parametrize("weights", ["none", "auto"])
def test_the_classifier_head_runs_under_the_autocast(tiny_bert, tmp_path, monkeypatch, weights):
    as_on_a_gpu(monkeypatch, ResumableTrainer)
    params = default_params()
    params["compute"]["precision"] = "bf16"
    params["train"].update(max_length=32, batch_size=8, class_weights=weights)
    torch.manual_seed(0)
    model = load_classifier(str(tiny_bert), NAMES)
    spy = HeadDtypes(model.classifier)
    parts = toy_parts(train=48 if weights == "none" else 64)
    if weights == "auto":
        parts["train"] = parts["train"][(parts["train"]["label"] == 1) | (parts["train"].index < 16)]  # 8 vs 32
    train_classifier(model, load_tokenizer(str(tiny_bert)), parts, params, 1, 1e-3, tmp_path / "ckpt",
                     callbacks=[spy])
    assert spy.seen and {dtype for dtype, _ in spy.seen} == {torch.bfloat16}


def test_after_training_in_bf16_the_model_runs_in_fp32_again(tiny_bert, tmp_path, monkeypatch):
    """accelerate wraps model.forward in autocast for a bf16 run and the Trainer leaves the wrapper on: whatever ran
    the model after training (compress's fp32 test figures and latency, the held-out loss after pretraining, the
    perplexity after lm_finetune) ran in bf16 under an fp32 name. On an Ampere GPU TrainingArguments(tf32=True)
    also leaves every later fp32 matmul in TF32."""
    as_on_a_gpu(monkeypatch, ResumableTrainer)
    as_on_a_gpu(monkeypatch, MaskedLMTrainer)
    params = default_params()
    params["compute"]["precision"] = "bf16"
    params["train"].update(max_length=32, batch_size=8)
    tokenizer = load_tokenizer(str(tiny_bert))
    inputs = tokenizer(["a short text", "and another one"], padding=True, return_tensors="pt")
    classifier = load_classifier(str(tiny_bert), NAMES)
    encoder = load_encoder(str(tiny_bert), masked_lm=True)
    spies = {"classifier": HeadDtypes(classifier.classifier),
             "masked-LM": HeadDtypes(encoder.cls.predictions.transform.dense)}
    monkeypatch.setattr(MaskedLMTrainer, "__init__", lambda self, *a, callbacks=(), **k: original_init(
        self, *a, callbacks=[*callbacks, spies["masked-LM"]], **k))
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # as TrainingArguments(tf32=True) leaves it on such a GPU
        train_classifier(classifier, tokenizer, toy_parts(train=16), params, 1, 1e-3, tmp_path / "ckpt",
                         callbacks=[spies["classifier"]])
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default, whatever the function did
    train_masked_lm(encoder, tokenizer, toy_texts(16)["review"].tolist(), {**params["pretrain"], "batch_size": 8,
                    "max_length": 32}, params["compute"], 0, tmp_path / "mlm", max_steps=2, learning_rate=1e-3,
                    save_every=100)
    fresh = {"classifier": load_classifier(str(tiny_bert), NAMES),
             "masked-LM": load_encoder(str(tiny_bert), masked_lm=True)}
    for name, model in {"classifier": classifier, "masked-LM": encoder}.items():
        spy = spies[name]
        assert {dtype for dtype, _ in spy.seen} == {torch.bfloat16}, name  # it trained under the autocast
        spy.seen, spy.training = [], True
        with torch.no_grad():
            logits = model.eval()(**inputs).logits
            fresh[name].load_state_dict(model.state_dict())
            assert torch.equal(logits, fresh[name].eval()(**inputs).logits), name
        assert [dtype for dtype, _ in spy.seen] == [torch.float32], name


def masked_batch(tiny_bert, rows=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    encoded = load_tokenizer(str(tiny_bert))(toy_texts(rows)["review"].tolist(), padding=True, return_tensors="pt")
    labels = encoded["input_ids"].clone()
    labels[torch.rand(labels.shape, generator=generator) > 0.3] = -100
    labels[:, 0] = encoded["input_ids"][:, 0]  # every row has a masked position
    return {**encoded, "labels": labels}


def test_a_wrapped_model_runs_its_own_forward_to_the_same_loss(tiny_bert, tmp_path, monkeypatch):
    """DataParallel and DistributedDataParallel have no base_model_prefix; their forward must run (it splits the
    batch over the GPUs, or syncs the gradients). Here: DataParallel on a CPU, DDP in a one-process gloo group."""
    torch.manual_seed(0)
    model = load_encoder(str(tiny_bert), masked_lm=True).eval()
    batch = masked_batch(tiny_bert)
    expected = model(**batch).loss
    assert masked_positions_loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    assert masked_positions_loss(torch.nn.DataParallel(model), batch).item() == pytest.approx(expected.item(), rel=1e-5)
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # no hostname lookup, no port: a file is the rendezvous
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1),
                                         rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        loss = masked_positions_loss(wrapped, batch)
        loss.backward()
    finally:
        torch.distributed.destroy_process_group()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_the_masked_lm_loss_of_accumulated_batches_is_that_of_the_whole_batch(tiny_bert):
    torch.manual_seed(0)
    model = load_encoder(str(tiny_bert), masked_lm=True).eval()
    batch = masked_batch(tiny_bert)
    first, second = ({key: value[part] for key, value in batch.items()} for part in (slice(0, 3), slice(3, 8)))
    assert int((first["labels"] != -100).sum()) != int((second["labels"] != -100).sum())  # a mean of means differs
    items = (batch["labels"] != -100).sum()
    accumulated = masked_positions_loss(model, first, items) + masked_positions_loss(model, second, items)
    assert accumulated.item() == pytest.approx(masked_positions_loss(model, batch).item(), rel=1e-5)


class FirstGradNorm(TrainerCallback):
    def __init__(self):
        self.grad_norms = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "grad_norm" in logs:
            self.grad_norms.append(logs["grad_norm"])


def no_dropout(model):
    """Dropout off, so two runs can be compared step for step (BERT's SDPA attention keeps its own rate)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return model


@pytest.mark.parametrize("weights", ["none", "auto"])
def test_gradient_accumulation_trains_the_classifier_as_the_bigger_batch(tiny_bert, tmp_path, weights):
    """The gradient of the first optimizer step, 8 rows at once against 2 x 4 rows accumulated: the stock loss, and
    the class-weighted one (class_weights auto, 2 rows of one class against 16), which sums each row's weighted loss
    over the rows of the whole step, also on a model that takes the Trainer's loss arguments itself."""
    norms = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        params = default_params()
        params["train"].update(max_length=32, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                               logging_steps=1, group_by_length=False, class_weights=weights)
        torch.manual_seed(0)
        model = no_dropout(load_classifier(str(tiny_bert), NAMES))
        parts = toy_parts(train=32)
        if weights == "auto":
            model.accepts_loss_kwargs = True
            parts["train"] = parts["train"][(parts["train"]["label"] == 1) | (parts["train"].index < 4)]
        spy = FirstGradNorm()
        train_classifier(model, load_tokenizer(str(tiny_bert)), parts, params, 1, 1e-3,
                         tmp_path / f"b{batch_size}", callbacks=[spy])
        norms[batch_size] = spy.grad_norms[0]
    assert norms[4] == pytest.approx(norms[8], rel=1e-4)


def test_gradient_accumulation_trains_the_masked_lm_as_the_bigger_batch(tiny_bert, tmp_path):
    from datasets import Dataset

    batch = masked_batch(tiny_bert, rows=8)
    rows = Dataset.from_dict({key: value.tolist() for key, value in batch.items()})
    norms = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = no_dropout(load_encoder(str(tiny_bert), masked_lm=True))
        spy = FirstGradNorm()
        args = TrainingArguments(str(tmp_path / f"b{batch_size}"), max_steps=1, per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=accumulation, logging_steps=1, save_strategy="no",
                                 report_to=[], use_cpu=True, seed=0, data_seed=0)
        MaskedLMTrainer(model=model, args=args, train_dataset=rows, callbacks=[spy],
                        data_collator=lambda examples: {key: torch.tensor([e[key] for e in examples])
                                                        for key in examples[0]}).train()
        norms[batch_size] = spy.grad_norms[0]
    assert norms[4] == pytest.approx(norms[8], rel=1e-4)


@pytest.mark.parametrize("strategy", [name for name in strategies.NAMES if name != "prefix"])
def test_gradient_checkpointing_recomputes_the_layers_and_keeps_the_gradient(tiny_bert, tmp_path, strategy):
    results = {}
    for checkpointing in (False, True):
        params = default_params()
        params["compute"]["gradient_checkpointing"] = checkpointing
        # checkpointing keeps PyTorch's dropout masks (compute.py); adapter_stack's domain phase trains with dropout,
        # so both runs draw PyTorch's masks here, to see the same random numbers
        params["compute"]["cpu_dropout"] = "native"
        params["train"].update(max_length=32, batch_size=8, logging_steps=1, group_by_length=False)
        params["adapter_stack"].update(domain_steps=2)
        params["pretrain"].update(batch_size=8, max_length=32)
        torch.manual_seed(0)
        tokenizer = load_tokenizer(str(tiny_bert))
        plan = strategies.prepare(strategy, no_dropout(load_classifier(str(tiny_bert), NAMES)), params,
                                  work_dir=tmp_path / f"domain-{checkpointing}", tokenizer=tokenizer,
                                  domain_texts=toy_texts(32)["review"].tolist())
        model = no_dropout(plan.model)
        layer = next(module for name, module in model.named_modules() if name.endswith("encoder.layer.1"))
        first_linear = next(module for module in layer.modules() if isinstance(module, torch.nn.Linear))
        needs_grad = []  # per training forward of the layer's first matmul: whether the backward pass needs it
        first_linear.register_forward_hook(lambda module, inputs, output: needs_grad.append(output.requires_grad)
                                           if torch.is_grad_enabled() else None)
        spy = FirstGradNorm()
        train_classifier(model, tokenizer, toy_parts(train=16), params, 1, 1e-3, tmp_path / f"c{checkpointing}",
                         plan.param_groups, [*plan.callbacks, spy])
        results[checkpointing] = (needs_grad, spy.grad_norms[0])
    (plain, plain_norm), (checkpointed, checkpointed_norm) = results[False], results[True]
    assert checkpointed_norm == pytest.approx(plain_norm, rel=1e-4)
    # where the backward pass goes through the layer, it runs the layer again (its activations were not kept)
    assert len(checkpointed) == len(plain) + sum(plain)


def test_prefix_tuning_with_gradient_checkpointing_is_refused_before_anything_runs(tiny_bert):
    params = default_params()
    params["model"]["name"] = str(tiny_bert)
    params.update(strategy="prefix")
    params["compute"]["gradient_checkpointing"] = True
    with pytest.raises(UserError, match=r"strategy prefix cannot train with compute.gradient_checkpointing"):
        strategies.preflight(params)


def test_a_fp32_run_after_a_bf16_one_in_the_same_process_trains_in_fp32(tiny_bert, tmp_path):
    """TrainingArguments(bf16=True) leaves bf16 in the environment, where accelerate reads it for later runs."""
    seen = {}
    for setting in ("bf16", "fp32"):
        params = default_params()
        params["compute"]["precision"] = setting
        params["train"].update(max_length=32, batch_size=8)
        model = load_classifier(str(tiny_bert), NAMES)
        spy = HeadDtypes(model.classifier)
        train_classifier(model, load_tokenizer(str(tiny_bert)), toy_parts(train=16), params, 1, 1e-3,
                         tmp_path / setting, callbacks=[spy])
        seen[setting] = {dtype for dtype, _ in spy.seen}
    assert seen == {"bf16": {torch.bfloat16}, "fp32": {torch.float32}}
