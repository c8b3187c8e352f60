"""LoRA (peft): trainable low-rank updates beside the frozen target linear layers; they fold into the weights."""
from transfer.schema import LEARNING_RATE, MODULE_NAMES, POSITIVE_INT, number
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "r": POSITIVE_INT, "alpha": number(float, 0.0, low_open=True),
          "dropout": number(float, 0.0, 1.0), "target_modules": MODULE_NAMES}


def check(params, config):
    from transfer.strategies import _injection

    _injection.check_targets("lora", params, config)


def build(model, params, **_):
    from peft import LoraConfig, TaskType, get_peft_model

    from transfer.strategies import _injection

    cfg = params["lora"]
    targets = _injection.target_modules(model, cfg["target_modules"], _injection.auto_targets("lora"), "lora")
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                        target_modules=targets)
    return Plan(get_peft_model(model, config))
