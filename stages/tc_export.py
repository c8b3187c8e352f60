"""Stage tc_export (task token-classification): the tagger with the better validation entity F1 of the full fine-tune
and the strategy under study (token_classification.export_source: best, finetune or peft), LoRA and IA3 merged into
the weights: one folder AutoModelForTokenClassification loads, its tags in the config; also ONNX (optimum), checked
against PyTorch on test sentences. `python -m stages.tc_predict "some text"` prints the entities it finds."""
from pathlib import Path

from transfer import tasks
from transfer.outputs import read_json, replaced_together, write_json
from transfer.tasks import token_classification as tc

PREPARED = Path("data/tc_prepared")
SOURCES = {"finetune": Path("models/tc_finetuned"), "peft": Path("models/tc_peft")}
OUT_DIR = Path("models/tc_exported")
METRICS = Path("metrics/tc_export.json")
UNUSED = {"folders": (OUT_DIR,), "files": (METRICS,)}


def main(params):
    if not tc.selected(params):
        tasks.write_unused(tc.TASK, **UNUSED)
        return
    cfg, trust = params["token_classification"], params["model"]["trust_remote_code"]
    val = {name: read_json(f"metrics/tc_{name}.json")["val_entity_f1"] for name in SOURCES}
    source = max(val, key=val.get) if cfg["export_source"] == "best" else cfg["export_source"]
    parts, names = tc.load_split(PREPARED)
    model, tokenizer = tc.load_trained(SOURCES[source], names, tc.check_model(cfg["model"], trust), trust)
    if source == "peft":
        model = tc.merged(model)
    tagged = tc.predict_tags(model, tokenizer, parts["test"], cfg["max_length"])
    result = {"source": source, "val_entity_f1": val,
              "test_entity_f1": tc.entity_scores([tags for _, tags in parts["test"]], tagged)["f1"]}
    with replaced_together(OUT_DIR, METRICS) as (out, metrics_file):
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        result["onnx_tag_agreement"] = tc.export_onnx(out, out / "onnx", tokenizer, parts["test"][:64], tagged[:64],
                                                      cfg["max_length"])
        write_json(metrics_file, result)
    print(f"tc_export: {source} in {OUT_DIR}, test entity F1 {result['test_entity_f1']:.4f}; ONNX gives the same tag "
          f"to {result['onnx_tag_agreement']:.1%} of the test words")


if __name__ == "__main__":
    tasks.run_stage(tc.TASK, main, **UNUSED)
