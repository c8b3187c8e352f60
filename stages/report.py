"""Print the quality report of the last run (`python -m stages.report`): each model's test macro-F1 against the
TF-IDF baseline, its worst classes, the leaderboard, and every warning of the data, training and evaluation stages."""
from pathlib import Path

from transfer.evaluation import leaderboard, quality
from transfer.outputs import read_json

METRICS = Path("metrics")


def main():
    print(quality.report(read_json(METRICS / "evaluate.json")))
    print(leaderboard.table(read_json(METRICS / "leaderboard.json")))
    for stage in ("data", "finetune", "peft"):
        quality.announce(read_json(METRICS / f"{stage}.json").get("warnings", []), stage)


if __name__ == "__main__":
    main()
