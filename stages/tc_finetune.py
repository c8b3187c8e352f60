"""Stage tc_finetune (task token-classification): the full fine-tune reference, every weight of the encoder and a
new tagging head trained on the train sentences, the epoch with the best validation entity F1 kept."""
from pathlib import Path

from transfer import tasks
from transfer.tasks import token_classification as tc

PREPARED = Path("data/tc_prepared")
OUTPUTS = tc.outputs("tc_finetune")
UNUSED = {"folders": (OUTPUTS[0], OUTPUTS[3]), "files": (OUTPUTS[1], OUTPUTS[2])}


def main(params):
    if not tc.selected(params):
        tasks.write_unused(tc.TASK, **UNUSED)
        return
    import torch

    cfg = params["token_classification"]
    parts, names = tc.load_split(PREPARED)
    source = tc.check_model(cfg["model"], params["model"]["trust_remote_code"])
    torch.manual_seed(params["seed"])
    model, tokenizer = tc.load_model(source, names, params["model"]["trust_remote_code"])
    model = tc.with_crf(model, cfg)
    tc.train_and_save("tc_finetune", model, tokenizer, parts, params, cfg["epochs"], cfg["finetune_learning_rate"],
                      [PREPARED])


if __name__ == "__main__":
    tasks.run_stage(tc.TASK, main, **UNUSED, launched=True)
