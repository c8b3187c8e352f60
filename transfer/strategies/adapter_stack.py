"""A task adapter stacked on a domain adapter (the adapters library's Stack): the domain adapter trains first, with
masked-LM on the unlabeled pool; then only the task adapter and the classifier train."""
from pathlib import Path

from transfer.schema import LEARNING_RATE, POSITIVE_INT, UserError, choice
from transfer.strategies import Plan
from transfer.strategies.adapter import KINDS

PARAMS = {"learning_rate": LEARNING_RATE, "kind": choice(*KINDS), "reduction_factor": POSITIVE_INT,
          "domain_steps": POSITIVE_INT, "domain_learning_rate": LEARNING_RATE}
MERGEABLE = False
BUILD_TRAINS = True


def check(params, config):
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

    from transfer.strategies import _injection

    _injection.check_adapters_support("adapter_stack", config.model_type)
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise UserError(f"adapter_stack trains its domain adapter with masked-LM, which model type "
                        f"{config.model_type!r} has no head for; use strategy adapter.")


def train_domain_adapter(base_dir, tokenizer, texts, params, out_dir):
    """Train a bottleneck adapter with masked-LM on the domain texts; save it to out_dir for the task model."""
    import adapters
    from transformers import AutoModelForMaskedLM

    from transfer.strategies import _injection
    from transfer.strategies._layerwise import head_parameters
    from transfer.training import launcher
    from transfer.training.classifier import training_seed
    from transfer.training.masked_lm import train_masked_lm

    cfg = params["adapter_stack"]
    model = AutoModelForMaskedLM.from_pretrained(base_dir, use_safetensors=True)
    adapters.init(model)
    model.add_adapter(_injection.DOMAIN, config=_injection.bottleneck_config(cfg))
    model.train_adapter(_injection.DOMAIN)
    # the MLM head's transform starts fresh when the encoder ships without one: it must learn beside the adapter
    for parameter in head_parameters(model):
        parameter.requires_grad = True
    seconds = train_masked_lm(model, tokenizer, texts, params["pretrain"], params["compute"], training_seed(params),
                              Path(out_dir) / "mlm", cfg["domain_steps"], cfg["domain_learning_rate"],
                              params["checkpoints"]["every_steps"])
    if launcher.is_main():  # the task model of every process loads it from there
        model.save_adapter(str(Path(out_dir) / _injection.DOMAIN), _injection.DOMAIN, with_head=False,
                           use_safetensors=True)
    launcher.barrier()
    return seconds


def build(model, params, work_dir=None, tokenizer=None, domain_texts=None, **_):
    import adapters
    from adapters.composition import Stack

    from transfer.strategies import _injection

    if not domain_texts:
        raise UserError("adapter_stack trains its domain adapter on the unlabeled pool, which is empty: "
                        "raise data.pool_fraction, or use strategy adapter.")
    seconds = train_domain_adapter(model.config._name_or_path, tokenizer, domain_texts, params, work_dir)
    adapters.init(model)
    model.load_adapter(str(Path(work_dir) / _injection.DOMAIN), load_as=_injection.DOMAIN, with_head=False,
                       use_safetensors=True)
    model.add_adapter(_injection.TASK, config=_injection.bottleneck_config(params["adapter_stack"]))
    model.train_adapter(_injection.TASK)
    model.active_adapters = Stack(_injection.DOMAIN, _injection.TASK)
    return Plan(model, metrics={"domain_adapter_seconds": round(seconds, 1)})
