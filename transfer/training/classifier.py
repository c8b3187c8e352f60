"""Training a classifier with the HF Trainer: the part finetune and peft share."""
import resource
import time

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from transfer.data.dataset import to_dataset
from transfer.modeling import count_parameters
from transfer.tasks.classification import classification_report, trainer_metrics
from transfer.training.checkpointing import SaveEvery, resume_point
from transfer.training.compute import (across_processes, cpu_kernels, fp32_again,
                                       training_arguments as compute_arguments)
from transfer.training.launcher import one_device_per_process, per_process
from transfer.training.tracking import LiveCurves, show_progress

UNEVEN = 1.5  # largest / smallest class above this: the classes count as uneven


def peak_memory_mb():
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order set by the seed and the epoch alone, the batches shuffled.

    The stock sampler draws its order from the global RNG when the epoch starts; a run resumed mid-epoch has
    that RNG in another state there, so it would see other batches than the run that never stopped.
    It also hands out each megabatch's batches (50 of them) from longest to shortest: where length goes with the
    label (Chinese reviews: the positive ones longer), the label mix drifts over 50 steps at a time and the
    classifier chases it; a fine-tune on 2,000 such reviews stayed at one class, where the same batches in random
    order learned (README.md, your own vocabulary). Only the longest batch keeps its place at the front, so that a batch too big
    for the device fails at the first step, and a short last batch (rows not a multiple of the batch size) keeps its
    place at the end: in the middle it would shift every later batch by its shortfall, so that each batch the loader
    cut straddled two length groups (1,000 short reviews: 77% of the computed tokens text instead of 92%)."""

    def __init__(self, sampler, seed, processes=1):
        # a batch here is one optimizer step's rows, of every process: the processes split each one, in order
        super().__init__(sampler.batch_size * processes, lengths=sampler.lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        grouped = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        batches = [grouped[i:i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        short_last = len(batches) > 1 and len(batches[-1]) < self.batch_size
        middle = len(batches) - 1 - short_last
        rest = torch.randperm(max(middle, 0), generator=generator).add(1).tolist()
        order = [0, *rest, *([len(batches) - 1] if short_last else [])] if batches else []
        return iter([index for position in order for index in batches[position]])


def class_weights(labels, num_classes, setting):
    """Inverse-frequency loss weights (n / (classes * count), as scikit-learn's 'balanced') when `setting` is 'auto'
    and the classes are uneven (largest / smallest > 1.5); None for even classes or 'none'."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    if setting == "none" or counts.min() > 0 and counts.max() / counts.min() <= UNEVEN:
        return None
    weights = counts.sum() / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


class ResumableTrainer(Trainer):
    """The Trainer with a resumable batch order and, where given, class-weighted cross-entropy."""

    def __init__(self, *args, class_weights=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        if class_weights is not None:
            self.model_accepts_loss_kwargs = True  # count the rows over the accumulated batches (num_items)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        # each row's loss times its class's weight, over the rows of the whole optimizer step: batches accumulated
        # into one step train as the bigger batch (the 'balanced' weights average 1 over the training set)
        losses = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, reduction="none")
        loss = (losses * self.class_weights.to(losses.device)[labels]).sum()
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else len(labels))
        loss = across_processes(loss, self, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def create_scheduler(self, num_training_steps, optimizer=None):
        """warmup_stable_decay with its decay given as a share of the run's steps (params train.decay_ratio), where
        transformers takes a count of steps: the same params then fit a run of any length."""
        decay_ratio = (self.args.lr_scheduler_kwargs or {}).get("decay_ratio")
        if self.lr_scheduler is None and decay_ratio is not None:
            warmup_steps = self.args.get_warmup_steps(num_training_steps)
            decay_steps = max(1, min(round(decay_ratio * num_training_steps),
                                     num_training_steps - warmup_steps))  # the warm-up comes first
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type, optimizer=self.optimizer if optimizer is None else optimizer,
                num_warmup_steps=warmup_steps, num_training_steps=num_training_steps,
                scheduler_specific_kwargs={"num_decay_steps": decay_steps, "decay_type": "linear"})
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation in batches of the longest rows first down to the shortest: the fewest padded tokens. With
        group_by_length the stock Trainer groups evaluation like training, by megabatches of random rows, which on
        200 short reviews in batches of 64 left 57% of the computed tokens padding. The predictions come back in
        this order, with their label_ids beside them (KeptEvaluations, train_classifier)."""
        column = self.processing_class.model_input_names[0] if self.processing_class is not None else "input_ids"
        if (not self.args.group_by_length or self.args.world_size > 1
                or column not in getattr(eval_dataset, "column_names", ())):
            return super()._get_eval_sampler(eval_dataset)
        lengths = [len(ids) for ids in eval_dataset[column]]
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return EpochSeededLengthGroupedSampler(sampler, self.args.data_seed, self.accelerator.num_processes)
        return sampler  # a RandomSampler, which accelerate already reseeds per epoch


class EvaluateWithinEpoch(TrainerCallback):
    """Evaluate (and save, so the best evaluation can be restored) `evals_per_epoch` - 1 more times within each epoch,
    at even steps; the Trainer's own evaluation still closes every epoch. More evaluations let early stopping fire
    within a short run and let the best model be kept at a finer grain than whole epochs."""

    def __init__(self, evals_per_epoch):
        self.evals_per_epoch, self.evaluated_step = evals_per_epoch, None

    def on_step_end(self, args, state, control, **kwargs):
        steps_per_epoch = state.max_steps // max(1, round(args.num_train_epochs))
        within = state.global_step % steps_per_epoch if steps_per_epoch else 0
        points = {round(k * steps_per_epoch / self.evals_per_epoch) for k in range(1, self.evals_per_epoch)}
        if within in points - {0}:
            control.should_evaluate = control.should_save = True

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluated_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step == self.evaluated_step:  # stopped early right after a within-epoch evaluation
            control.should_evaluate = control.should_save = False


class EarlyStoppingFrom(EarlyStoppingCallback):
    """The Trainer's early stopping, counting passes without a better metric only from `start` (a fraction of the
    run's steps) on, like Keras's start_from_epoch: with few labels a model can stall for a few passes early on
    before it learns (200 IMDB labels, 6 epochs: one seed stopped at 2 epochs at macro-F1 0.67)."""

    def __init__(self, early_stopping_patience=1, early_stopping_threshold=0.0, start=0.0):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.start = start

    def check_metric_value(self, args, state, control, metric_value):
        super().check_metric_value(args, state, control, metric_value)
        if state.global_step < self.start * state.max_steps:
            self.early_stopping_patience_counter = 0

    def state(self):
        exported = super().state()
        exported["args"]["start"] = self.start  # a resumed run rebuilds the callback from these
        return exported


class KeptEvaluations:
    """compute_metrics that also keeps each evaluation's predictions by step: the best epoch's validation report then
    comes from its own evaluation instead of a second pass over the validation split (seconds per run on a CPU)."""

    def __init__(self):
        self.trainer, self.by_step = None, {}

    def __call__(self, eval_prediction):
        self.by_step[self.trainer.state.global_step] = eval_prediction
        return trainer_metrics(eval_prediction)

    def best(self):
        """(predictions, label_ids, metrics) of the best step's evaluation in this process; None where a resumed run
        evaluated it before the kill."""
        state = self.trainer.state
        logged = [entry for entry in state.log_history if entry.get("step") == state.best_global_step
                  and "eval_macro_f1" in entry]
        kept = self.by_step.get(state.best_global_step)
        if kept is None or not logged:
            return None
        return kept.predictions, kept.label_ids, logged[-1]


def training_seed(params):
    """The seed of finetune and peft: params train.seed, or the top-level seed where it is null. The split and the
    pretrained encoder follow the top-level seed alone, so repeating a training run over seeds changes only it."""
    seed = params["train"].get("seed")
    return params["seed"] if seed is None else seed


def scheduler_options(train_cfg):
    """lr_scheduler_kwargs: warmup_stable_decay's decay share (ResumableTrainer.create_scheduler makes it steps)."""
    if train_cfg["lr_scheduler"] == "warmup_stable_decay":
        return {"decay_ratio": train_cfg["decay_ratio"]}
    return {}


