"""Resume after a kill, no half-written outputs, the same numbers twice: through `dvc repro`, on the tiny BERT."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import ROOT, tiny_params, toy_texts
from transfer.training import checkpointing
from tests.test_pipeline import run

STEPS_PER_EPOCH = 20  # 160 training rows of the toy data, batches of 8
EVERY = 3  # checkpoint steps: most checkpoints fall mid-epoch


@pytest.fixture(scope="module")
def toy_repo(tiny_bert, tmp_path_factory):
    """A fresh git + DVC repo of this project on the tiny BERT and 400 toy texts, prepared and pretrained."""
    folder = tmp_path_factory.mktemp("resume")
    for name in ("stages", "transfer", "dvc.yaml", ".gitignore", ".dvcignore"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / name)
    if (ROOT / "data/raw").is_dir():  # the users' folder, which prepare depends on (as in test_pipeline's repo)
        shutil.copytree(ROOT / "data/raw", folder / "data/raw")
    toy_texts(400).to_csv(folder / "reviews.csv", index=False)
    params = tiny_params(tiny_bert, "reviews.csv")
    params["checkpoints"]["every_steps"] = EVERY
    params["finetune"]["epochs"] = 3
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], folder)
    run(["dvc", "init", "-q"], folder)
    run(["dvc", "repro", "pretrain"], folder)
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-qm", "prepared and pretrained"], folder)  # `dvc exp run` needs a commit
    return folder


# Runs argv[1:] as a shell runs a job started at a terminal: SIGINT and SIGTERM at their default action and not
# blocked. A test runner started in the background of a script (`pytest ... &` ignores SIGINT) or by a tool that
# ignores or blocks it hands that on to DVC and the stage through every fork and exec: the stage then never saw
# the Ctrl-C, trained to the end and left models/finetuned (issue 11, only [ctrl-c] failing).
AS_FROM_A_TERMINAL = ("import os, signal, sys\n"
                      "for signum in (signal.SIGINT, signal.SIGTERM):\n"
                      "    signal.signal(signum, signal.SIG_DFL)\n"
                      "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})\n"
                      "os.execvp(sys.argv[1], sys.argv[1:])")


def start(args, folder):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the signal reaches DVC and the stage


def written_whole(state):
    try:
        return "global_step" in json.loads(state.read_text())
    except (OSError, ValueError):
        return False


def kill_after_checkpoint(folder, stage, step, signum, command=None, processes=1):
    """Run `dvc repro --force <stage>` (or `command`); once the Trainer has saved checkpoint-<step> (rank 0's
    files and every process's random state), signal the whole process group."""
    process = start(command or ["dvc", "repro", "--force", "--single-item", stage], folder)
    checkpoint = folder / "checkpoints" / stage / f"checkpoint-{step}"
    deadline = time.monotonic() + 300
    while not (written_whole(checkpoint / "trainer_state.json")  # rank 0 writes it last
               and checkpointing.random_states_whole(checkpoint, processes)):
        assert process.poll() is None, f"the run ended before checkpoint-{step}:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(process.pid, signum)
    process.wait(timeout=60)
    output = process.stdout.read()
    assert process.returncode != 0, f"the run went on to the end after signal {signum}:\n{output[-3000:]}"
    return output


def curves_without_time(folder, stage):
    root = folder / "metrics/curves" / stage / "plots/metrics"
    return {str(path.relative_to(root)): pd.read_csv(path, sep="\t").drop(columns="timestamp", errors="ignore")
            for path in sorted(root.rglob("*.tsv"))}


def outcome(folder, stage, model_dir):
    """What a finished run leaves: its metrics file (bytes), curves (timestamps aside) and weights."""
    weights = load_file(next((folder / model_dir).rglob("*.safetensors")))
    return ((folder / f"metrics/{stage}.json").read_bytes(), curves_without_time(folder, stage), weights)


def assert_same(resumed, uninterrupted, resumed_step, logging_steps):
    """Identical metrics and weights; identical curves but for one point: the Trainer's logged training loss
    averages the steps since its last log, and a resumed run counts those from the checkpoint, not the last log."""
    assert resumed[0] == uninterrupted[0], "metrics differ"
    assert resumed[1].keys() == uninterrupted[1].keys()
    for name, frame in resumed[1].items():
        other = uninterrupted[1][name]
        if name == "train/loss.tsv" and resumed_step % logging_steps:
            first_log = (resumed_step // logging_steps + 1) * logging_steps
            assert (frame.step == first_log).sum() == 1
            frame, other = frame[frame.step != first_log], other[other.step != first_log]
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), other.reset_index(drop=True), obj=name)
    assert resumed[2].keys() == uninterrupted[2].keys()
    for name, tensor in resumed[2].items():
        assert torch.equal(tensor, uninterrupted[2][name]), name


