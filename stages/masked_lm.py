"""Masked-LM training pieces shared by the pretrain stage (the whole encoder) and adapter_stack (a domain adapter)."""
import time

import torch

from stages.tracking import LiveCurves, show_progress


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


def train_masked_lm(model, tokenizer, texts, cfg, seed, output_dir, max_steps, learning_rate, curves_dir=None):
    """Train `model` (a masked-LM model, whatever of it requires grad) on `texts`; return the seconds it took.

    With `curves_dir`, the loss and learning-rate curves go there through DVCLive."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    train_set = Dataset.from_dict(dict(tokenizer(list(texts), truncation=True, max_length=cfg["max_length"])))
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, learning_rate=learning_rate,
        per_device_train_batch_size=cfg["batch_size"], warmup_ratio=cfg["warmup_ratio"], seed=seed, data_seed=seed,
        save_strategy="no", report_to=[], logging_steps=max(1, max_steps // 20), remove_unused_columns=False,
        disable_tqdm=not show_progress(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg["mlm_probability"], seed=seed)
    started = time.perf_counter()
    callbacks = [LiveCurves(curves_dir)] if curves_dir else []
    Trainer(model=sparse_head_model(model), args=args, train_dataset=train_set, data_collator=collator,
            callbacks=callbacks).train()
    return time.perf_counter() - started
