"""Resuming a killed training stage from its last checkpoint.

Each training stage keeps its Trainer checkpoints and its curves-in-progress in its own folder,
checkpoints/<stage>, a git-ignored working folder that dvc.yaml does not declare: DVC never deletes or checks
it out, so a killed run's checkpoints are still there for the next `dvc repro` or `dvc exp run`, and the
stage's declared outputs stay eligible for DVC's run cache (which refuses any stage with a `persist` output),
so switching a param away and back restores the earlier result instead of training it again.
The folder remembers the run that wrote it (run.json: params, input files and code); the next run resumes
only when it is the same run, and starts afresh otherwise. After success the folder is removed.
"""
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

from transformers import TrainerCallback

from transfer.outputs import read_json, write_json
from transfer.training import launcher

RUN_FILE = "run.json"
ROOT = Path(__file__).parents[2]
CODE_FILES = ("stages/*.py", "transfer/**/*.py")  # the entry points and the library they call
NOT_RESULTS = ("checkpoints",)  # params that never change a result


def _digest(path):
    """sha256 over a file, or over the relative names and contents of every file in a folder."""
    path, digest = Path(path), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_identity(params, inputs):
    """What a run's result depends on: its params, the files it reads (those that exist) and the code."""
    return json.loads(json.dumps({
        "params": {key: value for key, value in params.items() if key not in NOT_RESULTS},
        "inputs": {str(path): _digest(path) for path in map(Path, inputs) if path.exists()},
        "code": hashlib.sha256(b"".join(p.read_bytes() for pattern in CODE_FILES
                                        for p in sorted(ROOT.glob(pattern)))).hexdigest(),
    }))


def claim(folder, identity, resume=True):
    """Make `folder` this run's: keep its checkpoints when the same run wrote them (and `resume` is on),
    else empty it. Returns True when there is something to resume from.
    Under the launcher's N processes rank 0 does it, and the others wait for it and then look."""
    folder = Path(folder)
    if launcher.is_main():
        run_file = folder / RUN_FILE
        if not (resume and run_file.is_file() and read_json(run_file) == identity):
            _empty(folder)
            write_json(run_file, identity, exact=True)  # compared as it is on the next run
    launcher.barrier()
    return last_complete_checkpoint(folder) is not None


def _step(checkpoint):
    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the Trainer writes trainer_state.json last: without it the save was cut short


def random_states_whole(checkpoint, processes=None):
    """Whether every process's random state file is there and whole. Under the launcher each process writes its
    own (rng_state_<rank>.pth) while rank 0 writes the rest, with nothing waiting for it: a kill can leave rank 0's
    trainer_state.json complete and another rank's file cut short, on which the resumed run would fail. torch.save
    writes a zip archive, whose directory comes last: a cut-short file has none."""
    processes = processes or launcher.world_size()
    names = ["rng_state.pth"] if processes == 1 else [f"rng_state_{rank}.pth" for rank in range(processes)]
    for name in names:
        try:
            with zipfile.ZipFile(Path(checkpoint) / name) as archive:
                if archive.testzip() is not None:
                    return False
        except (OSError, zipfile.BadZipFile):
            return False
    return True


def last_complete_checkpoint(folder):
    """The newest checkpoint-N folder the Trainer finished writing, or None; half-written ones are removed
    (by rank 0 alone, under the launcher)."""
    folder = Path(folder)
    complete = []
    for checkpoint in folder.glob("checkpoint-*"):
        if _step(checkpoint) is None or not random_states_whole(checkpoint):
            if launcher.is_main():
                shutil.rmtree(checkpoint, ignore_errors=True)
        else:
            complete.append(checkpoint)
    return str(max(complete, key=_step)) if complete else None


def _empty(folder):
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)  # checkpoints/ itself too: nothing in git or DVC makes it


def resume_point(folder):
    """The checkpoint a Trainer writing into `folder` resumes from (announced), or None."""
    checkpoint = last_complete_checkpoint(folder)
    if checkpoint:
        print(f"resuming from {checkpoint}", flush=True)
    return checkpoint


def finish(folder):
    """Remove the folder once the stage's outputs are in place: the checkpoints are no longer needed."""
    launcher.barrier()  # every process is past its last read of a checkpoint
    if launcher.is_main():
        shutil.rmtree(folder, ignore_errors=True)


class SaveEvery(TrainerCallback):
    """Save a checkpoint every `steps` optimizer steps, besides the Trainer's own saves at each epoch's end."""

    def __init__(self, steps):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps == 0:
            control.should_save = True
