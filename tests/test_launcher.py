"""params launcher (transfer/training/launcher.py), proved on a CPU: pretrain, finetune and peft under torchrun with
2 processes on the gloo backend write their outputs once and train as one process does; a killed 2-process run
resumes through `dvc repro`; each run on a GPU machine claims GPUs no other run holds."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import ROOT, build_tiny_bert, default_params, tiny_params, toy_texts
from tests.test_pipeline import run
from tests.test_resume import kill_after_checkpoint
from transfer.schema import UserError
from transfer.training import launcher

pytestmark = pytest.mark.integration
# The documented tolerance (README.md, scaling out): without dropout, 2 processes train the classifier as one does
# to the metrics' 4 significant digits; the validation loss is computed on each process's share of the rows,
# padded apart, and lands within 5%. Masked-LM masks are drawn per process, so pretrain's loss after lands within 5%.
LOSS_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project on a dropout-free tiny BERT (dropout draws other masks in each process), prepared and pretrained."""
    from stages import prepare, pretrain
    from transfer.config import validate

    folder = tmp_path_factory.mktemp("launch")
    for name in ("stages", "transfer"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    model = build_tiny_bert(folder / "tiny")
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    toy_texts(400).to_csv(folder / "reviews.csv", index=False)
    params = tiny_params(model, "reviews.csv")
    params["lora"]["dropout"] = 0.0
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    previous = os.getcwd()
    os.chdir(folder)
    try:
        prepare.main(validate(params))
        pretrain.main(validate(params))
    finally:
        os.chdir(previous)
    return folder


def copy_of(project, target, processes):
    shutil.copytree(project, target, ignore=shutil.ignore_patterns("checkpoints"))
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["launcher"]["processes"] = processes
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def stage(folder, name):
    """`python -m stages.<name>`, as dvc.yaml runs it; its console output."""
    result = subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=folder, capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, f"stages.{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def curves(folder, name):
    root = folder / "metrics/curves" / name / "plots/metrics"
    return {str(path.relative_to(root)): pd.read_csv(path, sep="\t").drop(columns="timestamp", errors="ignore")
            for path in sorted(root.rglob("*.tsv"))}


SUMMARY = {"pretrain": "held-out MLM loss", "finetune": "val macro-F1", "peft": "val macro-F1"}  # its last line


def assert_written_once(folder, name, output):
    assert output.count(SUMMARY[name]) == 1, output[-2000:]
    assert not (folder / "checkpoints" / name).exists(), "the checkpoints were not cleaned up"
    assert not list(folder.rglob(".*.partial")), "a half-written output is left"


def test_two_processes_fine_tune_the_classifier_as_one_does(project, tmp_path):
    one, two = copy_of(project, tmp_path / "one", 1), copy_of(project, tmp_path / "two", 2)
    stage(one, "finetune")
    output = stage(two, "finetune")
    assert "[default0]:" in output and "[default1]:" not in output  # rank 0's console alone
    assert_written_once(two, "finetune", output)
    assert sorted(p.name for p in (two / "models/finetuned").iterdir()) == \
        sorted(p.name for p in (one / "models/finetuned").iterdir())
    single, double = (json.loads((f / "metrics/finetune.json").read_text()) for f in (one, two))
    for key in ("epochs_run", "best_epoch_step", "val_accuracy", "val_macro_f1", "trainable_params"):
        assert double[key] == single[key], key
    assert double["val_loss"] == pytest.approx(single["val_loss"], rel=LOSS_TOLERANCE)
    single_curves, double_curves = curves(one, "finetune"), curves(two, "finetune")
    for name in ("train/loss.tsv", "train/grad_norm.tsv", "train/learning_rate.tsv"):  # the same steps, the same rows
        # to the 4 digits written, but for a value on a rounding boundary, which may flip in its last digit
        pd.testing.assert_frame_equal(double_curves[name], single_curves[name], obj=name, check_exact=False,
                                      rtol=1e-3, atol=0)
    assert double_curves["eval/macro_f1.tsv"].equals(single_curves["eval/macro_f1.tsv"])


def test_pretrain_and_peft_run_under_two_processes(project, tmp_path):
    one, two = copy_of(project, tmp_path / "one", 1), copy_of(project, tmp_path / "two", 2)
    for name in ("pretrain", "peft"):
        stage(one, name)
        assert_written_once(two, name, stage(two, name))
    single, double = (json.loads((f / "metrics/pretrain.json").read_text()) for f in (one, two))
    assert double["mlm_loss_after"] < double["mlm_loss_before"] == single["mlm_loss_before"]
    assert double["mlm_loss_after"] == pytest.approx(single["mlm_loss_after"], rel=LOSS_TOLERANCE)
    single, double = (json.loads((f / "metrics/peft.json").read_text()) for f in (one, two))
    assert double["trainable_params"] == single["trainable_params"]
    assert double["val_macro_f1"] >= single["val_macro_f1"] - 0.05
    assert (two / "models/peft/trained/adapter_model.safetensors").is_file()


def test_a_killed_two_process_run_resumes_through_dvc_repro(project, tmp_path):
    folder = copy_of(project, tmp_path / "repo", 1)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "data/raw", folder / "data/raw")  # the users' folder, a dep of prepare
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                    ["dvc", "repro", "pretrain"]):
        run(command, folder)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["checkpoints"]["every_steps"] = 3
    params["launcher"]["processes"] = 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "--single-item", "finetune"], folder)
    uninterrupted = (folder / "metrics/finetune.json").read_bytes()
    kill_after_checkpoint(folder, "finetune", 12, signal.SIGTERM, processes=2)
    assert not (folder / "models/finetuned").exists()
    output = run(["dvc", "repro", "--force", "--single-item", "finetune"], folder)  # as killed: not from the run cache
    assert "resuming from checkpoints/finetune/checkpoint-12" in output
    assert_written_once(folder, "finetune", output)
    assert (folder / "metrics/finetune.json").read_bytes() == uninterrupted


