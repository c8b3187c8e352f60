"""Adaptation strategies: each turns a pretrained classifier into what the peft stage trains.

`prepare(strategy, model, params)` returns the model to train and, where the strategy needs its own
learning rates, the optimizer's parameter groups. `merged(model)` gives back a plain transformers model
for evaluation and export.
"""
import torch

from stages.config import UserError

# architectures peft's own tables leave out
EXTRA_LORA_TARGETS = {"distilbert": ["q_lin", "v_lin"]}


def encoder_layers(model):
    """The transformer blocks of the backbone, bottom first: the longest ModuleList inside base_model."""
    lists = [m for m in model.base_model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise UserError(f"{type(model).__name__} has no list of transformer layers; use strategy lora or frozen.")
    return max(lists, key=len)


def _head_parameters(model):
    base = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in base]


def freeze_all_but(model, trainable):
    keep = {id(p) for p in trainable}
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) in keep


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


def _lora(model, params):
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    cfg = params["lora"]
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                        target_modules=target_modules(model, cfg["target_modules"],
                                                      {**EXTRA_LORA_TARGETS, **mapping}, "lora"))
    return get_peft_model(model, config), None


def _ia3(model, params):
    from peft import IA3Config, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as feedforward
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as mapping

    targets = target_modules(model, params["ia3"]["target_modules"], mapping, "ia3")
    ff = [name for name in feedforward.get(model.config.model_type, []) if name in targets]
    config = IA3Config(task_type=TaskType.SEQ_CLS, target_modules=targets, feedforward_modules=ff)
    return get_peft_model(model, config), None


def _frozen(model, params):
    freeze_all_but(model, _head_parameters(model))
    return model, None


def _partial(model, params):
    layers = encoder_layers(model)
    top = params["partial"]["top_layers"]
    if top > len(layers):
        raise UserError(f"partial.top_layers is {top} but the model has only {len(layers)} encoder layers; "
                        f"choose 1 to {len(layers)}.")
    trainable = _head_parameters(model) + [p for layer in layers[len(layers) - top:] for p in layer.parameters()]
    freeze_all_but(model, trainable)
    return model, None


def layerwise_groups(model, learning_rate, decay, head_learning_rate, weight_decay):
    """Optimizer groups with lr x decay^depth, depth counted from the top layer (0) down to the embeddings.

    Parameters of the backbone outside the layers (embeddings, pooler) take the depth of the nearest end:
    whatever comes before the first layer in the module order is embeddings, the rest sits on top."""
    layers = encoder_layers(model)
    depth_of = {}
    for index, layer in enumerate(layers):
        for parameter in layer.parameters():
            depth_of[id(parameter)] = len(layers) - 1 - index
    first_layer = id(next(layers[0].parameters()))
    below = True
    head = {id(p) for p in _head_parameters(model)}
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) == first_layer:
            below = False
        if id(parameter) in head:
            key, lr = "head", head_learning_rate
        else:
            depth = depth_of.get(id(parameter), len(layers) if below else 0)
            key, lr = f"depth{depth}", learning_rate * decay ** depth
        no_decay = parameter.ndim < 2  # biases and LayerNorm weights
        group = groups.setdefault((key, no_decay), {"params": [], "lr": lr, "name": key,
                                                   "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(parameter)
    return list(groups.values())


def _llrd(model, params):
    cfg = params["llrd"]
    groups = layerwise_groups(model, cfg["learning_rate"], cfg["decay"], cfg["head_learning_rate"],
                              params["train"]["weight_decay"])
    return model, groups


STRATEGIES = {"lora": _lora, "ia3": _ia3, "frozen": _frozen, "partial": _partial, "llrd": _llrd}


def prepare(strategy, model, params):
    """Apply `strategy` to `model`; returns (model to train, optimizer parameter groups or None)."""
    return STRATEGIES[strategy](model, params)


def merged(model):
    """A plain transformers model with the strategy's weights folded in, ready to save and export."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
