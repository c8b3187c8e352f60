"""Stage 4: train the strategy named by params 'strategy' (LoRA, frozen backbone, ...) from the pretrained encoder.

Writes models/peft/trained (what the strategy trained: the peft adapter with its classifier, or the
trainable weights) and models/peft/merged (a plain full model for evaluation and export).
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

from stages import data, modeling, strategies
from stages.config import run_stage
from stages.outputs import atomic_dir, write_json
from stages.training import train_classifier

PRETRAINED = Path("models/pretrained")
OUT_DIR = Path("models/peft")


def save_trained(model, out_dir):
    """Only what the strategy trained: peft's adapter format, or the trainable tensors as safetensors."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        out_dir.mkdir(parents=True)
        save_file({name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad},
                  out_dir / "trainable.safetensors")


def main(params):
    strategy = params["strategy"]
    parts, names = data.load_prepared()
    torch.manual_seed(params["seed"])
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    model, param_groups = strategies.prepare(strategy, modeling.load_classifier(PRETRAINED, names), params)
    summary = train_classifier(model, tokenizer, parts, params, params["peft"]["epochs"],
                               params[strategy]["learning_rate"], Path("checkpoints/peft"), param_groups)
    with atomic_dir(OUT_DIR) as out:
        save_trained(model, out / "trained")
        tokenizer.save_pretrained(out / "trained")
        modeling.save(strategies.merged(model), tokenizer, out / "merged")
    write_json("metrics/peft.json", {"strategy": strategy, **summary})
    print(f"peft ({strategy}): val macro-F1 {summary['val_macro_f1']:.4f}, "
          f"{summary['trainable_fraction']:.2%} of parameters trained")


if __name__ == "__main__":
    run_stage(main)
