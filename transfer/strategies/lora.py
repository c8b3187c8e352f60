"""LoRA (peft): trainable low-rank updates beside the frozen target linear layers; they fold into the weights.
With train_added_tokens, the embedding rows of the tokens pretrain added (pretrain.extend_vocab) train too (peft's
trainable tokens): the rest of the embeddings stays frozen, and the rows fold in like the low-rank updates."""
from transfer.schema import BOOL, LEARNING_RATE, MODULE_NAMES, POSITIVE_INT, number
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE, "r": POSITIVE_INT, "alpha": number(float, 0.0, low_open=True),
          "dropout": number(float, 0.0, 1.0), "target_modules": MODULE_NAMES, "train_added_tokens": BOOL}


def check(params, config):
    from transfer.strategies import _injection

    _injection.check_targets("lora", params, config)


def build(model, params, tokenizer=None, **_):
    from peft import LoraConfig, TaskType, get_peft_model

    from transfer.strategies import _injection

    cfg = params["lora"]
    targets = _injection.target_modules(model, cfg["target_modules"], _injection.auto_targets("lora"), "lora")
    added = _injection.added_token_ids(tokenizer) if cfg["train_added_tokens"] and tokenizer is not None else []
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                        target_modules=targets, trainable_token_indices=added or None)
    return Plan(get_peft_model(model, config))
