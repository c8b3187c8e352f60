"""Stage tc_peft (task token-classification): token_classification.strategy (lora or ia3) over the frozen encoder,
the tagging head trained in full; the adapter and head are saved alone."""
from pathlib import Path

from transfer import tasks
from transfer.tasks import token_classification as tc

PREPARED = Path("data/tc_prepared")
OUTPUTS = tc.outputs("tc_peft")
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
    model = tc.with_crf(tc.with_strategy(model, cfg), cfg)
    tc.train_and_save("tc_peft", model, tokenizer, parts, params, cfg["epochs"],
                      cfg["peft_learning_rates"][cfg["strategy"]], [PREPARED], facts={"strategy": cfg["strategy"]})


if __name__ == "__main__":
    tasks.run_stage(tc.TASK, main, **UNUSED, launched=True)
