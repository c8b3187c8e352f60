"""Training a classifier with the HF Trainer: the part finetune and peft share."""
import resource
import time

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from stages.checkpointing import SaveEvery, resume_point
from stages.data import to_dataset
from stages.metrics import trainer_metrics
from stages.modeling import count_parameters
from stages.tracking import LiveCurves, show_progress


def peak_memory_mb():
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order set by the seed and the epoch alone.

    The stock sampler draws its order from the global RNG when the epoch starts; a run resumed mid-epoch has
    that RNG in another state there, so it would see other batches than the run that never stopped."""

    def __init__(self, sampler, seed):
        super().__init__(sampler.batch_size, lengths=sampler.lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class ResumableTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return EpochSeededLengthGroupedSampler(sampler, self.args.data_seed)
        return sampler  # a RandomSampler, which accelerate already reseeds per epoch


def training_arguments(output_dir, train_cfg, epochs, learning_rate, seed):
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=learning_rate, seed=seed, data_seed=seed,
        per_device_train_batch_size=train_cfg["batch_size"], per_device_eval_batch_size=train_cfg["eval_batch_size"],
        weight_decay=train_cfg["weight_decay"], warmup_ratio=train_cfg["warmup_ratio"],
        max_grad_norm=train_cfg["max_grad_norm"], group_by_length=train_cfg["group_by_length"],
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="macro_f1", greater_is_better=True, save_safetensors=True,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience count survives a resume
        logging_steps=train_cfg["logging_steps"], logging_first_step=True, report_to=[], disable_tqdm=not show_progress(),
        bf16=cuda and torch.cuda.is_bf16_supported(), use_cpu=not cuda)


def train_classifier(model, tokenizer, parts, params, epochs, learning_rate, output_dir, param_groups=None,
                     callbacks=(), curves_dir=None):
    """Train on parts['train'], pick the best epoch by validation macro-F1, stop early; return (results, timing).

    Checkpoints go to `output_dir`, every params checkpoints.every_steps steps and at each epoch's end; a complete
    one found there is resumed from. With `curves_dir`, the training and validation curves go there through DVCLive."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback

    train_cfg = params["train"]
    encode = dict(tokenizer=tokenizer, max_length=train_cfg["max_length"], truncation=train_cfg["truncation"])
    args = training_arguments(output_dir, train_cfg, epochs, learning_rate, params["seed"])
    optimizer = None
    if param_groups is not None:
        optimizer = torch.optim.AdamW(param_groups, lr=learning_rate)
    trainer = ResumableTrainer(
        model=model, args=args, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        train_dataset=to_dataset(parts["train"], **encode), eval_dataset=to_dataset(parts["validation"], **encode),
        compute_metrics=trainer_metrics, optimizers=(optimizer, None),
        callbacks=[*callbacks, EarlyStoppingCallback(early_stopping_patience=train_cfg["early_stopping_patience"]),
                   SaveEvery(params["checkpoints"]["every_steps"]), *([LiveCurves(curves_dir)] if curves_dir else [])])
    started = time.perf_counter()
    resume_from = resume_point(output_dir)
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started
    validation = trainer.evaluate()
    timing = {"train_seconds": round(train_seconds, 1), "peak_memory_mb": round(peak_memory_mb(), 1),
              "resumed_from_step": _step_of(resume_from)}
    return {
        **count_parameters(model),
        "epochs_run": round(trainer.state.epoch or 0, 2),
        "best_epoch_step": trainer.state.best_global_step,
        "val_accuracy": validation["eval_accuracy"],
        "val_macro_f1": validation["eval_macro_f1"],
        "val_loss": validation["eval_loss"],
    }, timing


def _step_of(checkpoint):
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None
