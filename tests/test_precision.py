"""Metrics, plot tables and curves are written at a fixed precision, so that another CPU's float noise
(from about the 6th significant digit) does not change the committed files."""
import io
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from transfer.outputs import read_json, stable_float, write_csv, write_json


def test_the_rule_4_significant_digits_below_1_and_5_from_1_up():
    assert stable_float(0.123456789) == 0.1235
    assert stable_float(0.8536340852130326) == 0.8536
    assert stable_float(0.0012345678) == 0.001235
    assert stable_float(1.23456789e-7) == 1.235e-7
    assert stable_float(8.933333333333334e-05) == 8.933e-05
    assert stable_float(-0.000123456) == -0.0001235
    assert stable_float(6.871470126073732) == 6.8715
    assert stable_float(964.3652627126476) == 964.37
    assert stable_float(48797.16938864655) == 48797.0
    assert stable_float(np.float32(0.1)) == 0.1  # float32's binary noise goes too
    assert stable_float(-0.0) == 0.0 and str(stable_float(-0.0)) == "0.0"
    assert np.isnan(stable_float(float("nan"))) and stable_float(float("inf")) == float("inf")
    # two runs that differ in the 7th significant digit write the same value
    assert stable_float(0.39341315627098083) == stable_float(0.39341319) == 0.3934


def test_write_json_rounds_every_float_and_keeps_ints_bools_and_strings(tmp_path):
    data = {"accuracy": 0.123456789, "tiny": 1.23456789e-7, "rows": 1000, "ok": True, "none": None,
            "label": "0.123456789", "epochs": 2.0,
            "nested": {"loss": [0.987654321, 12.3456789, 3, False], "pairs": (0.55555555, 7)},
            "matrix": [[408, 90], [44, 458]]}
    write_json(tmp_path / "m.json", data)
    back = read_json(tmp_path / "m.json")
    assert back == {"accuracy": 0.1235, "tiny": 1.235e-7, "rows": 1000, "ok": True, "none": None,
                    "label": "0.123456789", "epochs": 2.0,
                    "nested": {"loss": [0.9877, 12.346, 3, False], "pairs": [0.5556, 7]},
                    "matrix": [[408, 90], [44, 458]]}
    assert type(back["rows"]) is int and type(back["ok"]) is bool and type(back["nested"]["loss"][3]) is bool
    assert type(back["nested"]["loss"][2]) is int and type(back["epochs"]) is float
    text = (tmp_path / "m.json").read_text()
    assert "0.123456789," not in text and '"0.123456789"' in text  # the string is left alone
    assert data["accuracy"] == 0.123456789  # the caller's data is not changed


def test_write_json_exact_keeps_every_digit_for_params_compared_on_the_next_run(tmp_path):
    identity = {"params": {"learning_rate": 1.23456789e-4, "ratio": 0.123456789}}
    write_json(tmp_path / "run.json", identity, exact=True)
    assert read_json(tmp_path / "run.json") == identity


def test_a_checkpoint_folder_records_its_run_exactly(tmp_path):
    from transfer.training import checkpointing

    identity = {"params": {"train": {"learning_rate": 1.23456789e-4}}, "inputs": {}, "code": "x"}
    checkpointing.claim(tmp_path / "ck", identity)
    assert read_json(tmp_path / "ck" / checkpointing.RUN_FILE) == identity


def test_write_csv_rounds_float_columns_and_leaves_the_others(tmp_path):
    frame = pd.DataFrame({"row": ["a (x)", "b (x)"], "precision": [0.9026548672566371, 0.8357664233576643],
                          "support": [498, 502], "mixed": [0.123456789, "text"], "missing": [np.nan, 1.23456789]})
    write_csv(tmp_path / "t.csv", frame)
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "row,precision,support,mixed,missing", "a (x),0.9027,498,0.1235,", "b (x),0.8358,502,text,1.2346"]
    assert frame["precision"][0] == 0.9026548672566371  # the caller's frame is not changed


def test_roc_and_precision_recall_tables_are_rounded_and_stay_ordered(tmp_path):
    from transfer.tasks.classification import score_curves

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 4999)  # 4999 positives: k / 4999 has many digits
    probabilities = rng.dirichlet(np.ones(3), 4999)
    probabilities[np.arange(4999), labels] += 0.3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    curves = score_curves(labels, probabilities)
    write_csv(tmp_path / "roc.csv", pd.DataFrame(curves["roc"]))
    write_csv(tmp_path / "pr.csv", pd.DataFrame(curves["precision_recall"]))
    roc, pr = pd.read_csv(tmp_path / "roc.csv"), pd.read_csv(tmp_path / "pr.csv")
    assert roc.columns.tolist() == ["fpr", "tpr"] and pr.columns.tolist() == ["recall", "precision"]
    for column in (roc["fpr"], roc["tpr"], pr["recall"], pr["precision"]):
        assert all(float(f"{value:.4g}") == value for value in column)  # all below or at 1
    assert (roc["fpr"].diff().dropna() >= 0).all() and (roc["tpr"].diff().dropna() >= 0).all()
    assert (pr["recall"].diff().dropna() <= 0).all()
    assert roc["fpr"].iloc[0] == 0.0 and roc["tpr"].iloc[-1] == 1.0
    written = [line.split(",")[1] for line in (tmp_path / "roc.csv").read_text().splitlines()[1:]]
    assert max(len(text.replace(".", "").lstrip("0")) for text in written) <= 4  # 4 significant digits at most


