"""Runs over several seeds, summarised: the mean with its 95% confidence interval, and whether two sets of runs
differ by more than their seed-to-seed spread (Welch's t-test), so a strategy table says which gaps are real."""
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SIGNIFICANT = 0.05  # p below this: the difference is called significant


def mean_interval(values, confidence=CONFIDENCE):
    """(mean, low, high): Student's t interval of the mean; low = high = None for fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def difference_p(first, second):
    """Welch's two-sided p-value that the two sets of runs share a mean; None where either has fewer than 2 runs.
    Two sets without any spread are equal (p 1) or differ for sure (p 0)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if len(first) < 2 or len(second) < 2:
        return None
    if first.std() == 0 and second.std() == 0:
        return 1.0 if first.mean() == second.mean() else 0.0
    return float(stats.ttest_ind(first, second, equal_var=False).pvalue)


def summary(values, reference=None):
    """A metric over seeds: mean, interval, the values; with `reference` (the values of the model compared
    against), the difference of the means, its p-value and whether it is significant."""
    mean, low, high = mean_interval(values)
    result = {"mean": mean, "ci95": None if low is None else [low, high], "values": list(map(float, values))}
    if reference is not None:
        p = difference_p(values, reference)
        result.update(difference=mean - float(np.mean(reference)), p_value=p,
                      significant=None if p is None else p < SIGNIFICANT)
    return result


def shown(metric, digits=4):
    """'0.8800 ± 0.0050 (n=3)' or '0.8800 (n=1)': the mean and the interval's half-width, as a table shows it."""
    n = len(metric["values"])
    if metric["ci95"] is None:
        return f"{metric['mean']:.{digits}f} (n={n})"
    half = (metric["ci95"][1] - metric["ci95"][0]) / 2
    return f"{metric['mean']:.{digits}f} ± {half:.{digits}f} (n={n})"
