"""Masked-LM training pieces shared by the pretrain stage (the whole encoder) and adapter_stack (a domain adapter)."""
import time

import torch
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback

from transfer.training.checkpointing import resume_point
from transfer.training.compute import across_processes, cpu_kernels, fp32_again, training_arguments
from transfer.training.launcher import one_device_per_process, per_process
from transfer.training.tracking import LiveCurves, show_progress


def _vocabulary_head(model):
    """The masked-LM head, where it is one module beside the backbone; None for a model wrapped by DataParallel or
    DistributedDataParallel, whose own forward must run (it splits the batch, or syncs the gradients)."""
    prefix = getattr(model, "base_model_prefix", None)
    if prefix is None:
        return None
    heads = [module for name, module in model.named_children() if name != prefix]
    return heads[0] if len(heads) == 1 else None


def masked_positions_loss(model, batch, num_items=None):
    """The masked-LM loss, with the vocabulary head run only on the masked positions.

    The head projects onto the whole vocabulary (30k for BERT); applied to every position it is most of a
    training step on a CPU, though only the ~15% masked positions enter the loss. The loss is the same.
    Models whose head is not one module apart from the backbone, and wrapped models, run whole.
    The loss is summed over the masked tokens and divided by `num_items` (the masked tokens of all the batches
    that make up one optimizer step, as the Trainer counts them), else by this batch's."""
    labels = batch["labels"]
    inputs = {key: value for key, value in batch.items() if key != "labels" and value is not None}
    masked = labels != -100
    head = _vocabulary_head(model)
    if head is None:
        scores = model(**inputs).logits[masked]
    else:
        scores = head(model.base_model(**inputs)[0][masked])
    total = torch.nn.functional.cross_entropy(scores.float(), labels[masked], reduction="sum")
    return total / (num_items if num_items is not None else masked.sum().clamp(min=1))


class BatchSeededMasking(DataCollatorForLanguageModeling):
    """Dynamic masking whose masks depend only on the seed and the batch's number in the run.

    A resumed run must mask its batches as the run that never stopped did; the Trainer restores the global RNG
    only after the first resumed batch is drawn, and a collator's own generator would start afresh."""

    def __init__(self, tokenizer, mlm_probability, seed):
        super().__init__(tokenizer, mlm_probability=mlm_probability)
        self.seed, self.batches_drawn = seed, 0

    def torch_call(self, examples):
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches_drawn)
        self.batches_drawn += 1
        return super().torch_call(examples)


class ResumeMasking(TrainerCallback):
    """A resumed run skips the batches before its checkpoint without drawing them: count them as drawn."""

    def __init__(self, collator):
        self.collator = collator

    def on_train_begin(self, args, state, control, **kwargs):
        self.collator.batches_drawn = state.global_step * args.gradient_accumulation_steps


class MaskedLMTrainer(Trainer):
    """Trains and checkpoints the masked-LM model itself (saved as safetensors, tied weights and all).

    The loss runs under the accelerator's autocast: on a GPU that lives only in the wrapper accelerate puts around
    the model's forward, which the backbone-and-head call of masked_positions_loss goes around."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # count the masked tokens over the accumulated batches (num_items)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.accelerator.autocast():
            loss = masked_positions_loss(model, inputs, num_items_in_batch)
        loss = across_processes(loss, self, num_items_in_batch)
        return (loss, None) if return_outputs else loss


def fixed_masked_batches(texts, tokenizer, cfg, seed):
    """Mask the held-out texts once, with a fixed seed, so 'before' and 'after' see the very same masks."""
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


def train_masked_lm(model, tokenizer, texts, cfg, compute, seed, output_dir, max_steps, learning_rate, save_every,
                    curves_dir=None):
    """Train `model` (a masked-LM model, whatever of it requires grad) on `texts`; return the seconds it took.

    `cfg` is params' pretrain section (masking, batches, schedule), `compute` its compute section (precision).

    Checkpoints go to `output_dir` every `save_every` steps; a complete one found there is resumed from.
    With `curves_dir`, the loss and learning-rate curves go there through DVCLive."""
    from datasets import Dataset
    from transformers import TrainingArguments

    train_set = Dataset.from_dict(dict(tokenizer(list(texts), truncation=True, max_length=cfg["max_length"])))
    args = one_device_per_process(TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, learning_rate=learning_rate,
        per_device_train_batch_size=per_process(cfg["batch_size"]), gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        warmup_ratio=cfg["warmup_ratio"], seed=seed, data_seed=seed,
        save_strategy="steps", save_steps=save_every, save_total_limit=1, save_safetensors=True, report_to=[],
        logging_steps=max(1, max_steps // 20), remove_unused_columns=False, disable_tqdm=not show_progress(),
        **training_arguments(compute)))
    collator = BatchSeededMasking(tokenizer, cfg["mlm_probability"], seed)
    started = time.perf_counter()
    callbacks = [ResumeMasking(collator), *([LiveCurves(curves_dir)] if curves_dir else [])]
    resume_from = resume_point(output_dir)
    with cpu_kernels(compute):
        MaskedLMTrainer(model=model, args=args, train_dataset=train_set, data_collator=collator,
                        callbacks=callbacks).train(resume_from_checkpoint=resume_from)
    fp32_again(model)  # the held-out loss after runs in fp32, as the one before did
    return time.perf_counter() - started
