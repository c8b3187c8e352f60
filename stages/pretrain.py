"""Stage 2: domain-adaptive masked-LM pretraining (DAPT, optionally TAPT) of the encoder."""
import math
import shutil
import time
from pathlib import Path

import torch

from stages import data, modeling
from stages.config import UserError, run_stage
from stages.outputs import atomic_dir, write_json

OUT_DIR = Path("models/pretrained")
CHECKPOINTS = Path("checkpoints/pretrain")


class MaskedPositionsOnly(torch.nn.Module):
    """A masked-LM model that runs its vocabulary head only on the masked positions.

    The head projects onto the whole vocabulary (30k for BERT); applied to every position it is most of a
    training step on a CPU, though only the ~15% masked positions enter the loss. The loss is the same."""

    def __init__(self, model, head):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, labels, attention_mask=None, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        hidden = self.model.base_model(**{key: value for key, value in inputs.items() if value is not None})[0]
        masked = labels != -100
        logits = self.head(hidden[masked])
        return {"loss": torch.nn.functional.cross_entropy(logits, labels[masked])}


def sparse_head_model(model):
    """Wrap `model` in MaskedPositionsOnly when its head is one module apart from the backbone, else keep it."""
    heads = [module for name, module in model.named_children() if name != model.base_model_prefix]
    return MaskedPositionsOnly(model, heads[0]) if len(heads) == 1 else model


def fixed_masked_batches(texts, tokenizer, cfg, seed):
    """Mask the held-out texts once, with a fixed seed, so 'before' and 'after' see the very same masks."""
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg["mlm_probability"], seed=seed)
    encoded = tokenizer(list(texts), truncation=True, max_length=cfg["max_length"])
    rows = [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]
    return [collator(rows[i:i + cfg["batch_size"]]) for i in range(0, len(rows), cfg["batch_size"])]


@torch.inference_mode()
def masked_lm_loss(model, batches):
    """Mean loss per masked token over the batches."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        masked = int((batch["labels"] != -100).sum())
        total += model(**batch).loss.item() * masked
        count += masked
    return total / max(count, 1)


def main(params):
    cfg, seed = params["pretrain"], params["seed"]
    source = modeling.resolve_model(params["model"]["name"])
    trust = params["model"]["trust_remote_code"]
    tokenizer = modeling.load_tokenizer(source, trust)
    if not cfg["enabled"]:
        from transformers import AutoModel

        with atomic_dir(OUT_DIR) as out:
            modeling.save(AutoModel.from_pretrained(source, trust_remote_code=trust), tokenizer, out)
        write_json("metrics/pretrain.json", {"enabled": False})
        return
    from datasets import Dataset
    from transformers import (AutoModel, AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    parts, _ = data.load_prepared()
    texts = parts[data.POOL]["text"].tolist()
    held_out, texts = texts[:cfg["eval_texts"]], texts[cfg["eval_texts"]:]
    if cfg["include_task_texts"]:
        texts += parts["train"]["text"].tolist()
    if not texts or not held_out:
        raise UserError(f"pretraining needs texts, but the unlabeled pool has {len(parts[data.POOL])} rows "
                        f"(pretrain.eval_texts={cfg['eval_texts']} are held out). Raise data.pool_fraction, "
                        "set pretrain.include_task_texts, or set pretrain.enabled to false.")
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_pretrained(source, trust_remote_code=trust)
    eval_batches = fixed_masked_batches(held_out, tokenizer, cfg, seed)
    loss_before = masked_lm_loss(model, eval_batches)
    train_set = Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=cfg["max_length"])))
    args = TrainingArguments(
        output_dir=str(CHECKPOINTS), max_steps=cfg["max_steps"], learning_rate=cfg["learning_rate"],
        per_device_train_batch_size=cfg["batch_size"], warmup_ratio=cfg["warmup_ratio"], seed=seed, data_seed=seed,
        save_strategy="no", report_to=[], logging_steps=max(1, cfg["max_steps"] // 10), remove_unused_columns=False,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg["mlm_probability"], seed=seed)
    started = time.perf_counter()
    Trainer(model=sparse_head_model(model), args=args, train_dataset=train_set, data_collator=collator).train()
    train_seconds = time.perf_counter() - started
    model.to("cpu")
    loss_after = masked_lm_loss(model, eval_batches)
    # Keep the encoder with its pooler: the masked-LM model has none, the classifier wants the pretrained one.
    encoder = AutoModel.from_pretrained(source, trust_remote_code=trust)
    missing, unexpected = encoder.load_state_dict(model.base_model.state_dict(), strict=False)
    if unexpected or any("pooler" not in key for key in missing):
        raise RuntimeError(f"encoder weights did not line up: missing {missing}, unexpected {unexpected}")
    with atomic_dir(OUT_DIR) as out:
        modeling.save(encoder, tokenizer, out)
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    write_json("metrics/pretrain.json", {
        "enabled": True, "train_texts": len(texts), "eval_texts": len(held_out), "steps": cfg["max_steps"],
        "train_seconds": round(train_seconds, 1),
        "mlm_loss_before": loss_before, "mlm_loss_after": loss_after,
        "perplexity_before": math.exp(loss_before), "perplexity_after": math.exp(loss_after)})
    print(f"pretrain: held-out MLM loss {loss_before:.3f} -> {loss_after:.3f}")


if __name__ == "__main__":
    run_stage(main)
