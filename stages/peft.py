"""Stage 4: train the strategy named by params 'strategy' (LoRA, adapters, gradual unfreezing, ...) from the
pretrained encoder.

Writes models/peft/trained (only what the strategy trained: a peft or adapters checkpoint, or the trainable
tensors), models/peft/merged (a plain full model, for the strategies that fold into one) and
models/peft/strategy.json (how to rebuild the model for evaluation and export).
"""
from pathlib import Path

import torch

from transfer import machine, modeling, strategies
from transfer.data import dataset
from transfer.evaluation import quality
from transfer.outputs import replaced_together, write_json
from transfer.training import checkpointing, compute, launcher
from transfer.training.classifier import train_classifier, training_seed

PREPARED = Path("data/prepared")
PRETRAINED = Path("models/pretrained")
OUT_DIR = Path("models/peft")
METRICS = Path("metrics/peft.json")
TIMING = Path("metrics/timing/peft.json")
CURVES = Path("metrics/curves/peft")
CHECKPOINTS = Path("checkpoints/peft")


def main(params):
    strategy = params["strategy"]
    parts, names = dataset.load_prepared(PREPARED)
    torch.manual_seed(training_seed(params))
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    model = modeling.load_classifier(PRETRAINED, names, params["model"]["trust_remote_code"],
                                     params["train"]["pooling"], params["train"]["attention_dropout"])
    strategies.check_fits(strategy, params, model.config)  # a refusal leaves checkpoints/peft untouched
    compute.check(params, model.config)
    checkpointing.claim(CHECKPOINTS, checkpointing.run_identity(params, [PREPARED, PRETRAINED]),
                        params["checkpoints"]["resume"])
    plan = strategies.prepare(strategy, model, params, work_dir=CHECKPOINTS / "domain", tokenizer=tokenizer,
                              domain_texts=parts[dataset.POOL]["text"].tolist())
    results, timing = train_classifier(plan.model, tokenizer, parts, params, params["peft"]["epochs"],
                                       params[strategy]["learning_rate"], CHECKPOINTS, plan.param_groups,
                                       plan.callbacks, curves_dir=CHECKPOINTS / "curves")
    results["warnings"] = quality.guard("peft", results.pop("val_report"), names, "validation", strategy)
    timing.update(plan.metrics)  # what the strategy measured before the task training: a duration
    timing["peft_train_seconds"] = round(timing["train_seconds"] + timing.get("domain_adapter_seconds", 0), 1)
    if launcher.is_main():  # one process writes, however many trained
        with replaced_together(OUT_DIR, METRICS, TIMING, CURVES) as (out, metrics_file, timing_file, curves):
            strategies.save_adapted(plan.model, strategy, tokenizer, out)
            write_json(metrics_file, {"strategy": strategy, **results})
            write_json(timing_file, {**timing, "machine": machine.describe()})
            (CHECKPOINTS / "curves").rename(curves)
    checkpointing.finish(CHECKPOINTS)
    print(f"peft ({strategy}): val macro-F1 {results['val_macro_f1']:.4f}, "
          f"{results['trainable_fraction']:.2%} of parameters trained")
    quality.announce(results["warnings"], f"peft ({strategy})")


if __name__ == "__main__":
    launcher.run_stage(main)
