"""bench.finetune's runs over several seeds: the timing of the median run, the quality of all of them."""
from bench.finetune import over_seeds


def run(seconds, f1):
    return {"seconds": seconds, "samples_per_second": round(100 / seconds, 2), "val_macro_f1": f1}


def test_several_seeds_keep_the_median_runs_timing_and_the_mean_f1():
    merged = over_seeds([run(30.0, 0.70), run(10.0, 0.80), run(20.0, 0.75)])
    assert merged["seconds"] == 20.0 and merged["samples_per_second"] == 5.0  # the median, not a slow outlier
    assert merged["val_macro_f1"] == 0.75 and merged["val_macro_f1_by_seed"] == [0.70, 0.80, 0.75]
    assert merged["seconds_by_seed"] == [30.0, 10.0, 20.0]


def test_one_seed_is_that_run():
    merged = over_seeds([run(12.5, 0.7387)])
    assert merged["seconds"] == 12.5 and merged["val_macro_f1"] == 0.7387 and merged["val_macro_f1_by_seed"] == [0.7387]
