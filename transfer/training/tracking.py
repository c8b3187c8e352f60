"""Training curves through DVCLive, and progress bars that stay out of CI logs.

Every value the Trainer logs lands in <folder>/plots/metrics/{train,eval}/<name>.tsv at the Trainer's global
step, so training and validation loss share one step axis and `dvc plots` can draw them on one chart.
"""
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from transfer.outputs import rounded

# Per-run summaries and timings the Trainer logs once: not curves.
NOT_CURVES = ("epoch", "total_flos", "train_loss", "train_runtime", "train_samples_per_second",
              "train_steps_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def live_files(folder, resume=False):
    """A DVCLive logger that only writes files; `resume` keeps what the folder holds. DVC already runs and tracks the stage; DVCLive's own repo
    handling would `dvc init` an enclosing git repo when there is no DVC repo, and fails in a repo without
    commits (a fresh `git init` + `dvc repro`)."""
    from dvclive import Live

    class FilesOnly(Live):
        def _init_dvc(self):
            self._dvc_file = "dvc.yaml"

    return FilesOnly(str(folder), resume=resume, save_dvc_exp=False, dvcyaml=None)


def drop_points_after(folder, step):
    """Cut every curve in `folder` back to the points at or before `step`: a run resumed from the checkpoint
    at `step` logs the later ones again."""
    for tsv in Path(folder).rglob("*.tsv"):
        header, *rows = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        names = header.rstrip("\n").split("\t")
        # a kill can cut the last row short: keep whole rows only
        rows = [row for row in rows if row.endswith("\n") and len(row.split("\t")) == len(names)]
        tsv.write_text("".join([header] + [row for row in rows if int(row.split("\t")[names.index("step")]) <= step]),
                       encoding="utf-8")


def curve_name(key):
    """'loss' -> 'train/loss', 'eval_loss' -> 'eval/loss', 'unfrozen_layers' -> 'train/unfrozen_layers'."""
    return f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"


class LiveCurves(TrainerCallback):
    """Write the Trainer's logs as DVCLive step metrics; add it after callbacks that add to the logs."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.live = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            resumed = state.global_step > 0  # the Trainer has loaded a checkpoint's state
            if resumed:
                drop_points_after(self.folder, state.global_step)
            self.live = live_files(self.folder, resume=resumed)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.live is None:
            return
        self.live.step = state.global_step
        for key, value in (logs or {}).items():
            if key not in NOT_CURVES and isinstance(value, (int, float)):
                # at the metrics files' fixed precision, so that another CPU's float noise does not show
                self.live.log_metric(curve_name(key), rounded(value))

    def on_train_end(self, args, state, control, **kwargs):
        # The evaluation after training scores the restored best checkpoint, not the last step: no point for it.
        if self.live is not None:
            self.live.end()
            self.live = None


def show_progress():
    """Progress bars on a terminal; none in CI or when output goes to a file, where they are noise."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def quiet_progress_if_needed():
    if not show_progress():
        import datasets
        from transformers.utils import logging

        datasets.disable_progress_bars()
        logging.disable_progress_bar()
