"""The mechanics of each strategy on a tiny random BERT: what trains, what stays, what takes part."""
import json

import pytest
import torch

from transfer import strategies
from transfer.schema import UserError
from transfer.modeling import load_classifier, load_tokenizer
from tests.conftest import default_params, toy_texts

NAMES = ["negative", "positive"]


def tiny_classifier(tiny_bert):
    torch.manual_seed(0)
    return load_classifier(str(tiny_bert), NAMES)


def batch(tiny_bert, count=16):
    toy = toy_texts(count)
    encoded = load_tokenizer(str(tiny_bert))(toy["review"].tolist(), padding=True, return_tensors="pt")
    encoded["labels"] = torch.tensor([NAMES.index(label) for label in toy["sentiment"]])
    return encoded


def eval_loss(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).loss.item()


def train_steps(model, inputs, groups=None, steps=20, lr=1e-2):
    """Train on one batch; return the eval-mode loss before and after (dropout would blur the comparison)."""
    optimizer = torch.optim.AdamW(groups or [p for p in model.parameters() if p.requires_grad], lr=lr)
    before = eval_loss(model, inputs)
    model.train()
    for _ in range(steps):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return before, eval_loss(model, inputs)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def test_frozen_trains_only_the_head(tiny_bert):
    plan = strategies.prepare("frozen", tiny_classifier(tiny_bert), default_params())
    model, groups = plan.model, plan.param_groups
    before = snapshot(model)
    loss_before, loss_after = train_steps(model, batch(tiny_bert), lr=0.05, steps=30)
    assert groups is None and loss_after < loss_before
    assert changed(before, model) == {"classifier.weight", "classifier.bias"}


def test_partial_trains_the_top_layers_and_head(tiny_bert):
    params = default_params()
    params["partial"]["top_layers"] = 2
    model = strategies.prepare("partial", tiny_classifier(tiny_bert), params).model
    before = snapshot(model)
    train_steps(model, batch(tiny_bert))
    moved = changed(before, model)
    assert {"classifier.weight", "classifier.bias"} <= moved
    assert any(name.startswith("bert.encoder.layer.3.") for name in moved)
    assert any(name.startswith("bert.encoder.layer.2.") for name in moved)
    assert not any(name.startswith(("bert.encoder.layer.0.", "bert.encoder.layer.1.", "bert.embeddings"))
                   for name in moved)


def test_partial_refuses_more_layers_than_the_model_has(tiny_bert):
    params = default_params()
    params["partial"]["top_layers"] = 5
    with pytest.raises(UserError, match="only 4 encoder layers; choose 1 to 4"):
        strategies.prepare("partial", tiny_classifier(tiny_bert), params)


def test_llrd_learning_rates_follow_the_decay(tiny_bert):
    params = default_params()
    params["llrd"].update(learning_rate=1e-3, decay=0.5, head_learning_rate=7e-3)
    plan = strategies.prepare("llrd", tiny_classifier(tiny_bert), params)
    model, groups = plan.model, plan.param_groups
    lr_of = {}
    for group in groups:
        for parameter in group["params"]:
            lr_of[id(parameter)] = group["lr"]
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(7e-3)
    for layer in range(4):
        depth = 3 - layer
        assert lr_of[id(named[f"bert.encoder.layer.{layer}.attention.self.query.weight"])] == pytest.approx(
            1e-3 * 0.5 ** depth)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.5 ** 4)
    assert len(lr_of) == len(named), "every parameter is in exactly one group"
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert all(p.ndim == 1 for g in no_decay for p in g["params"])
    loss_before, loss_after = train_steps(model, batch(tiny_bert), groups=groups)
    assert loss_after < loss_before


@pytest.mark.parametrize("strategy", ["lora", "ia3"])
def test_peft_strategies_train_few_weights_that_take_part(tiny_bert, strategy):
    model = strategies.prepare(strategy, tiny_classifier(tiny_bert), default_params()).model
    before = snapshot(model)
    inputs = batch(tiny_bert)
    train_steps(model, inputs)
    moved = changed(before, model)
    injected = "lora_" if strategy == "lora" else "ia3_l"
    assert any(injected in name for name in moved)
    assert not any("base_layer" in name or "embeddings" in name for name in moved), "backbone stayed frozen"
    # the injected weights take part in the forward pass: changing them changes the logits
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits.clone()
        for name, parameter in model.named_parameters():
            if injected in name:
                parameter.add_(0.5)
        assert not torch.allclose(model(**inputs).logits, logits)
        # merging folds them into a plain model that computes the same logits
        expected = model(**inputs).logits
        plain = strategies.merged(model)
        assert type(plain).__name__ == "BertForSequenceClassification"
        # float32 sums in a different order: agreement to 1e-4 (machines with other SIMD differ at 1e-5)
        assert torch.allclose(plain(**inputs).logits, expected, atol=1e-4, rtol=1e-4)


def test_lora_trainable_fraction_is_small(tiny_bert):
    from transfer.modeling import count_parameters

    model = strategies.prepare("lora", tiny_classifier(tiny_bert), default_params()).model
    counts = count_parameters(model)
    assert 0 < counts["trainable_fraction"] < 0.5
    assert counts["trainable_params"] < counts["total_params"]


