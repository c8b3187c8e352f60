"""Prefix tuning (peft): trainable key/value vectors prepended in every attention layer."""
from transfer.schema import LEARNING_RATE, POSITIVE_INT
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "num_virtual_tokens": POSITIVE_INT}
MERGEABLE = False


def check(params, config):
    from transfer.schema import UserError
    from transfer.strategies import _injection

    _injection.check_prompt_learning("prefix", params, config)
    if params["compute"]["gradient_checkpointing"]:  # tests/test_compute.py: the attention's shapes no longer match
        raise UserError("params.yaml: strategy prefix cannot train with compute.gradient_checkpointing: true (peft's "
                        "prefix keys and values break the recomputed attention layers). Set it to false, or choose "
                        "another strategy (lora and prompt train with it).")


def build(model, params, **_):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=params["prefix"]["num_virtual_tokens"])
    return Plan(get_peft_model(model, config))
