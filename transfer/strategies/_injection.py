"""What the strategies that inject a few new trainable weights into a frozen model share: resolving and checking
target modules (LoRA, IA3), whether peft can size prompt learning (prefix, prompt), and the adapters library's
support check, config, saving and loading (adapter, adapter_stack)."""
from pathlib import Path

import torch

from transfer.schema import UserError
from transfer.strategies._layerwise import head_parameters

# architectures peft's own tables leave out
EXTRA_LORA_TARGETS = {"distilbert": ["q_lin", "v_lin"]}
DOMAIN, TASK = "domain", "task"


def _linear_names(model):
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.base_model.named_modules()
                   if isinstance(m, torch.nn.Linear)})


def target_modules(model, wanted, mapping, section):
    """Resolve `section.target_modules`: 'auto' looks the architecture up in peft's table; a list is checked."""
    available = _linear_names(model)
    if wanted == "auto":
        wanted = mapping.get(model.config.model_type)
        if not wanted:
            raise UserError(f"no default {section} target modules for model type {model.config.model_type!r}; "
                            f"set {section}.target_modules to some of its linear layers: {', '.join(available)}.")
        return list(wanted)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise UserError(f"{section}.target_modules names {missing}, which this model does not have; "
                        f"its linear layers are: {', '.join(available)}.")
    return list(wanted)


def skeleton(config, params):
    """The classifier built from the config on the meta device: its module names, without memory or weights."""
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # no memory, weights or random draws
        return AutoModelForSequenceClassification.from_config(
            config, trust_remote_code=params["model"]["trust_remote_code"])


def check_targets(section, params, config):
    """Refuse `section.target_modules` (lora, ia3) that this model config lacks, or 'auto' where peft has no table."""
    target_modules(skeleton(config, params), params[section]["target_modules"], auto_targets(section), section)


def added_token_ids(tokenizer):
    """The ids of the tokens added to the tokenizer's vocabulary (pretrain.extend_vocab), special tokens left out."""
    special = set(tokenizer.all_special_tokens)
    return sorted(i for token, i in tokenizer.get_added_vocab().items() if token not in special)


def auto_targets(section):
    """{model type: target module names} that `section.target_modules: auto` looks the model up in."""
    if section == "lora":
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

        return {**EXTRA_LORA_TARGETS, **mapping}
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as mapping

    return dict(mapping)


def check_prompt_learning(strategy, params, config):
    """Whether peft can size `strategy` (prefix or prompt) from this model config: it needs the layer count,
    hidden size and head count under names it knows. Checks the config only, no model needed."""
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType

    try:
        from peft.utils.other import _prepare_prompt_learning_config
    except ImportError:  # peft moved it: the strategy itself will tell
        return
    kind = PrefixTuningConfig if strategy == "prefix" else PromptTuningConfig
    try:
        _prepare_prompt_learning_config(kind(task_type=TaskType.SEQ_CLS,
                                             num_virtual_tokens=params[strategy]["num_virtual_tokens"]), config)
    except ValueError as error:
        raise UserError(f"strategy {strategy!r} does not fit model type {config.model_type!r}: peft cannot size it "
                        f"from the model's config ({error}). Choose another strategy (lora, ia3, adapter, partial, "
                        "llrd, ...) or another model.name.") from None


def adapters_support(model_type):
    """Whether the adapters library can add bottleneck adapters to this model type without a custom interface."""
    import importlib

    from adapters.wrappers.model import get_adapter_interface, get_module_name

    if get_adapter_interface(model_type) is not None:
        return True
    name = get_module_name(model_type)
    try:
        importlib.import_module(f".{name}.modeling_{name}", "adapters.models")
    except ImportError:
        return False
    return True


def check_adapters_support(strategy, model_type):
    if not adapters_support(model_type):
        raise UserError(f"strategy {strategy!r} needs the adapters library, which does not support model type "
                        f"{model_type!r} (it supports BERT, RoBERTa, XLM-R, DeBERTa, DistilBERT, ELECTRA, ALBERT, "
                        "GPT-2, Llama, T5 and a few more). Use another strategy for this model (lora with "
                        "lora.target_modules, partial, llrd, ...), or another model.name.")


def bottleneck_config(cfg):
    from adapters import DoubleSeqBnConfig, SeqBnConfig

    kind = DoubleSeqBnConfig if cfg["kind"] == "houlsby" else SeqBnConfig
    return kind(reduction_factor=cfg["reduction_factor"])


def uses_adapters_library(model):
    return hasattr(model, "adapters_config")


def save_adapters(model, out_dir):
    """Each adapter in its own folder, and the classifier beside them (the adapters library leaves it out)."""
    from safetensors.torch import save_file

    names = list(model.adapters_config.adapters)
    for name in names:
        model.save_adapter(str(Path(out_dir) / name), name, with_head=False, use_safetensors=True)
    head_ids = {id(p) for p in head_parameters(model)}
    head = {name: p.detach().contiguous() for name, p in model.named_parameters() if id(p) in head_ids}
    save_file(head, Path(out_dir) / "head.safetensors")
    return names


def load_adapters(model, trained_dir, names):
    import adapters
    from adapters.composition import Stack
    from adapters.utils import SAFE_WEIGHTS_NAME
    from safetensors.torch import load_file

    for name in names:  # the adapters library falls back to a torch pickle when the safetensors file is missing
        if not (Path(trained_dir) / name / SAFE_WEIGHTS_NAME).is_file():
            raise UserError(f"{trained_dir}/{name} holds no {SAFE_WEIGHTS_NAME} (this pipeline loads safetensors "
                            "only, never a pickle); re-run the peft stage (`dvc repro peft`).")
    adapters.init(model)
    for name in names:
        model.load_adapter(str(Path(trained_dir) / name), load_as=name, with_head=False, use_safetensors=True)
    unexpected = model.load_state_dict(load_file(Path(trained_dir) / "head.safetensors"), strict=False).unexpected_keys
    if unexpected:
        raise UserError(f"{trained_dir}/head.safetensors holds weights this model lacks: {unexpected}; re-run peft.")
    model.active_adapters = Stack(*names) if len(names) > 1 else names[0]
    return model
