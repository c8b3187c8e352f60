"""The training controls of train_classifier, as finetune and peft run them: early stopping with the best epoch
restored, weight decay that spares biases and norms, gradient clipping, the learning-rate schedule. A tiny random
BERT on toy texts."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import TrainerCallback

from transfer import strategies
from transfer.modeling import load_classifier, load_tokenizer, predict
from transfer.tasks.classification import classification_report
from transfer.training.classifier import EarlyStoppingFrom, ResumableTrainer, train_classifier
from tests.conftest import default_params, toy_texts

NAMES = ["negative", "positive"]


def toy_parts(train=160, validation=40):
    toy = toy_texts(train + validation, seed=3)
    frame = pd.DataFrame({"text": toy["review"], "label": (toy["sentiment"] == "positive").astype(int)})
    return {"train": frame.head(train).reset_index(drop=True), "validation": frame.tail(validation).reset_index(drop=True)}


def toy_params(**train):
    params = default_params()
    params["train"].update({"max_length": 32, "batch_size": 8, "logging_steps": 5, "evals_per_epoch": 1,
                            "early_stopping_start": 0.0, **train})
    return params


def classifier(tiny_bert):
    torch.manual_seed(0)
    return load_classifier(str(tiny_bert), NAMES)


def train(tiny_bert, model, params, tmp_path, epochs=1, learning_rate=2e-3, callbacks=(), param_groups=None):
    return train_classifier(model, load_tokenizer(str(tiny_bert)), toy_parts(), params, epochs, learning_rate,
                            tmp_path / "checkpoints", param_groups, callbacks)[0]


class Spy(TrainerCallback):
    """Records the validation macro-F1 of each evaluation and the Trainer's logged grad norms and learning rates."""

    def __init__(self):
        self.evaluations, self.evaluated_steps, self.grad_norms, self.learning_rates = [], [], [], []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append(metrics["eval_macro_f1"])
        self.evaluated_steps.append(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "grad_norm" in logs:
            self.grad_norms.append(logs["grad_norm"])
            self.learning_rates.append(logs["learning_rate"])  # the rate of the step logged


class OneClassAfterEpoch(TrainerCallback):
    """At the end of `epoch`, before it is evaluated, tilt the classifier so it answers 'negative' for every text."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if round(state.epoch) == self.epoch:
            with torch.no_grad():
                model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))


def test_early_stopping_stops_and_restores_the_best_epoch(tiny_bert, tmp_path):
    model, spy = classifier(tiny_bert), Spy()
    results = train(tiny_bert, model, toy_params(early_stopping_patience=1), tmp_path, epochs=8,
                    callbacks=[spy, OneClassAfterEpoch(3)])
    *learning, broken = spy.evaluations[:3]
    best = max(learning)
    assert best > 0.8 and broken < best  # two epochs learned the toy task; the third was made worse
    assert results["epochs_run"] == 3 and len(spy.evaluations) == 3  # 3 epochs of 8
    assert results["best_epoch_step"] == (learning.index(best) + 1) * 160 // 8  # that epoch's checkpoint
    assert results["val_macro_f1"] == pytest.approx(best, abs=1e-6)
    assert model.classifier.bias.abs().max() < 50  # the weights are the best epoch's, not the last


def test_without_a_worse_epoch_training_runs_every_epoch(tiny_bert, tmp_path):
    results = train(tiny_bert, classifier(tiny_bert), toy_params(early_stopping_patience=1), tmp_path, epochs=3,
                    learning_rate=0.0)  # nothing changes, so no epoch is better than the first: stops at 2
    assert results["epochs_run"] == 2
    results = train(tiny_bert, classifier(tiny_bert), toy_params(early_stopping_patience=5), tmp_path / "more",
                    epochs=3, learning_rate=0.0)
    assert results["epochs_run"] == 3


def test_the_defaults_evaluate_within_each_epoch_keep_the_best_pass_and_stop_longer_runs_early(tiny_bert, tmp_path):
    defaults = default_params()
    epochs = defaults["finetune"]["epochs"]
    assert defaults["peft"]["epochs"] == epochs
    controls = {key: defaults["train"][key] for key in ("evals_per_epoch", "early_stopping_patience",
                                                         "early_stopping_start")}
    assert controls["evals_per_epoch"] >= 2  # a pass to choose from before the end, even in a one-epoch run
    steps_per_epoch, steps_per_pass = 160 // 8, 160 // 8 // controls["evals_per_epoch"]

    spy = Spy()
    results = train(tiny_bert, classifier(tiny_bert), toy_params(**controls), tmp_path / "default", epochs=epochs,
                    callbacks=[spy])
    assert spy.evaluated_steps == [(i + 1) * steps_per_pass for i in range(epochs * controls["evals_per_epoch"])]
    best = int(np.argmax(spy.evaluations))  # the first of equals, as the Trainer keeps it
    assert results["best_epoch_step"] == spy.evaluated_steps[best]  # kept at the grain of the evaluations
    assert results["val_macro_f1"] == pytest.approx(spy.evaluations[best], abs=1e-6)

    longer = epochs + 3  # with more epochs (train.epochs raised) the default controls end a run that stalls
    spy = Spy()
    results = train(tiny_bert, classifier(tiny_bert), toy_params(**controls), tmp_path / "stalled", epochs=longer,
                    learning_rate=0.0, callbacks=[spy])  # nothing improves after the first evaluation
    first_counted = math.ceil(controls["early_stopping_start"] * longer * steps_per_epoch / steps_per_pass)
    assert len(spy.evaluations) == first_counted + controls["early_stopping_patience"] - 1  # then it stopped
    assert results["epochs_run"] < longer


def test_early_stopping_counts_only_from_its_start_on(tiny_bert, tmp_path):
    """6 epochs, one pass each, patience 1, nothing improves after the first pass: from the start it stops at the
    second pass; from half of the run it lets the second pass (step 40 of 120) by and stops at the third."""
    for start, passes in ((0.0, 2), (0.5, 3)):
        spy = Spy()
        results = train(tiny_bert, classifier(tiny_bert), toy_params(early_stopping_patience=1,
                                                                     early_stopping_start=start),
                        tmp_path / str(start), epochs=6, learning_rate=0.0, callbacks=[spy])
        assert len(spy.evaluations) == passes and results["epochs_run"] == passes
    callback = EarlyStoppingFrom(2, start=0.5)
    callback.early_stopping_patience_counter = 1
    rebuilt = EarlyStoppingFrom.from_state(callback.state())  # as the Trainer restores it on a resume
    assert (rebuilt.start, rebuilt.early_stopping_patience, rebuilt.early_stopping_patience_counter) == (0.5, 2, 1)


class CountingTrainer(ResumableTrainer):
    """Counts the passes over a split outside training (predict)."""
    predicts = 0

    def predict(self, *args, **kwargs):
        CountingTrainer.predicts += 1
        return super().predict(*args, **kwargs)


def fresh_report(tiny_bert, model):
    """The validation report of the trained model, from a pass of its own over the validation split."""
    validation = toy_parts()["validation"]
    probabilities = predict(model, load_tokenizer(str(tiny_bert)), validation["text"].tolist(), 32, truncation="head_tail")
    return classification_report(validation["label"].to_numpy(), probabilities.argmax(axis=-1), NAMES)


def test_the_validation_report_is_the_best_epochs_own_evaluation_or_a_fresh_pass_after_a_resume(tiny_bert, tmp_path):
    model, tokenizer, folder = classifier(tiny_bert), load_tokenizer(str(tiny_bert)), tmp_path / "checkpoints"
    CountingTrainer.predicts = 0
    results, _ = train_classifier(model, tokenizer, toy_parts(), toy_params(early_stopping_patience=2), 3, 2e-3,
                                  folder, callbacks=[OneClassAfterEpoch(3)], trainer_class=CountingTrainer)
    assert results["best_epoch_step"] < 3 * 160 // 8  # the last epoch was made worse: an earlier one is kept
    assert CountingTrainer.predicts == 0  # the report is that epoch's own evaluation, not a second pass
    assert results["val_report"] == fresh_report(tiny_bert, model)
    assert results["val_macro_f1"] == pytest.approx(results["val_report"]["macro_f1"], abs=1e-9)

    # resumed after its best epoch, the run never evaluated that epoch in this process: one fresh pass instead
    model = classifier(tiny_bert)
    resumed, _ = train_classifier(model, tokenizer, toy_parts(), toy_params(early_stopping_patience=2), 4, 2e-3,
                                  folder, callbacks=[OneClassAfterEpoch(4)], trainer_class=CountingTrainer)
    assert resumed["best_epoch_step"] == results["best_epoch_step"]
    assert CountingTrainer.predicts == 1
    assert resumed["val_report"] == results["val_report"] == fresh_report(tiny_bert, model)


class DecayProbe(TrainerCallback):
    """Before the first step: every parameter set to ones, then one optimizer step with zero gradients and a fresh
    state, so AdamW's update is zero and only its decoupled weight decay moves a parameter; records each
    parameter's factor, then puts every parameter and the optimizer back as they were."""

    def __init__(self):
        self.factors = {}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        saved = [(group, group["lr"]) for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = 0.1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)
                p.grad = torch.zeros_like(p)
        optimizer.step()
        for name, p in model.named_parameters():
            self.factors[name] = float(p.detach().mean())
            with torch.no_grad():
                p.copy_(before[name])
            p.grad = None
        for group, lr in saved:
            group["lr"] = lr
        optimizer.state.clear()


def trained_by_optimizer(model, plan_groups):
    if plan_groups is None:
        return {name for name, p in model.named_parameters() if p.requires_grad}
    ids = {id(p) for group in plan_groups for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("strategy", [None, "llrd"])  # the Trainer's own optimizer, and layer-wise groups
def test_weight_decay_skips_biases_and_norms(tiny_bert, tmp_path, strategy):
    params, probe = toy_params(weight_decay=0.5), DecayProbe()
    model, groups = classifier(tiny_bert), None
    if strategy:
        plan = strategies.prepare(strategy, model, params)
        model, groups = plan.model, plan.param_groups
    train(tiny_bert, model, params, tmp_path, callbacks=[probe], param_groups=groups)
    names = trained_by_optimizer(model, groups)
    spared = {name for name in names if name.endswith("bias") or "LayerNorm" in name}
    assert spared and names - spared
    for name in names:
        expected = 1.0 if name in spared else 1 - 0.1 * 0.5
        assert probe.factors[name] == pytest.approx(expected, abs=1e-6), name


class GradNormAtStep(TrainerCallback):
    """The total gradient norm the optimizer is about to apply (after the Trainer's clipping)."""

    def __init__(self):
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))


