"""A refused run changes nothing: the check stage, a strategy refused in peft, a pool too small for pretraining
refused in prepare, and a Hub id that cannot be fetched refused at once. (Through `dvc exp run`:
tests/test_pipeline.py::test_a_refused_experiment_changes_nothing.)"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from stages import check, peft, prepare
from transfer import modeling
from transfer.config import validate
from transfer.schema import UserError
from tests.conftest import ROOT, tiny_params, toy_texts
from tests.test_bad_input import snapshot


def test_check_writes_the_chosen_strategy_and_only_its_section(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    toy_texts(40).to_csv("reviews.csv", index=False)
    params = validate(tiny_params(tiny_bert, tmp_path / "reviews.csv"))
    check.main(params)
    assert json.loads(check.CHOSEN.read_text()) == {"strategy": "lora", "lora": params["lora"]}
    params["lora"]["learning_rate"] = 1.23456789e-4  # any change of the chosen section must re-run peft
    check.main(params)
    assert json.loads(check.CHOSEN.read_text())["lora"]["learning_rate"] == 1.23456789e-4


@pytest.mark.parametrize("change,message", [
    ({"strategy": "partial", "partial": {"top_layers": 9}}, r"partial.top_layers is 9 but the model has only 4"),
    ({"lora": {"target_modules": ["q_proj"]}}, r"lora.target_modules names \['q_proj'\], which this model does not "
                                               r"have; its linear layers are: dense, key, query, value"),
], ids=["partial-too-deep", "lora-modules-missing"])
def test_check_refuses_a_strategy_that_does_not_fit_and_keeps_its_output(tiny_bert, tmp_path, monkeypatch, change,
                                                                         message):
    monkeypatch.chdir(tmp_path)
    toy_texts(40).to_csv("reviews.csv", index=False)
    params = validate(tiny_params(tiny_bert, tmp_path / "reviews.csv"))
    check.main(params)
    before = snapshot(tmp_path)
    for key, value in change.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) else value
    with pytest.raises(UserError, match=message):
        check.main(params)
    assert snapshot(tmp_path) == before


def test_a_misspelt_strategy_gets_the_projects_did_you_mean_from_the_check_stage(tmp_path):
    """The stage's own entry point (what `dvc repro` runs): one line, exit status 1, nothing written."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["strategy"] = "lorra"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "stages.check"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: params.yaml: 'strategy' is 'lorra'")
    assert "Did you mean 'lora'?" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_strategy_refused_in_peft_leaves_its_checkpoint_folder_as_it_was(workdir, tmp_path, monkeypatch):
    source, params = workdir
    for name in ("data/prepared", "models/pretrained"):
        shutil.copytree(source / name, tmp_path / name)
    killed = tmp_path / "checkpoints/peft/checkpoint-3"  # what a killed run left, for the next run to resume
    killed.mkdir(parents=True)
    (killed / "trainer_state.json").write_text('{"global_step": 3}')
    (killed.parent / "run.json").write_text('{"params": "the killed run\'s"}')
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    params = {**params, "strategy": "lora", "lora": {**params["lora"], "target_modules": ["q_proj"]}}
    with pytest.raises(UserError, match=r"lora.target_modules names \['q_proj'\]"):
        peft.main(params)
    assert snapshot(tmp_path) == before  # the killed run's checkpoints kept, and no run.json of the refused run


def test_a_pool_too_small_for_pretraining_is_refused_in_prepare(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    toy_texts(100).to_csv("reviews.csv", index=False)
    params = validate(tiny_params(tiny_bert, tmp_path / "reviews.csv"))
    params["data"]["min_train_per_class"] = 5
    prepare.main(params)
    before = snapshot(tmp_path)
    pool = json.loads((tmp_path / "metrics/data.json").read_text())["rows"]["unlabeled"]
    params["pretrain"]["eval_texts"] = pool
    with pytest.raises(UserError, match=rf"the unlabeled pool has {pool} rows and pretrain.eval_texts={pool} of "
                                        r"them are held out, which leaves none to train on. Lower pretrain.eval_texts"):
        prepare.main(params)
    assert snapshot(tmp_path) == before
    params["pretrain"]["include_task_texts"] = True  # the train split's texts give it something to train on
    prepare.main(params)
    params["pretrain"].update(include_task_texts=False, enabled=False)  # nothing to pretrain, nothing to check
    prepare.main(params)


def test_an_unreachable_hub_is_one_line_at_once(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(modeling, "_hub_reachable", lambda endpoint, timeout=5: False)
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"model.name 'no-such-org/no-such-model' is a Hugging Face Hub id, but "
                                        r"https://huggingface.co cannot be reached from here and the model is not in "
                                        r"the Hugging Face cache. Download it where there is network"):
        modeling.check_model("no-such-org/no-such-model")
    assert time.perf_counter() - started < 5  # transformers alone retries for half a minute


def test_a_cached_hub_model_loads_from_the_cache_when_the_hub_cannot_be_reached(tiny_bert, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot_dir = tmp_path / "models--some-org--tiny-bert/snapshots/0123abcd"
    shutil.copytree(tiny_bert, snapshot_dir)
    (tmp_path / "models--some-org--tiny-bert/refs").mkdir()
    (tmp_path / "models--some-org--tiny-bert/refs/main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(modeling, "_hub_reachable", lambda endpoint, timeout=5: False)
    assert modeling.resolve_model("some-org/tiny-bert") == str(snapshot_dir)
    assert modeling.check_model("some-org/tiny-bert").model_type == "bert"


def test_hub_reachable_reads_any_http_answer_as_reachable(monkeypatch):
    import urllib.error
    import urllib.request

    def answer(error):
        def urlopen(url, timeout):
            raise error
        return urlopen

    monkeypatch.setattr(urllib.request, "urlopen", answer(urllib.error.HTTPError("u", 503, "busy", {}, None)))
    assert modeling._hub_reachable("https://huggingface.co")
    monkeypatch.setattr(urllib.request, "urlopen", answer(urllib.error.URLError("Name or service not known")))
    assert not modeling._hub_reachable("https://huggingface.co")


def test_prepare_says_when_dvc_will_not_watch_the_data_file(tiny_bert, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw").mkdir(parents=True)
    for name in ("elsewhere.csv", "data/raw/watched.csv"):
        toy_texts(100).to_csv(name, index=False)
        params = validate(tiny_params(tiny_bert, tmp_path / name))
        prepare.main(params)
        note = "is outside data/raw/, so dvc repro will not notice when the file changes"
        assert (note in capsys.readouterr().out) == (name == "elsewhere.csv")