def test_unknown_target_modules_name_the_real_ones(tiny_bert):
    params = default_params()
    params["lora"]["target_modules"] = ["q_proj", "query"]
    with pytest.raises(UserError, match=r"names \['q_proj'\], which this model does not have; its linear layers "
                                        r"are: dense, key, query, value"):
        strategies.prepare("lora", tiny_classifier(tiny_bert), params)


def backbone_names(model):
    """Names of the pretrained weights inside whatever wraps them (peft, adapters), injected weights left out."""
    injected = ("lora_", "ia3_", "prompt_encoder", "adapters.", "modules_to_save", "classifier")
    return {name for name, _ in model.named_parameters() if not any(part in name for part in injected)}


def perturbed_logits_differ(model, inputs, marker):
    """Add noise to every weight whose name holds `marker`: the logits must move if those weights take part.
    (Noise, not a constant: a constant shift of an embedding vanishes in the LayerNorm that follows.)"""
    model.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        logits = model(**inputs).logits.clone()
        touched = 0
        for name, parameter in model.named_parameters():
            if marker in name:
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
                touched += 1
        assert touched, f"no weight named like {marker!r}"
        return not torch.allclose(model(**inputs).logits, logits)


@pytest.mark.parametrize("strategy, marker", [("prefix", "prompt_encoder"), ("prompt", "prompt_encoder"),
                                              ("adapter", "adapters.task"), ("ia3", "ia3_l"), ("lora", "lora_")])
def test_injected_strategies_train_only_their_weights_and_round_trip(tiny_bert, tmp_path, strategy, marker):
    model = strategies.prepare(strategy, tiny_classifier(tiny_bert), default_params()).model
    before = snapshot(model)
    inputs = batch(tiny_bert)
    loss_before, loss_after = train_steps(model, inputs)
    moved = changed(before, model)
    assert loss_after < loss_before
    assert any(marker in name for name in moved) and any("classifier" in name for name in moved)
    assert not moved & backbone_names(model), "the pretrained weights are bit-identical"
    assert perturbed_logits_differ(model, inputs, marker), "the injected weights take part in the forward pass"
    # what save_adapted writes (merging where it can), load_adapted rebuilds around a fresh base: the same logits
    with torch.no_grad():
        expected = model(**inputs).logits
    strategies.save_adapted(model, strategy, load_tokenizer(str(tiny_bert)), tmp_path / "peft")
    assert (tmp_path / "peft/merged").is_dir() == strategies.mergeable(strategy)
    assert not list(tmp_path.rglob("*.bin")), "safetensors only"
    rebuilt = strategies.load_adapted(tmp_path / "peft", tiny_bert)
    with torch.no_grad():
        assert torch.allclose(rebuilt(**inputs).logits, expected, atol=1e-4, rtol=1e-4)


def test_adapter_kinds_place_one_or_two_bottlenecks_per_layer(tiny_bert):
    params = default_params()
    counts = {}
    for kind in ("pfeiffer", "houlsby"):
        params["adapter"].update(kind=kind, reduction_factor=4)
        model = strategies.prepare("adapter", tiny_classifier(tiny_bert), params).model
        counts[kind] = len({name.split(".adapters.")[0] for name, _ in model.named_parameters() if ".adapters." in name})
        width = next(p for name, p in model.named_parameters() if name.endswith("adapter_down.0.weight")).shape[0]
        assert width == 32 // 4, "bottleneck width = hidden size / reduction_factor"
    assert counts == {"pfeiffer": 4, "houlsby": 8}


def test_adapter_stack_trains_a_domain_adapter_then_a_task_adapter_on_top(tiny_bert, tmp_path):
    params = default_params()
    params["pretrain"].update(batch_size=8, max_length=32)
    params["adapter_stack"].update(domain_steps=10, domain_learning_rate=5e-2, reduction_factor=4)
    tokenizer = load_tokenizer(str(tiny_bert))
    plan = strategies.prepare("adapter_stack", tiny_classifier(tiny_bert), params, work_dir=tmp_path / "domain",
                              tokenizer=tokenizer, domain_texts=toy_texts(64, seed=1)["review"].tolist())
    model = plan.model
    assert plan.metrics["domain_adapter_seconds"] > 0
    domain = {name: p for name, p in model.named_parameters() if "adapters.domain" in name}
    assert domain and not any(p.requires_grad for p in domain.values()), "the domain adapter stays fixed"
    assert any(p.abs().sum() > 0 for name, p in domain.items() if "adapter_up" in name), \
        "the domain adapter was trained (its up-projection starts at zero)"
    before = snapshot(model)
    inputs = batch(tiny_bert)
    train_steps(model, inputs)
    moved = changed(before, model)
    assert any("adapters.task" in name for name in moved)
    assert not any("adapters.domain" in name for name in moved) and not moved & backbone_names(model)
    assert perturbed_logits_differ(model, inputs, "adapters.domain"), "the domain adapter takes part"
    assert perturbed_logits_differ(model, inputs, "adapters.task"), "the task adapter takes part"


