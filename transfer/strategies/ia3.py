"""IA3 (peft): learned vectors that rescale the target layers' activations; they fold into the weights."""
from transfer.schema import LEARNING_RATE, MODULE_NAMES
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "target_modules": MODULE_NAMES}


def check(params, config):
    from transfer.strategies import _injection

    _injection.check_targets("ia3", params, config)


def build(model, params, **_):
    from peft import IA3Config, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as feedforward

    from transfer.strategies import _injection

    targets = _injection.target_modules(model, params["ia3"]["target_modules"], _injection.auto_targets("ia3"), "ia3")
    ff = [name for name in feedforward.get(model.config.model_type, []) if name in targets]
    config = IA3Config(task_type=TaskType.SEQ_CLS, target_modules=targets, feedforward_modules=ff)
    return Plan(get_peft_model(model, config))
