"""Stage tc_evaluate (task token-classification): entity-level precision, recall and F1 (seqeval, strict IOB2) on
the test sentences for the full fine-tune, the strategy under study and the word-memory baseline (each word's most
frequent train tag), overall and per entity type."""
from pathlib import Path

from transfer import tasks
from transfer.outputs import read_json, write_json
from transfer.tasks import token_classification as tc

PREPARED = Path("data/tc_prepared")
MODELS = {"finetune": Path("models/tc_finetuned"), "peft": Path("models/tc_peft")}
METRICS = Path("metrics/tc_evaluate.json")
UNUSED = {"files": (METRICS,)}


def main(params):
    if not tc.selected(params):
        tasks.write_unused(tc.TASK, **UNUSED)
        return
    cfg, trust = params["token_classification"], params["model"]["trust_remote_code"]
    parts, names = tc.load_split(PREPARED)
    true = [tags for _, tags in parts["test"]]
    scores = {"baseline": tc.entity_scores(true, tc.word_memory_baseline(parts))}
    base_source = tc.check_model(cfg["model"], trust)
    for name, folder in MODELS.items():
        model, tokenizer = tc.load_trained(folder, names, base_source, trust)
        scores[name] = tc.entity_scores(true, tc.predict_tags(model, tokenizer, parts["test"], cfg["max_length"]))
    peft = read_json("metrics/tc_peft.json")
    warnings = [f"{name}: test entity F1 {scores[name]['f1']:.4f} is not above the word-memory baseline's "
                f"{scores['baseline']['f1']:.4f}" for name in MODELS if scores[name]["f1"] <= scores["baseline"]["f1"]]
    write_json(METRICS, {"test_sentences": len(parts["test"]), "strategy": peft["strategy"], **scores,
                         "warnings": warnings})
    for name, score in scores.items():
        print(f"tc_evaluate: {name}: test entity precision {score['precision']:.4f} recall {score['recall']:.4f} "
              f"F1 {score['f1']:.4f}")
    for warning in warnings:
        print(f"tc_evaluate: WARNING: {warning}")


if __name__ == "__main__":
    tasks.run_stage(tc.TASK, main, **UNUSED)