@pytest.fixture(scope="module")
def uninterrupted(toy_repo):
    output = run(["dvc", "repro", "--force", "--single-item", "finetune"], toy_repo)
    assert "resuming" not in output
    return outcome(toy_repo, "finetune", "models/finetuned")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill", "term", "ctrl-c"])
def test_a_killed_finetune_resumes_and_ends_as_if_never_stopped(toy_repo, uninterrupted, signum):
    folder = toy_repo
    kill_after_checkpoint(folder, "finetune", 12, signum)
    # nothing that looks complete: DVC removed the old outputs, the stage had not yet put new ones in place
    for output in ("models/finetuned", "metrics/finetune.json", "metrics/timing/finetune.json",
                   "metrics/curves/finetune"):
        assert not (folder / output).exists(), f"{output} exists after the kill"
    assert "finetune" in run(["dvc", "status"], folder)

    # The killed command again: a plain `dvc repro` would not run the stage, since its deps and params are those
    # dvc.lock records, and DVC checks the uninterrupted run's outputs out of its cache instead. A killed run
    # that is new to DVC resumes under the plain command (the `dvc exp run` test below).
    output = run(["dvc", "repro", "--force", "--single-item", "finetune"], folder)
    resumed_step = json.loads((folder / "metrics/timing/finetune.json").read_text())["resumed_from_step"]
    assert f"resuming from checkpoints/finetune/checkpoint-{resumed_step}" in output
    assert resumed_step >= 12 and resumed_step % STEPS_PER_EPOCH != 0, "resumed mid-epoch"
    assert not (folder / "checkpoints/finetune").exists(), "checkpoints are dropped after success"
    assert not list(folder.rglob("*.partial"))
    logging_steps = yaml.safe_load((folder / "params.yaml").read_text())["train"]["logging_steps"]
    assert_same(outcome(folder, "finetune", "models/finetuned"), uninterrupted, resumed_step, logging_steps)
    assert "up to date" in run(["dvc", "status", "finetune"], folder).lower()


def test_a_killed_dvc_exp_run_resumes_on_the_next_one(toy_repo):
    """`dvc exp run` force-checks-out the outputs before it runs: checkpoints/ is no output (git-ignored, unknown
    to DVC), so the next experiment run still finds the killed one's checkpoints."""
    experiment = ["dvc", "exp", "run", "-S", "finetune.learning_rate=0.001"]
    kill_after_checkpoint(toy_repo, "finetune", 12, signal.SIGKILL, experiment)
    output = run([*experiment, "--verbose"], toy_repo)
    assert "resuming from checkpoints/finetune/checkpoint-" in output
    assert json.loads((toy_repo / "metrics/timing/finetune.json").read_text())["resumed_from_step"] >= 12


OTHER_TASKS_METRICS = ("lm_data", "lm_pretrain", "lm_finetune", "lm_peft", "lm_evaluate", "lm_generations", "lm_export",
              "tc_data", "tc_finetune", "tc_peft", "tc_evaluate", "tc_export")  # the other tasks' placeholders


