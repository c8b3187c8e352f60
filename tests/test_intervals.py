"""Strategy comparisons over seeds: the 95% interval of the mean and the significance of a difference."""
import numpy as np
import pytest
from scipy import stats

from transfer.evaluation import intervals


def test_the_interval_is_students_t_interval_of_the_mean():
    mean, low, high = intervals.mean_interval([0.80, 0.82, 0.87])
    expected = stats.t.interval(0.95, 2, loc=np.mean([0.80, 0.82, 0.87]), scale=stats.sem([0.80, 0.82, 0.87]))
    assert mean == pytest.approx(0.83)
    assert (low, high) == pytest.approx(expected)
    assert intervals.mean_interval([0.9]) == (0.9, None, None), "one run has no interval"


def test_the_interval_holds_the_true_mean_about_95_times_in_100():
    rng = np.random.default_rng(0)
    held = [low <= 0.85 <= high
            for low, high in (intervals.mean_interval(rng.normal(0.85, 0.01, size=3))[1:] for _ in range(4000))]
    assert 0.93 < np.mean(held) < 0.97


def test_a_difference_is_significant_only_beyond_the_seed_to_seed_spread():
    full = [0.880, 0.884, 0.878]
    assert intervals.difference_p(full, [0.850, 0.853, 0.848]) < intervals.SIGNIFICANT
    assert intervals.difference_p(full, [0.870, 0.890, 0.875]) > intervals.SIGNIFICANT
    assert intervals.difference_p(full, [0.86]) is None, "one run cannot be tested"
    assert intervals.difference_p([0.5, 0.5], [0.5, 0.5]) == 1.0, "two constant sets: equal"
    assert intervals.difference_p([0.5, 0.5], [0.6, 0.6]) == 0.0, "two constant sets: different"


def test_the_summary_reads_as_the_strategy_table_shows_it():
    row = intervals.summary([0.850, 0.853, 0.848], reference=[0.880, 0.884, 0.878])
    assert row["difference"] == pytest.approx(-0.0303, abs=1e-4) and row["significant"] is True
    assert row["values"] == [0.850, 0.853, 0.848]
    assert intervals.shown(row) == f"0.8503 ± {(row['ci95'][1] - row['ci95'][0]) / 2:.4f} (n=3)"
    assert intervals.shown(intervals.summary([0.8])) == "0.8000 (n=1)"


def exp_show(runs):
    """`dvc exp show --json` as DVC 3.67 writes it: the workspace, the baseline commit and its experiments."""
    def entry(name, strategy, seed, peft_f1, full_f1):
        metrics = {"metrics/evaluate.json": {"peft": {"macro_f1": peft_f1}, "finetune": {"macro_f1": full_f1}},
                   "metrics/peft.json": {"trainable_fraction": 0.01 if strategy != "frozen" else 0.0001},
                   "metrics/timing/peft.json": {"train_seconds": 10.0, "peft_train_seconds": 10.0},
                   "metrics/timing/finetune.json": {"train_seconds": 20.0}}
        params = {"seed": 42, "strategy": strategy, "train": {"seed": seed}}
        return {"rev": name, "name": name, "error": None, "experiments": None,
                "data": {"params": {"params.yaml": {"data": params}},
                         "metrics": {path: {"data": value} for path, value in metrics.items()}}}
    experiments = [entry(*run) for run in runs]
    return [{**experiments[0], "rev": "workspace", "name": None},
            {**entry("main", "lora", None, 0.86, 0.88),
             "experiments": [{"revs": [e], "name": e["name"], "executor": None} for e in experiments]}]


def test_compare_reads_dvcs_experiments_as_one_row_per_strategy_over_its_seeds():
    from stages import compare

    shown = exp_show([("e1", "lora", 1, 0.850, 0.880), ("e2", "lora", 2, 0.853, 0.884),
                      ("e3", "lora", 3, 0.848, 0.878), ("e4", "frozen", 1, 0.700, 0.880),
                      ("e0", "lora", 1, 0.999, 0.999)])  # an older run of lora with seed 1: the newest counts
    found = compare.experiments(shown)
    assert [name for name, _, _ in found] == ["e1", "e2", "e3", "e4", "e0", "main"], "workspace left out"
    rows = {row["strategy"]: row for row in compare.compare(compare.runs(found))}
    assert rows["lora"]["seeds"] == [1, 2, 3, 42], "main ran lora with train.seed null: the top-level seed"
    assert rows["lora"]["test_macro_f1"]["values"] == [0.850, 0.853, 0.848, 0.86]
    assert rows["lora"]["test_macro_f1"]["significant"] is True, "3 points below the full fine-tune, seeds agree"
    assert rows[compare.FULL]["test_macro_f1"]["values"] == [0.880, 0.884, 0.878, 0.88]
    assert rows["frozen"]["test_macro_f1"]["p_value"] is None, "one seed cannot be tested"
    table = compare.markdown(compare.compare(compare.runs(found)))
    assert table.splitlines()[2].startswith("| full fine-tune |")
    assert "| frozen | 1 | 0.7000 (n=1) | -0.1805 | needs 2+ seeds each | 0.01% | 10 |" in table
