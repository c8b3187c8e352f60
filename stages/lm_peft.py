"""Stage lm_peft (task causal-lm): the strategy under study (causal_lm.strategy: lora, ia3, prompt or prefix) trains
on the train texts over the frozen pretrained decoder; its adapter is saved alone."""
from pathlib import Path

from transfer import tasks
from transfer.tasks import causal_lm

PREPARED = Path("data/lm_prepared")
PRETRAINED = Path("models/lm_pretrained")
MODEL_DIR, METRICS, TIMING, CURVES, _ = causal_lm.outputs("lm_peft")
UNUSED = {"folders": (MODEL_DIR, CURVES), "files": (METRICS, TIMING)}


def main(params):
    if not causal_lm.selected(params):
        tasks.write_unused(causal_lm.TASK, **UNUSED)
        return
    import torch

    cfg = params["causal_lm"]
    strategy = cfg["strategy"]
    causal_lm.check_strategy(strategy)
    parts = causal_lm.load_split(PREPARED)
    torch.manual_seed(params["seed"])
    model, tokenizer = causal_lm.load_model(str(PRETRAINED))
    model = causal_lm.with_strategy(model, cfg)
    causal_lm.train_and_save("lm_peft", model, tokenizer, parts["train"], parts["validation"], params,
                             cfg["peft_steps"], cfg["peft_learning_rates"][strategy], [PREPARED, PRETRAINED],
                             facts={"strategy": strategy,
                                    "total_params": sum(p.numel() for p in model.parameters())})


if __name__ == "__main__":
    tasks.run_stage(causal_lm.TASK, main, **UNUSED, launched=True)