def test_gradient_clipping_bounds_the_norm(tiny_bert, tmp_path):
    applied, spy = GradNormAtStep(), Spy()
    train(tiny_bert, classifier(tiny_bert), toy_params(max_grad_norm=0.05, logging_steps=1), tmp_path,
          callbacks=[applied, spy])
    assert len(applied.norms) == 160 // 8 and len(spy.grad_norms) == len(applied.norms)
    assert all(before > 0.05 for before in spy.grad_norms)  # every step needed clipping ...
    assert applied.norms == pytest.approx([0.05] * len(applied.norms), rel=1e-3)  # ... and got exactly the bound


@pytest.mark.parametrize("schedule", ["linear", "constant_with_warmup", "cosine", "warmup_stable_decay"])
def test_the_learning_rate_follows_train_lr_scheduler_after_the_warm_up(tiny_bert, tmp_path, schedule):
    """train.lr_scheduler reaches the Trainer: the rate climbs over the warm-up's 5 of 20 steps to the peak, then
    decays to zero (linear: evenly; cosine: slowly at first), holds (constant_with_warmup), or holds and then decays
    over the last train.decay_ratio of the steps (warmup_stable_decay: 0.3 of 20 = the last 6)."""
    spy = Spy()
    params = toy_params(lr_scheduler=schedule, warmup_ratio=0.25, decay_ratio=0.3, logging_steps=1)
    train(tiny_bert, classifier(tiny_bert), params, tmp_path, learning_rate=1e-3, callbacks=[spy])
    assert len(spy.learning_rates) == 160 // 8
    assert spy.learning_rates[:6] == pytest.approx([0.0, 2e-4, 4e-4, 6e-4, 8e-4, 1e-3])  # the warm-up, then the peak
    after = [rate / 1e-3 for rate in spy.learning_rates[6:]]  # the 14 steps after, as fractions of the peak
    if schedule == "constant_with_warmup":
        assert after == pytest.approx([1.0] * 14)
    elif schedule == "warmup_stable_decay":
        assert after == pytest.approx([1.0] * 8 + [1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    else:
        assert after == sorted(after, reverse=True) and after[-1] < 0.1
        expected = 1 - 3 / 15 if schedule == "linear" else (1 + math.cos(math.pi * 3 / 15)) / 2
        assert after[2] == pytest.approx(expected)  # 3 of 15 decaying steps done: linear 0.8 of the peak, cosine 0.905


def test_length_grouped_batches_come_in_random_order_not_as_a_drift_from_long_to_short():
    """Where length goes with the label, the stock sampler's long-to-short run through each megabatch drifts the
    label mix for 50 steps at a time; the pipeline's sampler keeps the same length-grouped batches, shuffled."""
    import numpy as np
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    from transfer.training.classifier import EpochSeededLengthGroupedSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 128, size=4000).tolist()
    sampler = EpochSeededLengthGroupedSampler(LengthGroupedSampler(16, lengths=lengths), seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(4000)), "every row once"
    batches = [order[i:i + 16] for i in range(0, 4000, 16)]
    stock = get_length_grouped_indices(lengths, 16, generator=torch.Generator().manual_seed(7))
    stock_batches = [stock[i:i + 16] for i in range(0, 4000, 16)]
    assert sorted(map(sorted, batches)) == sorted(map(sorted, stock_batches)), "the same length-grouped batches"
    assert batches[0] == stock_batches[0] and max(lengths[i] for i in batches[0]) == max(lengths)  # longest first
    mean_length = [np.mean([lengths[i] for i in batch]) for batch in batches]
    stock_length = [np.mean([lengths[i] for i in batch]) for batch in stock_batches]
    megabatch = slice(1, 50)  # the stock sampler's first megabatch of 50 batches, less the longest one
    assert np.corrcoef(range(49), stock_length[megabatch])[0, 1] < -0.9  # the drift
    assert abs(np.corrcoef(range(49), mean_length[megabatch])[0, 1]) < 0.5
    sampler.set_epoch(1)
    assert list(sampler) != order and list(EpochSeededLengthGroupedSampler(
        LengthGroupedSampler(16, lengths=lengths), seed=7)) == order, "set by the seed and the epoch alone"


def test_a_short_last_batch_stays_last_so_that_every_loaded_batch_is_one_length_group():
    """1,000 rows in batches of 16 leave a batch of 8: shuffled into the middle it shifted every later batch the
    loader cut by 8 rows, so each straddled two length groups and padded to the longer one."""
    import numpy as np
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    from transfer.training.classifier import EpochSeededLengthGroupedSampler

    lengths = np.random.default_rng(1).integers(2, 128, size=1000).tolist()
    stock = get_length_grouped_indices(lengths, 16, generator=torch.Generator().manual_seed(42))
    groups = {tuple(sorted(stock[i:i + 16])) for i in range(0, 1000, 16)}
    for epoch in range(3):
        sampler = EpochSeededLengthGroupedSampler(LengthGroupedSampler(16, lengths=lengths), seed=42)
        sampler.set_epoch(epoch)
        order = list(sampler)
        loaded = [order[i:i + 16] for i in range(0, 1000, 16)]  # what the Trainer's DataLoader makes of it
        assert sorted(order) == list(range(1000)) and len(loaded[-1]) == 8
        if epoch == 0:
            assert {tuple(sorted(batch)) for batch in loaded} == groups
        padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in loaded)
        assert sum(lengths) / padded > 0.85  # every batch one group (0.6 when they straddled two)


