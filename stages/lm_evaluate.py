"""Stage lm_evaluate (task causal-lm): test perplexity of the base model, the pretrained one, the full fine-tune and
the strategy under study, side by side, and each one's greedy continuation of the fixed prompts
(causal_lm.prompts) in metrics/lm_generations.json."""
from pathlib import Path

from transfer import tasks
from transfer.outputs import read_json, replaced_together, write_json
from transfer.tasks import causal_lm

PREPARED = Path("data/lm_prepared")
MODELS = {"base": Path("models/lm_base"), "pretrained": Path("models/lm_pretrained"),
          "finetune": Path("models/lm_finetuned"), "peft": Path("models/lm_peft")}
METRICS = Path("metrics/lm_evaluate.json")
GENERATIONS = Path("metrics/lm_generations.json")
UNUSED = {"files": (METRICS, GENERATIONS)}


def main(params):
    if not causal_lm.selected(params):
        tasks.write_unused(causal_lm.TASK, **UNUSED)
        return
    cfg = params["causal_lm"]
    test = causal_lm.load_split(PREPARED)["test"]
    perplexity, generations = {}, {"prompts": cfg["prompts"], "max_new_tokens": cfg["max_new_tokens"]}
    for name, folder in MODELS.items():
        model, tokenizer = causal_lm.load_trained(folder, MODELS["pretrained"])
        perplexity[name] = causal_lm.perplexity(model, tokenizer, test, cfg["max_length"], cfg["batch_size"])
        generations[name] = causal_lm.generate(model, tokenizer, cfg["prompts"], cfg["max_new_tokens"])
        print(f"lm_evaluate: {name}: test perplexity {perplexity[name]:.2f}")
    peft = read_json("metrics/lm_peft.json")
    with replaced_together(METRICS, GENERATIONS) as (metrics_file, generations_file):
        write_json(metrics_file, {"test_texts": len(test), "test_perplexity": perplexity,
                                  "strategy": peft["strategy"], "peft_trainable_params": peft["trainable_params"],
                                  "peft_perplexity_vs_finetune": perplexity["peft"] / perplexity["finetune"]})
        write_json(generations_file, generations)


if __name__ == "__main__":
    tasks.run_stage(causal_lm.TASK, main, **UNUSED)