def curve_tables(tmp_path, labels, scores):
    from transfer.tasks.classification import score_curves

    curves = score_curves(labels, np.stack([1 - scores, scores], axis=1))
    tables = []
    for name in ("roc", "precision_recall"):
        write_csv(tmp_path / f"{name}.csv", pd.DataFrame(curves[name]))
        tables.append((tmp_path / f"{name}.csv").read_text().splitlines())
    return tables, curves["roc_auc"]


def test_curve_tables_do_not_move_when_scores_move_in_their_last_digits(tmp_path):
    """Another CPU's scores differ in float noise, which breaks ties between equal scores. A table of points at every
    distinct score, thinned by position, then shifts nearly all its rows (196 of 201 here); at a fixed grid of
    thresholds a score moves a point only where it crosses one: a row or two at most."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, 1000)
        scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.001, 0.999).astype(np.float32).round(3)  # ties
        noisy = scores + rng.uniform(-1e-6, 1e-6, scores.shape).astype(np.float32)  # a CPU's last digits
        (roc, pr), auc = curve_tables(tmp_path, labels, scores)
        (noisy_roc, noisy_pr), noisy_auc = curve_tables(tmp_path, labels, noisy)
        for table, moved in ((roc, noisy_roc), (pr, noisy_pr)):
            assert 50 < len(table) <= 201 and abs(len(table) - len(moved)) <= 1
            assert len(set(table) ^ set(moved)) <= 4, "at most two rows differ"
        assert auc == pytest.approx(noisy_auc, abs=1e-4)


def test_curves_resolve_scores_in_a_narrow_band(tmp_path):
    """A barely trained model scores every text near 0.5: the grid follows the scores' range, so the points still
    trace the AUC."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = (0.5 + 0.004 * rng.normal(labels, 1.0)).astype(np.float32)
    (roc, _), auc = curve_tables(tmp_path, labels, scores)
    points = pd.read_csv(io.StringIO("\n".join(roc)))
    area = float((points["fpr"].diff().fillna(0) * (points["tpr"] + points["tpr"].shift().fillna(0)) / 2).sum())
    assert len(points) > 50 and area == pytest.approx(auc, abs=0.01)


def test_rounding_keeps_any_sorted_column_sorted():
    values = np.sort(np.concatenate([np.random.default_rng(1).uniform(-3, 3, 20000),
                                     np.geomspace(1e-9, 1, 2000), [1e-3, 0.99999, 0.999949, 1.0, 1.00004]]))
    rounded = [stable_float(value) for value in values]
    assert all(a <= b for a, b in zip(rounded, rounded[1:]))


class FakeLive:
    def __init__(self):
        self.step, self.logged = None, []

    def log_metric(self, name, value):
        self.logged.append((self.step, name, value))


def test_the_curves_callback_logs_rounded_floats_and_ints_as_they_are():
    from transfer.training.tracking import LiveCurves

    callback = LiveCurves("unused")
    callback.live = FakeLive()
    logs = {"loss": 0.69312345678, "grad_norm": 7.496028423309326, "learning_rate": 8.933333333333334e-05,
            "eval_loss": 0.39341315627098083, "eval_macro_f1": 0.8536340852130326, "unfrozen_layers": 4,
            "epoch": 0.5, "train_runtime": 12.3456789}
    callback.on_log(None, SimpleNamespace(global_step=25), None, logs=logs)
    assert callback.live.logged == [(25, "train/loss", 0.6931), (25, "train/grad_norm", 7.496),
                                    (25, "train/learning_rate", 8.933e-05), (25, "eval/loss", 0.3934),
                                    (25, "eval/macro_f1", 0.8536), (25, "train/unfrozen_layers", 4)]
    assert type(callback.live.logged[-1][2]) is int


def test_the_curve_files_dvclive_writes_hold_the_rounded_values(tmp_path):
    from transfer.training.tracking import LiveCurves

    callback = LiveCurves(tmp_path / "curves")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    callback.on_train_begin(None, state, None)
    for step, loss, norm, rate in [(1, 0.6950123456, 0.4473104774951935, 0.0),
                                   (25, 0.6906987654, 0.5264703035354614, 9.6e-05),
                                   (50, 0.6318000001, 7.496028423309326, 8.933333333333334e-05)]:
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": loss, "grad_norm": norm, "learning_rate": rate})
    state.global_step = 50
    callback.on_log(None, state, None, logs={"eval_loss": 0.39341315627098083, "eval_accuracy": 0.854})
    callback.on_train_end(None, state, None)
    metrics = tmp_path / "curves/plots/metrics"
    assert (metrics / "train/loss.tsv").read_text().splitlines() == ["step\tloss", "1\t0.695", "25\t0.6907",
                                                                      "50\t0.6318"]
    assert (metrics / "train/grad_norm.tsv").read_text().splitlines() == [
        "step\tgrad_norm", "1\t0.4473", "25\t0.5265", "50\t7.496"]
    assert (metrics / "train/learning_rate.tsv").read_text().splitlines() == [
        "step\tlearning_rate", "1\t0.0", "25\t9.6e-05", "50\t8.933e-05"]
    assert (metrics / "eval/loss.tsv").read_text().splitlines() == ["step\tloss", "50\t0.3934"]
    summary = json.loads((tmp_path / "curves/metrics.json").read_text())
    assert summary["train"]["grad_norm"] == 7.496 and summary["eval"]["loss"] == 0.3934
