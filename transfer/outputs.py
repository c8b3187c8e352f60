"""Writing outputs so that a killed or failing stage never leaves one that looks complete.

A stage writes each output (folder or file) to a hidden `.<name>.partial` path beside it, and only when all are
written are they renamed into place, one after the other: a kill before that leaves only `.partial` paths, which
the next run removes. A failure (disk full included) removes them and leaves the previous outputs as they were.
"""
import contextlib
import errno
import json
import numbers
import os
import shutil
from pathlib import Path

from transfer.schema import UserError


def partial_path(path):
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def _remove(path):
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def move_into_place(source, path):
    """Replace `path` (file or folder) by `source` with a rename; the old one is moved aside first, then removed."""
    source, path = Path(source), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    _remove(old)
    if path.exists():
        path.rename(old)
    source.rename(path)
    _remove(old)


@contextlib.contextmanager
def replaced_together(*paths):
    """Yield a temporary path for each output; on success they replace the outputs, on any error they vanish.

    The caller creates what it writes at the temporary paths (save_pretrained makes its folder)."""
    paths = [Path(path) for path in paths]
    temporaries = [partial_path(path) for path in paths]
    for temporary in temporaries:
        _remove(temporary)
        temporary.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temporaries
    except BaseException as error:
        for temporary in temporaries:
            _remove(temporary)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise UserError(f"the disk is full while writing {', '.join(map(str, paths))}; nothing was replaced "
                            "and the previous outputs are as they were. Free some space and run again.") from None
        raise
    missing = [str(path) for path, temporary in zip(paths, temporaries) if not temporary.exists()]
    if missing:
        raise RuntimeError(f"the stage wrote nothing for {missing}")
    for path, temporary in zip(paths, temporaries):
        move_into_place(temporary, path)


def stable_float(value):
    """`value` at the precision that is the same on every machine: 4 significant digits below 1 (scores,
    learning rates: 0.8537, 9.6e-05), 5 from 1 up (losses, perplexities, seconds: 6.8715, 964.37, 48797.0).

    Float math (float32 kernels above all) differs between CPUs from about the 6th significant digit, so
    more digits than these would change the committed metrics and curves on another machine. Rounding is
    monotonic: an ordered column (a ROC curve) stays ordered, with equal neighbours at most. NaN and
    infinities stay as they are; -0.0 becomes 0.0."""
    value = float(value)
    if value == 0 or value != value or value in (float("inf"), float("-inf")):
        return value + 0.0
    return float(f"{value:.{4 if abs(value) < 1 else 5}g}")


def rounded(data):
    """`data` with every float in it (dict values, list items, nested) through stable_float; ints, bools,
    strings and None as they are."""
    if isinstance(data, dict):
        return {key: rounded(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [rounded(value) for value in data]
    if isinstance(data, numbers.Real) and not isinstance(data, numbers.Integral):
        return stable_float(data)
    return data


def write_json(path, data, exact=False):
    """Write JSON through a temporary file and an atomic rename, every float through stable_float (metrics
    must not change with the machine). `exact` writes floats as they are: files that record params to be
    compared or hashed (a checkpoint's run.json), where a rounded value would hide a change."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data if exact else rounded(data), indent=2, sort_keys=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def write_csv(path, frame):
    """Write a table (the plots' data) with every float through stable_float, as write_json does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column].map(stable_float)
        elif frame[column].dtype.kind == "O":
            frame[column] = frame[column].map(rounded)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