def training_arguments(output_dir, train_cfg, compute, epochs, learning_rate, seed):
    from transformers import TrainingArguments

    return one_device_per_process(TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=learning_rate, seed=seed, data_seed=seed,
        per_device_train_batch_size=per_process(train_cfg["batch_size"]),
        per_device_eval_batch_size=train_cfg["eval_batch_size"],
        gradient_accumulation_steps=train_cfg["gradient_accumulation_steps"],
        weight_decay=train_cfg["weight_decay"], warmup_ratio=train_cfg["warmup_ratio"],
        lr_scheduler_type=train_cfg["lr_scheduler"], lr_scheduler_kwargs=scheduler_options(train_cfg),
        max_grad_norm=train_cfg["max_grad_norm"],
        group_by_length=train_cfg["group_by_length"],
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="macro_f1", greater_is_better=True, save_safetensors=True,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience count survives a resume
        logging_steps=train_cfg["logging_steps"], logging_first_step=True, report_to=[], disable_tqdm=not show_progress(),
        **compute_arguments(compute)))


def train_classifier(model, tokenizer, parts, params, epochs, learning_rate, output_dir, param_groups=None,
                     callbacks=(), curves_dir=None, trainer_class=ResumableTrainer, trainer_options=None):
    """Train on parts['train'], keep the best evaluation by validation macro-F1 (params train.evals_per_epoch per epoch),
    stop early; return (results, timing).

    The loss is class-weighted where params train.class_weights asks for it (class_weights); results carry the
    best model's validation report (`val_report`, for the quality guard).
    Checkpoints go to `output_dir`, every params checkpoints.every_steps steps and at each epoch's end; a complete
    one found there is resumed from. With `curves_dir`, the training and validation curves go there through DVCLive.
    `trainer_class` (a ResumableTrainer, given `trainer_options` too) may train with another loss."""
    from transformers import DataCollatorWithPadding

    train_cfg = params["train"]
    num_classes = model.config.num_labels
    weights = class_weights(parts["train"]["label"], num_classes, train_cfg["class_weights"])
    encode = dict(tokenizer=tokenizer, max_length=train_cfg["max_length"], truncation=train_cfg["truncation"])
    args = training_arguments(output_dir, train_cfg, params["compute"], epochs, learning_rate, training_seed(params))
    optimizer = None
    if param_groups is not None:
        optimizer = torch.optim.AdamW(param_groups, lr=learning_rate)
    evaluations = KeptEvaluations()
    trainer = trainer_class(
        model=model, args=args, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        train_dataset=to_dataset(parts["train"], **encode), eval_dataset=to_dataset(parts["validation"], **encode),
        compute_metrics=evaluations, optimizers=(optimizer, None), class_weights=weights,
        callbacks=[*callbacks, EarlyStoppingFrom(train_cfg["early_stopping_patience"],
                                                   start=train_cfg["early_stopping_start"]),
                   SaveEvery(params["checkpoints"]["every_steps"]), EvaluateWithinEpoch(train_cfg["evals_per_epoch"]),
                   *([LiveCurves(curves_dir)] if curves_dir else [])],
        **(trainer_options or {}))
    evaluations.trainer = trainer
    started = time.perf_counter()
    resume_from = resume_point(output_dir)
    with cpu_kernels(params["compute"]):
        trainer.train(resume_from_checkpoint=resume_from)
        train_seconds = time.perf_counter() - started
        best = evaluations.best()
        if best is None:
            validation = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")
            best = validation.predictions, validation.label_ids, validation.metrics
    fp32_again(model)  # what the caller predicts with it runs in fp32, not under the training's autocast or TF32
    logits, label_ids, validation = best
    logits = logits[0] if isinstance(logits, tuple) else logits
    report = classification_report(label_ids, logits.argmax(axis=-1),  # label_ids beside, in the evaluated order
                                   [model.config.id2label[i] for i in range(num_classes)])
    timing = {"train_seconds": round(train_seconds, 1), "peak_memory_mb": round(peak_memory_mb(), 1),
              "resumed_from_step": _step_of(resume_from)}
    return {
        **count_parameters(model),
        "epochs_run": round(trainer.state.epoch or 0, 2),
        "best_epoch_step": trainer.state.best_global_step,
        "val_accuracy": validation["eval_accuracy"],
        "val_macro_f1": validation["eval_macro_f1"],
        "val_loss": validation["eval_loss"],
        "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
        "val_report": report,
    }, timing


def _step_of(checkpoint):
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None
