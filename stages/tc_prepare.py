"""Stage tc_prepare (task token-classification): the tagged sentences of token_classification.source (WNUT-16 built
in, or your CoNLL / JSONL file), their BIO tags checked, split into train, validation and test (seeded); the
model's fit checked before any training."""
from pathlib import Path

from transfer import tasks
from transfer.outputs import replaced_together, write_json
from transfer.tasks import token_classification as tc

DOWNLOADS = Path("data/downloads")
OUT_DIR = Path("data/tc_prepared")
METRICS = Path("metrics/tc_data.json")
UNUSED = {"folders": (OUT_DIR,), "files": (METRICS,)}


def main(params):
    if not tc.selected(params):
        tasks.write_unused(tc.TASK, **UNUSED)
        return
    cfg = params["token_classification"]
    tc.check_model(cfg["model"], params["model"]["trust_remote_code"])
    tc.check_strategy(cfg["strategy"])
    parts = tc.split(tc.read_sentences(cfg["source"], DOWNLOADS), cfg, params["seed"])
    names = tc.label_names(parts)
    entities = {name: {} for name in parts}
    for name, sentences in parts.items():
        for tokens, tags in sentences:
            for kind, _ in tc.entities(tokens, tags):
                entities[name][kind] = entities[name].get(kind, 0) + 1
    with replaced_together(OUT_DIR, METRICS) as (out, metrics_file):
        tc.save_split(parts, names, out)
        write_json(metrics_file, {"sentences": {name: len(s) for name, s in parts.items()},
                                  "words": {name: sum(len(t) for t, _ in s) for name, s in parts.items()},
                                  "labels": names, "entities": {name: dict(sorted(e.items()))
                                                                for name, e in entities.items()}})
    print(f"tc_prepare: {', '.join(f'{len(s)} {name}' for name, s in parts.items())} sentences; "
          f"{(len(names) - 1) // 2} entity types")


if __name__ == "__main__":
    tasks.run_stage(tc.TASK, main, **UNUSED)