def test_a_batch_that_does_not_split_among_the_processes_is_refused():
    params = default_params()
    params["launcher"]["processes"] = 3
    with pytest.raises(UserError, match=r"train.batch_size \(16\) must split evenly among launcher.processes \(3\)"):
        launcher.check(params)


@pytest.mark.parametrize("task, section", [("causal-lm", "causal_lm"), ("token-classification", "token_classification")])
def test_the_chosen_tasks_batch_must_split_among_the_processes_too(task, section):
    """Its stages split their own batch_size as the classifier's do: 8 rows under 3 processes would train on 6."""
    params = default_params()
    params["launcher"]["processes"] = 2
    params[section]["batch_size"] = 9
    launcher.check(params)  # classification: the other task's batch is not used
    params["task"] = task
    with pytest.raises(UserError, match=rf"{section}.batch_size \(9\) must split evenly among launcher.processes "
                                        r"\(2\)"):
        launcher.check(params)


def test_one_process_that_sees_several_gpus_trains_on_one(tmp_path, monkeypatch):
    """Else the Trainer wraps the model in DataParallel and each step takes batch_size rows from every GPU."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, use_cpu=True)
    monkeypatch.setitem(args.__dict__, "_setup_devices", torch.device("cuda", 0))  # a machine with 4 GPUs
    args._n_gpu = 4
    assert args.train_batch_size == 64  # as the Trainer would take it
    assert launcher.one_device_per_process(args).train_batch_size == 16 and args.n_gpu == 1


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    params = default_params()
    params["launcher"]["processes"] = 4
    with pytest.raises(UserError, match=r"launcher.processes is 4, but this machine shows 2 GPU\(s\) \(0, 1\)"):
        launcher.check(params)


def test_runs_claim_gpus_no_other_run_holds_and_wait_for_a_free_one(tmp_path):
    """Two runs (a `dvc queue start -j 2` worker each) get a GPU each; a third waits until one ends."""
    pool, locks = ["0", "1"], tmp_path / "locks"
    with launcher.claimed_gpus(1, pool, locks) as first, launcher.claimed_gpus(1, pool, locks) as second:
        assert {*first, *second} == {"0", "1"}
        third = []
        waiting = threading.Thread(target=lambda: third.extend(_claim_and_release(pool, locks)))
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive() and not third, "a third run took a GPU another run holds"
    waiting.join(timeout=10)
    assert third and third[0] in pool
    with launcher.claimed_gpus(2, pool, locks) as both:  # all released: a 2-process run takes both
        assert sorted(both) == pool


def _claim_and_release(pool, locks):
    with launcher.claimed_gpus(1, pool, locks, poll_seconds=0.05) as mine:
        return list(mine)


def test_a_claimed_gpu_is_all_the_started_run_sees(tmp_path, monkeypatch):
    (tmp_path / "show_gpus.py").write_text("import os\nprint('sees', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with launcher.claimed_gpus(1, ["3", "5"], tmp_path / "locks") as mine:
        result = subprocess.run([sys.executable, "-c", "from transfer.training import launcher; "
                                 f"raise SystemExit(launcher.start('show_gpus', 1, {mine!r}))"],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sees 3"
