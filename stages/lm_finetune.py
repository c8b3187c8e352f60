"""Stage lm_finetune (task causal-lm): the full fine-tune reference: every weight of the pretrained decoder trains on
the train texts (causal_lm.finetune_steps, finetune_learning_rate)."""
from pathlib import Path

from transfer import tasks
from transfer.tasks import causal_lm

PREPARED = Path("data/lm_prepared")
PRETRAINED = Path("models/lm_pretrained")
MODEL_DIR, METRICS, TIMING, CURVES, _ = causal_lm.outputs("lm_finetune")
UNUSED = {"folders": (MODEL_DIR, CURVES), "files": (METRICS, TIMING)}


def main(params):
    if not causal_lm.selected(params):
        tasks.write_unused(causal_lm.TASK, **UNUSED)
        return
    import torch

    cfg = params["causal_lm"]
    parts = causal_lm.load_split(PREPARED)
    torch.manual_seed(params["seed"])
    model, tokenizer = causal_lm.load_model(str(PRETRAINED))
    causal_lm.train_and_save("lm_finetune", model, tokenizer, parts["train"], parts["validation"], params,
                             cfg["finetune_steps"], cfg["finetune_learning_rate"], [PREPARED, PRETRAINED])


if __name__ == "__main__":
    tasks.run_stage(causal_lm.TASK, main, **UNUSED, launched=True)
