"""README.md's strategy tables are the benchmark's results as bench/strategies.py writes them, not hand-copied."""
import json
from pathlib import Path

import pytest

from bench import strategies

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["strategies", "low_resource"])
def test_the_readme_table_is_the_one_its_results_give(name):
    readme = (ROOT / "README.md").read_text()
    results = json.loads((ROOT / "bench/results" / f"{name}.json").read_text())["results"]
    assert strategies.readme_table(readme, name) is not None, f"README.md lost the markers of {name}'s table"
    assert strategies.readme_table(readme, name) == strategies.table(results), (
        f"README.md's {name} table differs from bench/results/{name}.json: "
        f"python bench/strategies.py --name {name} --readme")


def test_a_rewrite_replaces_only_the_table_between_the_markers():
    start, end = strategies.readme_markers("quick")
    results = [{"strategy": strategies.FULL, "train_rows": 10, "trainable_params": 5, "trainable_fraction": 1.0,
                "train_seconds": 3.0, "test_macro_f1": 0.5, "test_macro_f1_ci95": [0.4, 0.6],
                "runs": [{"test_macro_f1": 0.45}, {"test_macro_f1": 0.55}]}]
    text = f"before\n{start}\n| old |\n{end}\nafter\n"
    rewritten = strategies.with_readme_table(text, "quick", results)
    assert rewritten.startswith(f"before\n{start}\n| strategy |") and rewritten.endswith(f"\n{end}\nafter\n")
    assert "| old |" not in rewritten and "0.5000 ± 0.1000 (n=2)" in rewritten
    with pytest.raises(SystemExit, match="no table for other"):
        strategies.with_readme_table(text, "other", results)