def test_two_forced_runs_write_identical_metrics(toy_repo):
    """Same seed, same machine: every metrics file (timings aside, in metrics/timing/) and plot table is
    byte-identical after a second `dvc repro --force`."""
    def results():
        files = [*(toy_repo / "metrics").glob("*.json"), *(toy_repo / "metrics/plots").glob("*.csv")]
        return {path.name: path.read_bytes() for path in files}

    run(["dvc", "repro", "--force"], toy_repo)
    first = results()
    stages = {"strategy", "data", "pretrain", "finetune", "peft", "baseline", "evaluate", "leaderboard", "compress",
              "export", *OTHER_TASKS_METRICS}
    assert {name for name in first if name.endswith(".json")} == {f"{stage}.json" for stage in stages}
    assert len([name for name in first if name.endswith(".csv")]) == 10  # confusion/roc/pr x 3 models + per_class
    run(["dvc", "repro", "--force"], toy_repo)
    assert results() == first


RESUMABLE = [("pretrain", "lora"), ("peft", "lora"), ("peft", "prefix"), ("peft", "adapter"), ("peft", "gradual"),
             ("peft", "adapter_stack")]


@pytest.mark.parametrize("stage,strategy", RESUMABLE, ids=[f"{s}-{t}" if s == "peft" else s for s, t in RESUMABLE])
def test_an_interrupted_stage_resumes_to_the_same_result(workdir, tmp_path, monkeypatch, capsys, stage, strategy):
    """Stopped right after its checkpoint at step 9 (Ctrl-C), the stage's next run resumes there and ends with
    the metrics and weights of a run that never stopped; peft and adapters checkpoints alike."""
    from transformers import TrainerCallback

    from stages import peft, pretrain

    source, params = workdir
    for name in ("data/prepared", "models/pretrained"):
        shutil.copytree(source / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    params = {**params, "strategy": strategy, "checkpoints": {"resume": True, "every_steps": EVERY}}
    module = {"pretrain": pretrain, "peft": peft}[stage]
    model_dir = {"pretrain": "models/pretrained", "peft": "models/peft"}[stage]

    module.main(params)
    uninterrupted = outcome(tmp_path, stage, model_dir)

    def stop_after_checkpoint_9(self, args, state, control, **kwargs):
        if state.global_step == 9:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(TrainerCallback, "on_save", stop_after_checkpoint_9, raising=False)
        with pytest.raises(KeyboardInterrupt):
            module.main(params)
    capsys.readouterr()
    module.main(params)
    assert "resuming from checkpoints/" in capsys.readouterr().out
    logging_steps = 1 if stage == "pretrain" else params["train"]["logging_steps"]  # pretrain logs every step
    assert_same(outcome(tmp_path, stage, model_dir), uninterrupted, 9, logging_steps)


def test_curves_are_cut_back_to_the_checkpoint_and_a_torn_last_row_dropped(tmp_path):
    from transfer.training.tracking import drop_points_after

    loss = tmp_path / "plots/metrics/train/loss.tsv"
    loss.parent.mkdir(parents=True)
    loss.write_text("step\tloss\n1\t0.7\n5\t0.6\n10\t0.5\n1")  # killed while writing the step-15 row
    drop_points_after(tmp_path, 5)
    assert loss.read_text() == "step\tloss\n1\t0.7\n5\t0.6\n"


def test_a_checkpoint_whose_other_rank_was_cut_short_is_not_resumed(tmp_path, monkeypatch):
    """Under the launcher rank 0 writes trainer_state.json while rank 1 may still be writing its random state: a
    kill then leaves that file cut short (seen under load: the resumed run failed with EOFError). Such a
    checkpoint is removed and the one before it resumed."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for step in (3, 6):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        for rank in (0, 1):
            torch.save({"cpu": torch.get_rng_state()}, checkpoint / f"rng_state_{rank}.pth")
    whole = (tmp_path / "checkpoint-6/rng_state_1.pth").read_bytes()
    assert checkpointing.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    (tmp_path / "checkpoint-6/rng_state_1.pth").write_bytes(whole[:len(whole) // 2])
    assert checkpointing.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert not (tmp_path / "checkpoint-6").exists(), "rank 0 removes the cut-short checkpoint"
    (tmp_path / "checkpoint-3/rng_state_1.pth").unlink()  # a rank that had not begun to write
    assert checkpointing.last_complete_checkpoint(tmp_path) is None
