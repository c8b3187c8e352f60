"""Adaptation strategies: each turns a pretrained classifier into what the peft stage trains.

`prepare(strategy, model, params, ...)` returns a Plan: the model to train, the optimizer's parameter groups
where the strategy sets its own learning rates, and Trainer callbacks. `save_adapted` writes what trained
(and a plain merged model where the strategy folds in); `load_adapted` rebuilds the model for evaluation.
"""
from dataclasses import dataclass, field
from pathlib import Path

from stages import injected
from stages.config import UserError
from stages.modeling import load_saved_classifier, save
from stages.layerwise import (GradualUnfreezing, encoder_layers, freeze_all_but, head_parameters,
                              layerwise_groups)
from stages.outputs import read_json, write_json

# the ones whose trained weights cannot fold into the plain architecture: evaluation and export rebuild them
NOT_MERGEABLE = ("prefix", "prompt", "adapter", "adapter_stack")
STRATEGY_FILE = "strategy.json"


@dataclass
class Plan:
    model: object
    param_groups: list = None
    callbacks: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # what the strategy measured before the task training


def _frozen(model, params, **_):
    freeze_all_but(model, head_parameters(model))
    return Plan(model)


def _partial(model, params, **_):
    layers = encoder_layers(model)
    top = params["partial"]["top_layers"]
    if top > len(layers):
        raise UserError(f"partial.top_layers is {top} but the model has only {len(layers)} encoder layers; "
                        f"choose 1 to {len(layers)}.")
    trainable = head_parameters(model) + [p for layer in layers[len(layers) - top:] for p in layer.parameters()]
    freeze_all_but(model, trainable)
    return Plan(model)


def _llrd(model, params, **_):
    cfg = params["llrd"]
    return Plan(model, layerwise_groups(model, cfg["learning_rate"], cfg["decay"], cfg["head_learning_rate"],
                                        params["train"]["weight_decay"]))


def _gradual(model, params, **_):
    cfg = params["gradual"]
    groups = layerwise_groups(model, cfg["learning_rate"], cfg["decay"], cfg["head_learning_rate"],
                              params["train"]["weight_decay"], only_trainable=False)
    return Plan(model, groups, [GradualUnfreezing(model, cfg["unfreeze_every"], cfg["unfreeze_unit"])])


def _scratch(model, params, **_):
    """The same architecture and tokenizer with random weights: what the model would be without pretraining."""
    return Plan(type(model)(model.config))


def _adapter_stack(model, params, work_dir=None, tokenizer=None, domain_texts=None, **_):
    if not domain_texts:
        raise UserError("adapter_stack trains its domain adapter on the unlabeled pool, which is empty: "
                        "raise data.pool_fraction, or use strategy adapter.")
    seconds = injected.train_domain_adapter(model.config._name_or_path, tokenizer, domain_texts, params, work_dir)
    return Plan(injected.adapter_stack(model, params, Path(work_dir) / injected.DOMAIN),
                metrics={"domain_adapter_seconds": round(seconds, 1)})


def _injected(build):
    return lambda model, params, **_: Plan(build(model, params))


STRATEGIES = {
    "lora": _injected(injected.lora), "ia3": _injected(injected.ia3), "prefix": _injected(injected.prefix),
    "prompt": _injected(injected.prompt), "adapter": _injected(injected.adapter), "adapter_stack": _adapter_stack,
    "frozen": _frozen, "partial": _partial, "gradual": _gradual, "llrd": _llrd, "scratch": _scratch,
}


def prepare(strategy, model, params, **context):
    """Apply `strategy` to `model`. context: work_dir, tokenizer and domain_texts, for adapter_stack."""
    return STRATEGIES[strategy](model, params, **context)


def merged(model):
    """A plain transformers model with the strategy's weights folded in, ready to save and export."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def save_adapted(model, strategy, tokenizer, out_dir):
    """out_dir/trained: only what the strategy trained; out_dir/merged: the plain model, where one exists."""
    from peft import PeftModel
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    trained, adapters = out_dir / "trained", None
    if isinstance(model, PeftModel):
        model.save_pretrained(trained, safe_serialization=True)
    elif injected.uses_adapters_library(model):
        trained.mkdir(parents=True)
        adapters = injected.save_adapters(model, trained)
    else:
        trained.mkdir(parents=True)
        save_file({name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad},
                  trained / "trainable.safetensors")
    tokenizer.save_pretrained(trained)
    model.config.save_pretrained(trained)  # labels and architecture, to rebuild the model around the weights
    if strategy not in NOT_MERGEABLE:
        save(merged(model), tokenizer, out_dir / "merged")
    write_json(out_dir / STRATEGY_FILE, {"strategy": strategy, "mergeable": strategy not in NOT_MERGEABLE,
                                         "adapters": adapters})


def load_adapted(peft_dir, base_dir):
    """The strategy's model for inference: the merged plain model, or the base with the trained weights put back."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    peft_dir = Path(peft_dir)
    if not (peft_dir / STRATEGY_FILE).is_file():
        raise UserError(f"{peft_dir} holds no trained strategy; run the peft stage (`dvc repro peft`).")
    saved = read_json(peft_dir / STRATEGY_FILE)
    if saved["mergeable"]:
        return load_saved_classifier(peft_dir / "merged")
    trained = peft_dir / "trained"
    config = AutoConfig.from_pretrained(trained)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, config=config, use_safetensors=True)
    if saved["adapters"]:
        return injected.load_adapters(base, trained, saved["adapters"]).eval()
    return PeftModel.from_pretrained(base, trained).eval()
