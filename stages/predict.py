"""Label new texts with the exported model (or any classifier folder this pipeline saved); DVC not needed.

    python -m stages.predict reviews.txt                        # one text per line; prints label<TAB>score
    cat reviews.txt | python -m stages.predict - --format jsonl  # stdin; one JSON object per line
    python -m stages.predict reviews.txt --model models/finetuned  # a PyTorch model folder instead of ONNX

Texts are cleaned and truncated as in training: the exported folder's inference.json says how.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from transfer.schema import UserError
from transfer.data.dataset import clean_text, encode
from transfer.export.onnx_model import FP32_FILE, INFERENCE_FILE, INT8_FILE

DEFAULT_MODEL = Path("models/exported")


def read_texts(source):
    """Lines of a file, or of stdin for '-'; refuses empty and non-UTF-8 input with the fix."""
    where = "standard input" if source == "-" else source
    if source == "-":
        raw = sys.stdin.buffer.read()
    else:
        if not Path(source).is_file():
            raise UserError(f"input file {source} does not exist; pass a text file (one text per line) or - for stdin.")
        raw = Path(source).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{where} is not UTF-8 text (byte {raw[error.start]:#04x} at offset {error.start}); "
                        f"convert it first, e.g. `iconv -f latin1 -t utf-8 {source} > fixed.txt`.") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise UserError(f"{where} has no text to label; give one text per line.")
    return [clean_text(line) for line in lines]


class BaselineClassifier:
    """An exported TF-IDF baseline (export.source picked it, or `best` did): plain files, no tokenizer."""

    def __init__(self, folder, settings):
        from transfer.baselines import tfidf

        self.labels = settings["labels"]
        self.model = tfidf.load(folder)

    def probabilities(self, texts, batch_size=32):
        return self.model.predict_proba(texts)


def load_classifier(folder, precision="int8"):
    """The classifier in `folder`: the exported baseline's plain files, or a transformer (ONNX or PyTorch)."""
    settings_file = Path(folder) / INFERENCE_FILE
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    if settings.get("kind") == "tfidf":
        return BaselineClassifier(folder, settings)
    return Classifier(folder, precision)


class Classifier:
    """An ONNX export (int8 by default) or a saved PyTorch classifier folder, with its tokenizer and labels."""

    def __init__(self, folder, precision="int8"):
        from transformers import AutoConfig, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder} is not a model folder (no config.json). Run `dvc repro` to build "
                            f"{DEFAULT_MODEL}, or pass --model with a folder the pipeline saved.")
        settings = json.loads((folder / INFERENCE_FILE).read_text()) if (folder / INFERENCE_FILE).is_file() else {}
        self.max_length = settings.get("max_length", 512)
        self.truncation = settings.get("truncation", "head")
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        onnx_file = folder / (INT8_FILE if precision == "int8" else FP32_FILE)
        if onnx_file.is_file():
            from transfer.export.onnx_model import onnx_logits, onnx_session

            session = onnx_session(onnx_file)
            self.logits = lambda batch: onnx_logits(session, batch)
        elif (folder / "model.safetensors").is_file():
            import torch

            from transfer.modeling import load_saved_classifier

            model = load_saved_classifier(folder).eval()

            def logits(batch):
                with torch.inference_mode():
                    return model(**{k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}).logits.numpy()
            self.logits = logits
        else:
            raise UserError(f"{folder} has neither {onnx_file.name} nor model.safetensors; point --model at "
                            f"{DEFAULT_MODEL} or a plain model folder such as models/finetuned.")

    def probabilities(self, texts, batch_size=32):
        encoded = encode(texts, self.tokenizer, self.max_length, self.truncation)
        order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
        result = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            batch = self.tokenizer.pad({key: [encoded[key][i] for i in index] for key in encoded}, return_tensors="np")
            logits = self.logits(batch).astype(np.float64)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            result[index] = exp / exp.sum(axis=1, keepdims=True)
        return result


def format_rows(labels, probabilities, style):
    for row in probabilities:
        best = int(row.argmax())
        if style == "jsonl":
            yield json.dumps({"label": labels[best], "score": round(float(row[best]), 6),
                              "scores": {name: round(float(p), 6) for name, p in zip(labels, row)}},
                             ensure_ascii=False)  # labels as UTF-8 text, not \u escapes
        else:
            yield f"{labels[best]}\t{row[best]:.6f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a UTF-8 text file with one text per line, or - for stdin")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help=f"model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8", help="which ONNX file to run")
    parser.add_argument("--format", choices=("tsv", "jsonl"), default="tsv", help="label<TAB>score, or JSON lines")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()  # stdout carries the labels; stderr only what went wrong
    try:
        texts = read_texts(args.input)
        classifier = load_classifier(args.model, args.precision)
        probabilities = classifier.probabilities(texts, args.batch_size)
    except UserError as error:
        sys.exit(f"error: {error}")
    for line in format_rows(classifier.labels, probabilities, args.format):
        print(line)


if __name__ == "__main__":
    main()
