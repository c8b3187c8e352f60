"""Stage 1: read the data, clean it, split it, carve the unlabeled pretraining pool."""
from pathlib import Path

from stages import data, strategies
from stages.config import run_stage
from stages.outputs import replaced_together, write_json

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/prepared")
METRICS = Path("metrics/data.json")


def main(params):
    strategies.preflight(params)  # a model or strategy that can't work fails now, not after the data work
    cfg = params["data"]
    if cfg["source"] == "imdb":
        frame = data.fetch_imdb(RAW_DIR)
        where = "the IMDB data"
    else:
        frame = data.read_table(cfg["source"], cfg["text_column"], cfg["label_column"])
        where = cfg["source"]
    rows_read = len(frame)
    frame, dropped = data.clean(frame, cfg["min_chars"], cfg["max_chars"])
    names = data.label_names(frame, where)
    parts = data.split(frame, cfg, params["seed"])
    rows = {name: len(part) for name, part in parts.items()}
    per_label = {name: {label: int((parts[name]["label"] == label).sum()) for label in names}
                 for name in data.SPLITS}
    with replaced_together(OUT_DIR, METRICS) as (out, metrics_file):
        out.mkdir()
        data.save_prepared(parts, names, out)
        write_json(metrics_file, {"rows_read": rows_read, "rows": rows, "rows_per_label": per_label,
                                  "dropped": dropped, "num_classes": len(names)})
    print(f"prepare: {rows} rows, dropped {dropped}")


if __name__ == "__main__":
    run_stage(main)
