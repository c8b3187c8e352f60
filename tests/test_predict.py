"""`python -m stages.predict` on the tiny pipeline's exported model: output format, agreement, errors."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from stages import predict
from tests.conftest import ROOT


def run_predict(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "stages.predict", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True)


@pytest.fixture(scope="module")
def test_split(workdir):
    folder, _ = workdir
    texts = pd.read_parquet(folder / "data/prepared/test.parquet")["text"]
    evaluated = pd.read_csv(folder / "metrics/plots/confusion_peft.csv")["predicted"]
    return folder, texts, evaluated


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_predict_agrees_with_the_evaluate_stage(test_split, tmp_path, capsys, precision):
    folder, texts, evaluated = test_split
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    predict.main([str(tmp_path / "texts.txt"), "--model", str(folder / "models/exported"), "--precision", precision])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(texts)
    labels = [line.split("\t")[0] for line in lines]
    scores = [float(line.split("\t")[1]) for line in lines]
    assert all(0.5 <= score <= 1 for score in scores), "the top score of two classes"
    agreement = sum(a == b for a, b in zip(labels, evaluated)) / len(texts)
    assert agreement >= (0.97 if precision == "fp32" else 0.9)


def test_predict_reads_stdin_writes_jsonl_and_runs_without_dvc(test_split):
    folder, texts, _ = test_split
    code = ("import sys; sys.modules['dvc'] = sys.modules['dvclive'] = None; "  # importing either now fails
            "from stages.predict import main; main(sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, "-", "--model", str(folder / "models/exported"),
                           "--format", "jsonl"], cwd=ROOT, input="\n".join(texts[:5]).encode(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(rows) == 5 and all(set(row) == {"label", "score", "scores"} for row in rows)
    assert all(row["scores"][row["label"]] == row["score"] for row in rows)
    assert all(sum(row["scores"].values()) == pytest.approx(1, abs=1e-4) for row in rows)


def test_predict_on_a_pytorch_model_folder(test_split, tmp_path):
    folder, texts, evaluated = test_split
    (tmp_path / "texts.txt").write_text("\n".join(texts[:10]), encoding="utf-8")
    done = run_predict(tmp_path / "texts.txt", "--model", folder / "models/peft/merged")
    assert done.returncode == 0, done.stderr.decode()
    assert [line.split("\t")[0] for line in done.stdout.decode().splitlines()] == list(evaluated[:10])


@pytest.mark.parametrize("case, expected", [
    ("missing model", "is not a model folder"),
    ("missing input", "does not exist"),
    ("empty input", "has no text to label"),
    ("latin-1 input", "is not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_predict_refuses_bad_input_with_a_clear_message(test_split, tmp_path, case, expected):
    folder, _, _ = test_split
    model, source = folder / "models/exported", tmp_path / "texts.txt"
    source.write_text("a fine film\n", encoding="utf-8")
    if case == "missing model":
        model = tmp_path / "no-such-model"
    elif case == "missing input":
        source = tmp_path / "absent.txt"
    elif case == "empty input":
        source.write_text("\n  \n", encoding="utf-8")
    else:
        source.write_bytes("caf\u00e9 was dull\n".encode("latin-1"))
    done = run_predict(source, "--model", model)
    assert done.returncode == 1 and done.stdout == b""
    message = done.stderr.decode()
    assert message.startswith("error: ") and expected in message and "Traceback" not in message
