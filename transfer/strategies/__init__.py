"""Adaptation strategies: each turns a pretrained classifier into what the peft stage trains.

`prepare(strategy, model, params, ...)` returns a Plan: the model to train, the optimizer's parameter groups
where the strategy sets its own learning rates, and Trainer callbacks. `save_adapted` writes what trained
(and a plain merged model where the strategy folds in); `load_adapted` rebuilds the model for evaluation.
"""
from dataclasses import dataclass, field
from pathlib import Path

from transfer import modeling
from transfer.config import UserError
from transfer.modeling import load_saved_classifier, save
from transfer.strategies import _injection
from transfer.strategies._layerwise import (GradualUnfreezing, encoder_layers, freeze_all_but, head_parameters,
                              layerwise_groups)
from transfer.outputs import read_json, write_json

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
    seconds = _injection.train_domain_adapter(model.config._name_or_path, tokenizer, domain_texts, params, work_dir)
    return Plan(_injection.adapter_stack(model, params, Path(work_dir) / _injection.DOMAIN),
                metrics={"domain_adapter_seconds": round(seconds, 1)})


def _injected(build):
    return lambda model, params, **_: Plan(build(model, params))


STRATEGIES = {
    "lora": _injected(_injection.lora), "ia3": _injected(_injection.ia3), "prefix": _injected(_injection.prefix),
    "prompt": _injected(_injection.prompt), "adapter": _injected(_injection.adapter), "adapter_stack": _adapter_stack,
    "frozen": _frozen, "partial": _partial, "gradual": _gradual, "llrd": _llrd, "scratch": _scratch,
}


def _layer_count(config):
    for key in ("num_hidden_layers", "n_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def _skeleton(config, params):
    """The classifier built from the config on the meta device: its module names, without memory or weights."""
    import torch
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # no memory, weights or random draws
        return AutoModelForSequenceClassification.from_config(
            config, trust_remote_code=params["model"]["trust_remote_code"])


def check_fits(strategy, params, config):
    """Refuse a strategy that cannot work on this model, from the model's config alone (cheap: no weights):
    partial.top_layers above the layer count, target_modules the model lacks (or 'auto' for a model type peft has no
    table for), the
    adapters library on an architecture it does not support, prefix / prompt on a config peft cannot size."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

    layers = _layer_count(config)
    if strategy == "partial" and layers and params["partial"]["top_layers"] > layers:
        raise UserError(f"partial.top_layers is {params['partial']['top_layers']} but the model has only {layers} "
                        f"encoder layers; choose 1 to {layers}.")
    if strategy in ("lora", "ia3"):
        _injection.target_modules(_skeleton(config, params), params[strategy]["target_modules"],
                                _injection.auto_targets(strategy), strategy)
    if strategy in ("adapter", "adapter_stack"):
        _injection.check_adapters_support(strategy, config.model_type)
    if strategy == "adapter_stack" and type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise UserError(f"adapter_stack trains its domain adapter with masked-LM, which model type "
                        f"{config.model_type!r} has no head for; use strategy adapter.")
    if strategy in ("prefix", "prompt"):
        _injection.check_prompt_learning(strategy, params, config)


def preflight(params):
    """The early check of params against the model, before any data or training work (call it first in a stage):
    model.name must be a model (modeling.check_model: config and tokenizer only, no weights) that the chosen
    strategy fits (check_fits). Returns the model's config."""
    strategy, model = params["strategy"], params["model"]
    config = modeling.check_model(model["name"], model["trust_remote_code"],
                                  masked_lm=params["pretrain"]["enabled"] or strategy == "adapter_stack")
    check_fits(strategy, params, config)
    return config


def _misfit(strategy, config, error):
    return UserError(f"strategy {strategy!r} does not fit model type {config.model_type!r}: "
                     f"{modeling._short(error)}. Choose another strategy (lora, frozen, partial and llrd fit most "
                     "encoders) or another model.name.")


def probe(model, strategy, tokenizer=None):
    """One forward pass of two short texts through the adapted model, so that a strategy that does not fit fails
    here, before training, with a UserError. Eval mode, no gradients, RNG state forked: weights, random state
    and each module's train/eval mode are as before."""
    import torch

    if tokenizer is not None and tokenizer.pad_token is not None:
        inputs = dict(tokenizer(["a short probe text", "probe"], padding=True, return_tensors="pt"))
    else:
        try:
            vocab = model.get_input_embeddings().num_embeddings
        except (AttributeError, NotImplementedError):
            vocab = getattr(model.config, "vocab_size", 5)
        inputs = {"input_ids": torch.tensor([[1, 2, 3, 4], [1, 2, 3, 3]]) % vocab,
                  "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    device = next(model.parameters()).device
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits = model(**{key: value.to(device) for key, value in inputs.items()}).logits
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError, IndexError, KeyError) as error:
        raise _misfit(strategy, model.config, error) from None
    finally:
        for module, training in modes.items():
            module.training = training
    if logits.shape[0] != 2:
        raise _misfit(strategy, model.config, f"a batch of 2 texts gave {logits.shape[0]} rows of logits")


def prepare(strategy, model, params, **context):
    """Apply `strategy` to `model`. context: work_dir, tokenizer and domain_texts, for adapter_stack.

    A strategy that does not fit the model is a UserError before training: from its config (check_fits), while
    building it, or in one probe forward pass."""
    check_fits(strategy, params, model.config)
    if strategy == "adapter_stack":  # it trains its domain adapter here: a failure in training is no misfit
        plan = STRATEGIES[strategy](model, params, **context)
    else:
        try:
            plan = STRATEGIES[strategy](model, params, **context)
        except UserError:
            raise
        except (ValueError, TypeError, NotImplementedError, AttributeError, KeyError) as error:
            raise _misfit(strategy, model.config, error) from None
    probe(plan.model, strategy, context.get("tokenizer"))
    return plan


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
    elif _injection.uses_adapters_library(model):
        trained.mkdir(parents=True)
        adapters = _injection.save_adapters(model, trained)
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
    # peft falls back to a torch pickle (adapter_model.bin) when the safetensors file is missing: refuse instead
    if not saved["adapters"] and not (trained / "adapter_model.safetensors").is_file():
        raise UserError(f"{trained} holds no adapter_model.safetensors (this pipeline loads safetensors only, never "
                        "a pickle); re-run the peft stage (`dvc repro peft`).")
    modeling.require_safetensors(base_dir, key="the base model folder")
    config = AutoConfig.from_pretrained(trained, trust_remote_code=False)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, config=config, use_safetensors=True,
                                                              trust_remote_code=False)
    if saved["adapters"]:
        return _injection.load_adapters(base, trained, saved["adapters"]).eval()
    return PeftModel.from_pretrained(base, trained).eval()
