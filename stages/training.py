"""Training a classifier with the HF Trainer: the part finetune and peft share."""
import resource
import shutil
import time

import torch

from stages.data import to_dataset
from stages.metrics import trainer_metrics
from stages.modeling import count_parameters
from stages.tracking import LiveCurves, show_progress


def peak_memory_mb():
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
        logging_steps=train_cfg["logging_steps"], logging_first_step=True, report_to=[], disable_tqdm=not show_progress(),
        bf16=cuda and torch.cuda.is_bf16_supported(), use_cpu=not cuda)


def train_classifier(model, tokenizer, parts, params, epochs, learning_rate, output_dir, param_groups=None,
                     callbacks=(), curves_dir=None):
    """Train on parts['train'], pick the best epoch by validation macro-F1, stop early; return metrics.

    With `curves_dir`, the training and validation curves go there through DVCLive."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer

    train_cfg = params["train"]
    encode = dict(tokenizer=tokenizer, max_length=train_cfg["max_length"], truncation=train_cfg["truncation"])
    args = training_arguments(output_dir, train_cfg, epochs, learning_rate, params["seed"])
    optimizer = None
    if param_groups is not None:
        optimizer = torch.optim.AdamW(param_groups, lr=learning_rate)
    trainer = Trainer(
        model=model, args=args, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        train_dataset=to_dataset(parts["train"], **encode), eval_dataset=to_dataset(parts["validation"], **encode),
        compute_metrics=trainer_metrics, optimizers=(optimizer, None),
        callbacks=[*callbacks, EarlyStoppingCallback(early_stopping_patience=train_cfg["early_stopping_patience"]),
                   *([LiveCurves(curves_dir)] if curves_dir else [])])
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    validation = trainer.evaluate()
    shutil.rmtree(output_dir, ignore_errors=True)
    return {
        **count_parameters(model),
        "train_seconds": round(train_seconds, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "epochs_run": round(trainer.state.epoch or 0, 2),
        "best_epoch_step": trainer.state.best_global_step,
        "val_accuracy": validation["eval_accuracy"],
        "val_macro_f1": validation["eval_macro_f1"],
        "val_loss": validation["eval_loss"],
    }
