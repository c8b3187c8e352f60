"""Adaptation strategies: each turns a pretrained classifier into what the peft stage trains.

A strategy is a module in this folder; its file name is its `strategy` param (modules whose name starts with `_`
are shared helpers). It defines
  PARAMS                      the schema of its params.yaml section (transfer/schema.py's specs);
  build(model, params, **context) -> Plan   the model to train, optimizer groups where it sets its own learning
                              rates, Trainer callbacks;
  check(params, config)       optional: refuse a model it cannot fit, from the model's config alone (no weights);
  MERGEABLE = False           where its trained weights cannot fold into the plain architecture (evaluation and
                              export rebuild the model around them);
  BUILD_TRAINS = True         where build itself trains (adapter_stack's domain adapter): its errors are no misfit.
A new strategy is such a file plus its section in params.yaml. Its module imports only light things at the top:
params validation reads every PARAMS.

`prepare` applies a strategy, `save_adapted` writes what trained (and a plain merged model where the strategy folds
in), `load_adapted` rebuilds the model for evaluation and export.
"""
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from transfer.schema import UserError

NAMES = tuple(sorted(found.name for found in pkgutil.iter_modules(__path__) if not found.name.startswith("_")))
STRATEGY_FILE = "strategy.json"


@dataclass
class Plan:
    model: object
    param_groups: list = None
    callbacks: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # what the strategy measured before the task training


def module(name):
    return importlib.import_module(f"{__name__}.{name}")


def sections():
    """{strategy: the schema of its params section}, for params validation."""
    return {name: module(name).PARAMS for name in NAMES}


def mergeable(name):
    return getattr(module(name), "MERGEABLE", True)


def check_fits(strategy, params, config):
    """Refuse a strategy that cannot work on this model, from the model's config alone (cheap: no weights):
    the strategy module's own check (partial.top_layers above the layer count, target_modules the model lacks,
    the adapters library on an architecture it does not support, prefix / prompt on a config peft cannot size)."""
    check = getattr(module(strategy), "check", None)
    if check is not None:
        check(params, config)


def preflight(params):
    """The early check of params against the model, before any data or training work (call it first in a stage):
    model.name must be a model (modeling.check_model: config and tokenizer only, no weights) that the chosen
    strategy and train.pooling fit (check_fits, pooling.check), on a machine that can train as params compute asks.
    Returns the model's config."""
    from transfer import modeling, pooling
    from transfer.training import compute

    strategy, model = params["strategy"], params["model"]
    config = modeling.check_model(model["name"], model["trust_remote_code"],
                                  masked_lm=params["pretrain"]["enabled"] or strategy == "adapter_stack")
    check_fits(strategy, params, config)
    pooling.check(params["train"]["pooling"], config, params)
    compute.check(params, config)
    return config


def _misfit(strategy, config, error):
    from transfer import modeling

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
    modes = {part: part.training for part in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits = model(**{key: value.to(device) for key, value in inputs.items()}).logits
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError, IndexError, KeyError) as error:
        raise _misfit(strategy, model.config, error) from None
    finally:
        for part, training in modes.items():
            part.training = training
    if logits.shape[0] != 2:
        raise _misfit(strategy, model.config, f"a batch of 2 texts gave {logits.shape[0]} rows of logits")


def prepare(strategy, model, params, **context):
    """Apply `strategy` to `model`. context: work_dir, tokenizer and domain_texts, for adapter_stack.

    A strategy that does not fit the model is a UserError before training: from its config (check_fits), while
    building it, or in one probe forward pass."""
    check_fits(strategy, params, model.config)
    chosen = module(strategy)
    if getattr(chosen, "BUILD_TRAINS", False):  # a failure in training is no misfit
        plan = chosen.build(model, params, **context)
    else:
        try:
            plan = chosen.build(model, params, **context)
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

    from transfer import modeling
    from transfer.outputs import write_json
    from transfer.strategies import _injection

    out_dir = Path(out_dir)
    trained, adapters = out_dir / "trained", None
    if isinstance(model, PeftModel):
        for config in model.peft_config.values():  # peft holds these as sets: saved in hash order, another each run
            for key in ("target_modules", "feedforward_modules"):
                if isinstance(getattr(config, key, None), set):
                    setattr(config, key, sorted(getattr(config, key)))
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
    if mergeable(strategy):
        modeling.save(merged(model), tokenizer, out_dir / "merged")
    write_json(out_dir / STRATEGY_FILE, {"strategy": strategy, "mergeable": mergeable(strategy),
                                         "adapters": adapters})


def load_adapted(peft_dir, base_dir):
    """The strategy's model for inference: the merged plain model, or the base with the trained weights put back."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from transfer import modeling, pooling
    from transfer.outputs import read_json
    from transfer.strategies import _injection

    peft_dir = Path(peft_dir)
    if not (peft_dir / STRATEGY_FILE).is_file():
        raise UserError(f"{peft_dir} holds no trained strategy; run the peft stage (`dvc repro peft`).")
    saved = read_json(peft_dir / STRATEGY_FILE)
    if saved["mergeable"]:
        return modeling.load_saved_classifier(peft_dir / "merged")
    trained = peft_dir / "trained"
    # peft falls back to a torch pickle (adapter_model.bin) when the safetensors file is missing: refuse instead
    if not saved["adapters"] and not (trained / "adapter_model.safetensors").is_file():
        raise UserError(f"{trained} holds no adapter_model.safetensors (this pipeline loads safetensors only, never "
                        "a pickle); re-run the peft stage (`dvc repro peft`).")
    modeling.require_safetensors(base_dir, key="the base model folder")
    config = AutoConfig.from_pretrained(trained, trust_remote_code=False)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, config=config, use_safetensors=True,
                                                              trust_remote_code=False)
    base = pooling.saved(base)  # the pooling it trained with (its config says), before the weights go around it
    if saved["adapters"]:
        return _injection.load_adapters(base, trained, saved["adapters"]).eval()
    return PeftModel.from_pretrained(base, trained).eval()
