"""The mechanics of each strategy on a tiny random BERT: what trains, what stays, what takes part."""
import pytest
import torch

from stages import strategies
from stages.config import UserError
from stages.modeling import load_classifier, load_tokenizer
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
    model, groups = strategies.prepare("frozen", tiny_classifier(tiny_bert), default_params())
    before = snapshot(model)
    loss_before, loss_after = train_steps(model, batch(tiny_bert), lr=0.05, steps=30)
    assert groups is None and loss_after < loss_before
    assert changed(before, model) == {"classifier.weight", "classifier.bias"}


def test_partial_trains_the_top_layers_and_head(tiny_bert):
    params = default_params()
    params["partial"]["top_layers"] = 2
    model, _ = strategies.prepare("partial", tiny_classifier(tiny_bert), params)
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
    model, groups = strategies.prepare("llrd", tiny_classifier(tiny_bert), params)
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
    model, _ = strategies.prepare(strategy, tiny_classifier(tiny_bert), default_params())
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
    from stages.modeling import count_parameters

    model, _ = strategies.prepare("lora", tiny_classifier(tiny_bert), default_params())
    counts = count_parameters(model)
    assert 0 < counts["trainable_fraction"] < 0.5
    assert counts["trainable_params"] < counts["total_params"]


def test_unknown_target_modules_name_the_real_ones(tiny_bert):
    params = default_params()
    params["lora"]["target_modules"] = ["q_proj", "query"]
    with pytest.raises(UserError, match=r"names \['q_proj'\], which this model does not have; its linear layers "
                                        r"are: dense, key, query, value"):
        strategies.prepare("lora", tiny_classifier(tiny_bert), params)
