"""Stage 3: the reference full fine-tune of the pretrained encoder."""
from pathlib import Path

import torch

from stages import data, modeling
from stages.config import run_stage
from stages.outputs import atomic_dir, write_json
from stages.training import train_classifier

PRETRAINED = Path("models/pretrained")
OUT_DIR = Path("models/finetuned")
CURVES = Path("metrics/curves/finetune")


def main(params):
    parts, names = data.load_prepared()
    torch.manual_seed(params["seed"])
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    model = modeling.load_classifier(PRETRAINED, names)
    summary = train_classifier(model, tokenizer, parts, params, params["finetune"]["epochs"],
                               params["finetune"]["learning_rate"], Path("checkpoints/finetune"), curves_dir=CURVES)
    with atomic_dir(OUT_DIR) as out:
        modeling.save(model, tokenizer, out)
    write_json("metrics/finetune.json", summary)
    print(f"finetune: val macro-F1 {summary['val_macro_f1']:.4f} in {summary['train_seconds']} s")


if __name__ == "__main__":
    run_stage(main)
