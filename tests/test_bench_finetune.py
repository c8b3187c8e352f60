"""bench.finetune's runs over several seeds: the timing of the median run, the quality of all of them."""
from bench.finetune import f1_against_others, over_seeds


def run(seconds, f1, test_f1=0.5):
    return {"seconds": seconds, "samples_per_second": round(100 / seconds, 2), "val_macro_f1": f1,
            "test_macro_f1": test_f1}


def test_several_seeds_keep_the_median_runs_timing_and_the_mean_f1():
    merged = over_seeds([run(30.0, 0.70, 0.60), run(10.0, 0.80, 0.90), run(20.0, 0.75, 0.72)])
    assert merged["seconds"] == 20.0 and merged["samples_per_second"] == 5.0  # the median, not a slow outlier
    assert merged["val_macro_f1"] == 0.75 and merged["val_macro_f1_by_seed"] == [0.70, 0.80, 0.75]
    assert merged["test_macro_f1"] == 0.74 and merged["test_macro_f1_by_seed"] == [0.60, 0.90, 0.72]
    assert merged["seconds_by_seed"] == [30.0, 10.0, 20.0]


def test_one_seed_is_that_run():
    merged = over_seeds([run(12.5, 0.7387, 0.8123)])
    assert merged["seconds"] == 12.5 and merged["val_macro_f1"] == 0.7387 and merged["val_macro_f1_by_seed"] == [0.7387]
    assert merged["test_macro_f1"] == 0.8123


def test_the_pipelines_f1_is_compared_seed_by_seed_on_the_split_asked_for():
    runs = {"pipeline": over_seeds([run(1.0, 0.70, 0.81), run(1.0, 0.80, 0.79)]),
            "naive": over_seeds([run(2.0, 0.75, 0.80), run(2.0, 0.78, 0.80)]),
            "trainer": over_seeds([run(2.0, 0.60, 0.70), run(2.0, 0.60, 0.70)])}
    val, test = f1_against_others(runs, "val_macro_f1", ""), f1_against_others(runs, "test_macro_f1", "test_")
    assert val == {"f1_vs_naive": -0.015, "f1_vs_trainer": 0.15, "pipeline_f1_at_least_naive_seeds": 1}
    assert test == {"test_f1_vs_naive": 0.0, "test_f1_vs_trainer": 0.1, "pipeline_test_f1_at_least_naive_seeds": 1}


def test_the_step_clock_counts_training_steps_alone():
    """Forward, backward and the update count; what runs between steps (data loading) and evaluation do not."""
    import time

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from bench.throughput import FlopCounter, StepClock

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2))
    counter, clock = FlopCounter(model), StepClock(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {"input_ids": torch.randint(0, 100, (4, 16)), "labels": torch.tensor([0, 1, 0, 1])}
    started = time.perf_counter()
    for _ in range(3):
        time.sleep(0.2)  # loading the next batch
        model.train()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model(**batch)  # an evaluation pass
        time.sleep(0.2)  # ... and a checkpoint
    seconds = time.perf_counter() - started
    report = clock.report(counter, seconds)
    assert report["steps"] == 3 and 0 < clock.seconds < seconds - 1.2
    assert report["step_share"] == round(clock.seconds / seconds, 3) < 0.5
    assert report["useful_gflops_in_steps"] == round(counter.useful / clock.seconds / 1e9, 1)
    assert counter.useful > 0
    optimizer.step()  # the clock's optimizer hook is gone after the report
    assert clock.steps == 3
