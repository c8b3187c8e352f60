"""Prompt tuning (peft): trainable virtual tokens before the input embeddings, from random or from init_text."""
from transfer.schema import ANY_TEXT, LEARNING_RATE, POSITIVE_INT
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "num_virtual_tokens": POSITIVE_INT, "init_text": ANY_TEXT}
MERGEABLE = False


def check(params, config):
    from transfer.strategies import _injection

    _injection.check_prompt_learning("prompt", params, config)


def build(model, params, **_):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    cfg = params["prompt"]
    from_text = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg["init_text"],
                     tokenizer_name_or_path=model.config._name_or_path) if cfg["init_text"].strip() else {}
    config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=cfg["num_virtual_tokens"], **from_text)
    return Plan(get_peft_model(model, config))
