"""How the classifier pools the encoder's tokens into one vector (params train.pooling): `cls`, the first token
through the model's own pooler (transformers' default), or `mean`, the average of the text's tokens, padding left
out. Sentence encoders such as all-MiniLM-L6-v2 were trained for the mean: their first token alone carries little.

Mean pooling replaces the BERT-style pooler module (the one layer between the encoder and the classifier) and is
written into the model's config (`classifier_pooling`), so a saved model loads and exports pooled as it trained."""
import json
import logging
from pathlib import Path

import torch

from transfer.schema import UserError

CONFIG_KEY = "classifier_pooling"
SOURCE_KEY = "sentence_pooling"  # what the pretrained model was trained for, as pretrain saves it
SENTENCE_POOLING_FILE = "1_Pooling/config.json"  # sentence-transformers' record of its pooling


class MeanPooler(torch.nn.Module):
    """The average of the hidden states under the attention mask (the pooler's slot: no weights of its own)."""

    def __init__(self):
        super().__init__()
        self.attention_mask = None

    def forward(self, hidden_states):
        mask = self.attention_mask
        if mask is None:
            return hidden_states.mean(dim=1)
        # prefix tuning lengthens the mask by its virtual tokens, which are keys and values, not hidden states
        mask = mask[:, -hidden_states.shape[1]:].unsqueeze(-1).float()
        summed = (hidden_states.float() * mask).sum(dim=1)  # in fp32: a bf16 sum of 128 tokens loses digits
        return (summed / mask.sum(dim=1).clamp(min=1.0)).to(hidden_states.dtype)


def _remember_mask(encoder, args, kwargs):
    """Forward pre-hook of the encoder: hand this call's attention mask to its pooler. It reaches the pooler
    through the encoder it is called with, not a closure, so a deep copy of the model pools with its own mask."""
    mask = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)
    encoder.pooler.attention_mask = mask


def fits_mean(model):
    """Whether the classification head reads the encoder's `pooler` module (BERT and its kin: a dense layer over the
    first token) with the full sequence of hidden states, which is where mean pooling goes. RoBERTa, DistilBERT and
    others pool in the head and have no such module."""
    pooler = getattr(model.base_model, "pooler", None)
    return isinstance(pooler, MeanPooler) or (type(pooler).__name__.endswith("Pooler") and hasattr(pooler, "dense"))


def source_pooling(source):
    """'mean' or 'cls' where the model folder (or Hub id, from the Hugging Face cache) records the pooling
    sentence-transformers trained it with; None where it records none."""
    path = Path(source) / SENTENCE_POOLING_FILE
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(source), SENTENCE_POOLING_FILE)
        except ValueError:  # not a Hub id either
            cached = None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    settings = json.loads(path.read_text(encoding="utf-8"))
    if settings.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls" if settings.get("pooling_mode_cls_token") else None


def resolve(setting, model):
    """params train.pooling for this model: auto is mean where the pretrained model was trained for it and the head
    can take it, cls otherwise. An explicit mean on a model whose head pools by itself is a UserError."""
    if setting == "auto":
        wanted = getattr(model.config, SOURCE_KEY, None) == "mean"
        return "mean" if wanted and fits_mean(model) else "cls"
    if setting == "mean" and not fits_mean(model):
        raise UserError(f"params.yaml: train.pooling is mean, but a {model.config.model_type!r} model's classification "
                        "head pools the first token by itself (only BERT-style models have a pooler layer to "
                        "replace). Set train.pooling to cls or auto.")
    return setting


def check(setting, config, params):
    """Refuse train.pooling: mean for a model whose head pools by itself, from its config alone (no weights)."""
    if setting == "mean":
        from transfer.strategies._injection import skeleton

        resolve(setting, skeleton(config, params))


def apply(model, pooling):
    """Pool `model`'s classifier input as `pooling` says (cls leaves it as transformers built it); returns model."""
    model.config.update({CONFIG_KEY: pooling})
    if pooling == "mean" and not isinstance(model.base_model.pooler, MeanPooler):
        model.base_model.pooler = MeanPooler()
        model.base_model.register_forward_pre_hook(_remember_mask, with_kwargs=True)
    return model


def pools_mean(model):
    return getattr(model.config, CONFIG_KEY, "cls") == "mean"


def saved(model):
    """Re-apply the pooling a saved model trained with (its config says); returns model."""
    return apply(model, "mean") if pools_mean(model) else model


def refuse_missing(path, missing_keys, model):
    """A saved classifier must hold every weight it uses: only a mean-pooled model leaves its pooler out."""
    unused = ".pooler." if pools_mean(model) else None
    missing = [key for key in missing_keys if not (unused and unused in f".{key}")]
    if missing:
        raise UserError(f"the saved model in {path} lacks weights it needs ({', '.join(missing[:5])}); it is not a "
                        "complete model this pipeline saved. Re-run the stage that writes it (`dvc repro`).")


class quiet_missing_pooler:
    """Silence transformers' 'weights not initialized' warning while loading a saved model: a mean-pooled one
    leaves its pooler weights out on purpose, and refuse_missing raises for any other missing weight."""

    def __enter__(self):
        self.logger = logging.getLogger("transformers.modeling_utils")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
