"""Stage 3: the reference full fine-tune of the pretrained encoder."""
from pathlib import Path

import torch

from transfer import machine, modeling
from transfer.data import dataset
from transfer.evaluation import quality
from transfer.outputs import replaced_together, write_json
from transfer.training import checkpointing, compute, launcher
from transfer.training.classifier import train_classifier, training_seed

PREPARED = Path("data/prepared")
PRETRAINED = Path("models/pretrained")
OUT_DIR = Path("models/finetuned")
METRICS = Path("metrics/finetune.json")
TIMING = Path("metrics/timing/finetune.json")
CURVES = Path("metrics/curves/finetune")
CHECKPOINTS = Path("checkpoints/finetune")


def main(params):
    compute.check(params)  # the precision this machine can train in, before anything is touched
    parts, names = dataset.load_prepared(PREPARED)
    checkpointing.claim(CHECKPOINTS, checkpointing.run_identity(params, [PREPARED, PRETRAINED]),
                        params["checkpoints"]["resume"])
    torch.manual_seed(training_seed(params))
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    model = modeling.load_classifier(PRETRAINED, names, params["model"]["trust_remote_code"],
                                     params["train"]["pooling"], params["train"]["attention_dropout"])
    results, timing = train_classifier(model, tokenizer, parts, params, params["finetune"]["epochs"],
                                       params["finetune"]["learning_rate"], CHECKPOINTS,
                                       curves_dir=CHECKPOINTS / "curves")
    results["warnings"] = quality.guard("finetune", results.pop("val_report"), names, "validation", params["strategy"])
    if launcher.is_main():  # one process writes, however many trained
        with replaced_together(OUT_DIR, METRICS, TIMING, CURVES) as (out, metrics_file, timing_file, curves):
            modeling.save(model, tokenizer, out)
            write_json(metrics_file, results)
            write_json(timing_file, {**timing, "machine": machine.describe()})
            (CHECKPOINTS / "curves").rename(curves)
    checkpointing.finish(CHECKPOINTS)
    print(f"finetune: val macro-F1 {results['val_macro_f1']:.4f} in {timing['train_seconds']} s")
    quality.announce(results["warnings"], "finetune")


if __name__ == "__main__":
    launcher.run_stage(main)