def test_evaluation_runs_longest_rows_first_and_pads_little(tiny_bert, tmp_path):
    """With group_by_length the stock Trainer evaluates in megabatches of random rows; the pipeline's Trainer sorts
    the validation rows by length, longest first, so each batch pads to rows of about its own length."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from transfer.data.dataset import to_dataset
    from transfer.training.classifier import training_arguments

    params = toy_params(eval_batch_size=16)
    tokenizer = load_tokenizer(str(tiny_bert))
    words = np.random.default_rng(0).integers(1, 30, size=100)
    frame = pd.DataFrame({"text": [" ".join(["good film"] * k) for k in words], "label": words % 2})
    validation = to_dataset(frame, tokenizer, 32)
    trainer = ResumableTrainer(model=classifier(tiny_bert), processing_class=tokenizer, eval_dataset=validation,
                               data_collator=DataCollatorWithPadding(tokenizer), args=training_arguments(
                                   tmp_path, params["train"], params["compute"], 1, 1e-3, 0))
    batches = list(trainer.get_eval_dataloader())
    widths = [batch["input_ids"].shape[1] for batch in batches]
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    assert widths == sorted(widths, reverse=True) and sum(len(b["input_ids"]) for b in batches) == 100
    lengths = [len(ids) for ids in validation["input_ids"]]
    stock = list(LengthGroupedSampler(16, lengths=lengths))
    stock_padded = sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in
                       (stock[i:i + 16] for i in range(0, 100, 16)))
    assert real == sum(lengths) and sum(len(b["input_ids"]) * w for b, w in zip(batches, widths)) < stock_padded


def test_attention_dropout_reaches_the_attention_of_a_training_forward(tiny_bert, capsys, monkeypatch):
    """train.attention_dropout replaces the model's own rate: with the other dropouts off, a training-mode forward
    is random only where the attention weights are dropped. null keeps the saved config's rate."""
    from transfer import modeling

    batch = load_tokenizer(str(tiny_bert))(toy_texts(8, seed=1)["review"].tolist(), padding=True, return_tensors="pt")

    def two_training_forwards(attention_dropout):
        torch.manual_seed(0)
        model = load_classifier(str(tiny_bert), NAMES, attention_dropout=attention_dropout).train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):  # the hidden-state dropouts: not the attention weights'
                module.p = 0.0
        return model, model(**batch).logits, model(**batch).logits

    model, first, second = two_training_forwards(0.0)
    assert model.config.attention_probs_dropout_prob == 0.0
    assert torch.equal(first, second)
    model, first, second = two_training_forwards(0.5)
    assert model.config.attention_probs_dropout_prob == 0.5
    assert not torch.allclose(first, second)
    model, _, _ = two_training_forwards(None)
    assert model.config.attention_probs_dropout_prob == 0.1  # the saved BertConfig's own
    assert not list(filter(lambda line: "attention dropout" in line, capsys.readouterr().out.splitlines()))

    monkeypatch.setattr(modeling, "ATTENTION_DROPOUT_KEYS", ("no_such_dropout",))  # a model naming no such key
    model, _, _ = two_training_forwards(0.0)  # trains as it is, and says so
    assert model.config.attention_probs_dropout_prob == 0.1
    assert "names no attention dropout (no_such_dropout); it trains with its own" in capsys.readouterr().out
