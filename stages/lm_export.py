"""Stage lm_export (task causal-lm): the model to ship, in models/lm_exported. causal_lm.export_source best takes
the lower validation perplexity of the full fine-tune and the strategy under study. lora and ia3 are merged into
the weights, so the folder is one plain model `AutoModelForCausalLM.from_pretrained` loads; prompt and prefix
cannot merge: the folder holds the pretrained model and the strategy's adapter in adapter/. With
causal_lm.export_onnx, the plain model also goes to onnx/ (generation with a key/value cache), checked against
PyTorch on test texts."""
import shutil
from pathlib import Path

from transfer import tasks
from transfer.outputs import read_json, replaced_together, write_json
from transfer.tasks import causal_lm

PREPARED = Path("data/lm_prepared")
PRETRAINED = Path("models/lm_pretrained")
SOURCES = {"finetune": Path("models/lm_finetuned"), "peft": Path("models/lm_peft")}
OUT_DIR = Path("models/lm_exported")
METRICS = Path("metrics/lm_export.json")
UNUSED = {"folders": (OUT_DIR,), "files": (METRICS,)}


def main(params):
    if not causal_lm.selected(params):
        tasks.write_unused(causal_lm.TASK, **UNUSED)
        return
    cfg = params["causal_lm"]
    val = {name: read_json(f"metrics/lm_{name}.json")["val_perplexity"] for name in SOURCES}
    source = min(val, key=val.get) if cfg["export_source"] == "best" else cfg["export_source"]
    strategy = read_json("metrics/lm_peft.json")["strategy"]
    plain = source == "finetune" or strategy in causal_lm.MERGEABLE
    model, tokenizer = causal_lm.load_trained(SOURCES[source], PRETRAINED)
    if source == "peft" and plain:
        model = model.merge_and_unload()
    test = causal_lm.load_split(PREPARED)["test"]
    result = {"source": source, "strategy": strategy if source == "peft" else None, "merged": source == "peft" and plain,
              "val_perplexity": val,
              "test_perplexity": causal_lm.perplexity(model, tokenizer, test, cfg["max_length"], cfg["batch_size"])}
    with replaced_together(OUT_DIR, METRICS) as (out, metrics_file):
        if plain:
            model.save_pretrained(out, safe_serialization=True)
        else:  # the pretrained weights as they are, and the adapter beside them
            shutil.copytree(PRETRAINED, out)
            model.save_pretrained(out / "adapter", safe_serialization=True)
        tokenizer.save_pretrained(out)
        if cfg["export_onnx"] and plain:
            causal_lm.export_onnx(out, out / "onnx")
            gap, agreement = causal_lm.onnx_agreement(out / "onnx", model, tokenizer, test[:8], cfg["max_length"])
            result["onnx"] = {"max_logprob_gap": gap, "next_token_agreement": agreement}
        write_json(metrics_file, result)
    print(f"lm_export: {source}{' (' + strategy + ', merged)' if result['merged'] else ''} in {OUT_DIR}, test "
          f"perplexity {result['test_perplexity']:.2f}"
          + (f"; ONNX picks the same next token at {result['onnx']['next_token_agreement']:.1%} of positions"
             if "onnx" in result else ""))


if __name__ == "__main__":
    tasks.run_stage(causal_lm.TASK, main, **UNUSED)
