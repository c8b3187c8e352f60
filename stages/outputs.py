"""Writing outputs so that a killed or failing stage never leaves one that looks complete.

A stage writes each output (folder or file) to a hidden `.<name>.partial` path beside it, and only when all are
written are they renamed into place, one after the other: a kill before that leaves only `.partial` paths, which
the next run removes. A failure (disk full included) removes them and leaves the previous outputs as they were.
"""
import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from stages.config import UserError


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


def write_json(path, data):
    """Write JSON through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_csv(path, frame):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