def test_adapter_stack_refuses_an_empty_pool(tiny_bert, tmp_path):
    with pytest.raises(UserError, match="unlabeled pool, which is empty"):
        strategies.prepare("adapter_stack", tiny_classifier(tiny_bert), default_params(), work_dir=tmp_path,
                           tokenizer=load_tokenizer(str(tiny_bert)), domain_texts=[])


def test_gradual_unfreezes_one_layer_from_the_top_on_schedule(tiny_bert):
    from types import SimpleNamespace

    params = default_params()
    params["gradual"].update(learning_rate=1e-3, decay=0.5, head_learning_rate=7e-3, unfreeze_every=3,
                             unfreeze_unit="steps")
    plan = strategies.prepare("gradual", tiny_classifier(tiny_bert), params)
    model, (callback,) = plan.model, plan.callbacks
    named = dict(model.named_parameters())
    lr_of = {id(p): group["lr"] for group in plan.param_groups for p in group["params"]}
    assert len(lr_of) == len(named), "every parameter is in the optimizer from the start"
    assert lr_of[id(named["bert.encoder.layer.3.output.dense.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(1e-3 * 0.5 ** 3)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.5 ** 4)
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(7e-3)

    def trainable_layers():
        return sorted({int(name.split(".")[3]) for name, p in named.items() if p.requires_grad and ".layer." in name})

    expected = {0: [], 3: [3], 6: [2, 3], 9: [1, 2, 3], 12: [0, 1, 2, 3], 15: [0, 1, 2, 3]}
    for step, layers in expected.items():
        callback.on_step_begin(None, SimpleNamespace(global_step=step), None)
        assert trainable_layers() == layers, f"step {step}"
        assert named["bert.embeddings.word_embeddings.weight"].requires_grad == (step >= 15)
        assert named["classifier.weight"].requires_grad
    logs = {}
    callback.on_log(None, None, None, logs=logs)
    assert logs == {"unfrozen_layers": 4}

    # training for 5 steps moves the head, then the top layer from step 3; everything below stays bit-identical
    model = strategies.prepare("gradual", tiny_classifier(tiny_bert), params).model
    plan = strategies.prepare("gradual", model, params)
    before, inputs = snapshot(model), batch(tiny_bert)
    optimizer = torch.optim.AdamW(plan.param_groups)
    model.train()
    for step in range(5):
        plan.callbacks[0].on_step_begin(None, SimpleNamespace(global_step=step), None)
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    moved = changed(before, model)
    assert {"classifier.weight", "classifier.bias"} <= moved
    assert any(name.startswith("bert.encoder.layer.3.") for name in moved)
    assert not any(name.startswith(("bert.encoder.layer.0.", "bert.encoder.layer.1.", "bert.encoder.layer.2.",
                                    "bert.embeddings")) for name in moved)


def test_gradual_unfreezes_by_epoch_when_asked(tiny_bert):
    from types import SimpleNamespace

    params = default_params()
    params["gradual"].update(unfreeze_every=1, unfreeze_unit="epochs")
    callback = strategies.prepare("gradual", tiny_classifier(tiny_bert), params).callbacks[0]
    callback.on_step_begin(None, SimpleNamespace(global_step=100), None)
    assert callback.unfrozen_layers == 0, "steps do not count when the unit is epochs"
    for epoch, layers in ((0.0, 0), (1.0, 1), (2.0, 2)):
        callback.on_epoch_begin(None, SimpleNamespace(epoch=epoch), None)
        assert callback.unfrozen_layers == layers


def test_scratch_keeps_the_architecture_and_drops_the_pretrained_weights(tiny_bert):
    pretrained = tiny_classifier(tiny_bert)
    reference = snapshot(pretrained)
    model = strategies.prepare("scratch", pretrained, default_params()).model
    assert type(model) is type(pretrained) and model.config.num_labels == 2
    weights = dict(model.named_parameters())
    assert weights.keys() == reference.keys()
    assert all(p.requires_grad for p in weights.values())
    encoder = [name for name in reference if "encoder" in name and name.endswith("weight") and "LayerNorm" not in name]
    assert not any(torch.equal(weights[name], reference[name]) for name in encoder)
    loss_before, loss_after = train_steps(model, batch(tiny_bert), lr=1e-3)
    assert loss_after < loss_before


@pytest.mark.parametrize("strategy", ["lora", "ia3"])
def test_the_saved_adapter_config_lists_its_modules_in_one_order_whatever_the_hash_seed(tiny_bert, tmp_path, strategy):
    """peft keeps target_modules as a set, which a JSON file lists in the order of Python's per-process string hash:
    the same run wrote another adapter_config.json (and models/peft another DVC hash) half of the time."""
    params = default_params()
    params[strategy]["target_modules"] = ["value", "query", "key", "dense"]
    model = strategies.prepare(strategy, tiny_classifier(tiny_bert), params).model
    strategies.save_adapted(model, strategy, load_tokenizer(str(tiny_bert)), tmp_path / "peft")
    saved = json.loads((tmp_path / "peft/trained/adapter_config.json").read_text())
    assert saved["target_modules"] == ["dense", "key", "query", "value"]
