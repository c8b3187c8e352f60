"""Stage lm_pretrain (task causal-lm): continued pretraining of the decoder on the domain pool by next-token
prediction (causal_lm.pretrain_steps; 0 passes the base model through), validation perplexity before and after."""
from pathlib import Path

from transfer import tasks
from transfer.tasks import causal_lm

PREPARED = Path("data/lm_prepared")
BASE = Path("models/lm_base")
MODEL_DIR, METRICS, TIMING, CURVES, _ = causal_lm.outputs("lm_pretrain")
UNUSED = {"folders": (MODEL_DIR, CURVES), "files": (METRICS, TIMING)}


def main(params):
    if not causal_lm.selected(params):
        tasks.write_unused(causal_lm.TASK, **UNUSED)
        return
    import torch

    cfg = params["causal_lm"]
    parts = causal_lm.load_split(PREPARED)
    torch.manual_seed(params["seed"])
    model, tokenizer = causal_lm.load_model(str(BASE))
    causal_lm.train_and_save("lm_pretrain", model, tokenizer, parts["pool"], parts["validation"], params,
                             cfg["pretrain_steps"], cfg["pretrain_learning_rate"], [PREPARED, BASE])


if __name__ == "__main__":
    tasks.run_stage(causal_lm.TASK, main, **UNUSED, launched=True)
