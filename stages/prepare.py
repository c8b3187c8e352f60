"""Stage 1: read the data, clean it, split it, carve the unlabeled pretraining pool."""
from pathlib import Path

from stages import data
from stages.config import run_stage
from stages.outputs import atomic_dir, write_json

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/prepared")


def main(params):
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
    with atomic_dir(OUT_DIR) as out:
        data.save_prepared(parts, names, out)
    rows = {name: len(part) for name, part in parts.items()}
    per_label = {name: {label: int((parts[name]["label"] == label).sum()) for label in names}
                 for name in data.SPLITS}
    write_json("metrics/data.json", {"rows_read": rows_read, "rows": rows, "rows_per_label": per_label,
                                     "dropped": dropped, "num_classes": len(names)})
    print(f"prepare: {rows} rows, dropped {dropped}")


if __name__ == "__main__":
    run_stage(main)
