"""Stage 4: train the strategy named by params 'strategy' (LoRA, adapters, gradual unfreezing, ...) from the
pretrained encoder.

Writes models/peft/trained (only what the strategy trained: a peft or adapters checkpoint, or the trainable
tensors), models/peft/merged (a plain full model, for the strategies that fold into one) and
models/peft/strategy.json (how to rebuild the model for evaluation and export).
"""
from pathlib import Path

import torch

from stages import data, modeling, strategies
from stages.config import run_stage
from stages.outputs import atomic_dir, write_json
from stages.training import train_classifier

PRETRAINED = Path("models/pretrained")
OUT_DIR = Path("models/peft")
CURVES = Path("metrics/curves/peft")
CHECKPOINTS = Path("checkpoints/peft")


def main(params):
    strategy = params["strategy"]
    parts, names = data.load_prepared()
    torch.manual_seed(params["seed"])
    tokenizer = modeling.load_tokenizer(PRETRAINED)
    plan = strategies.prepare(strategy, modeling.load_classifier(PRETRAINED, names), params,
                              work_dir=CHECKPOINTS / "domain", tokenizer=tokenizer,
                              domain_texts=parts[data.POOL]["text"].tolist())
    summary = train_classifier(plan.model, tokenizer, parts, params, params["peft"]["epochs"],
                               params[strategy]["learning_rate"], CHECKPOINTS, plan.param_groups, plan.callbacks,
                               curves_dir=CURVES)
    with atomic_dir(OUT_DIR) as out:
        strategies.save_adapted(plan.model, strategy, tokenizer, out)
    write_json("metrics/peft.json", {"strategy": strategy, **summary, **plan.metrics})
    print(f"peft ({strategy}): val macro-F1 {summary['val_macro_f1']:.4f}, "
          f"{summary['trainable_fraction']:.2%} of parameters trained")


if __name__ == "__main__":
    run_stage(main)
