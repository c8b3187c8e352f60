"""The kinds of value a params key can hold, each with the words that say what it must be, and UserError.

A spec is (python types, check or None, what is allowed, in words); transfer/config.py validates params.yaml
against them, and each strategy's module declares its own section (PARAMS) with the same specs.
"""


class UserError(ValueError):
    """A problem with the user's params, data or model, worded for them: what is wrong, where, and how to fix it."""


def number(kind, low=None, high=None, low_open=False):
    def check(value):
        if low is not None and (value <= low if low_open else value < low):
            return False
        return high is None or value <= high

    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    return (kind, check, f"{'an integer' if kind is int else 'a number'} {' and '.join(bounds)}".strip())


def choice(*options):
    return (str, lambda v: v in options, "one of: " + ", ".join(options))


POSITIVE_INT = number(int, 1)
COUNT = number(int, 0)
OPTIONAL_CAP = ((int, type(None)), lambda v: v is None or v >= 1, "an integer >= 1, or null for no cap")
OPTIONAL_SEED = ((int, type(None)), lambda v: v is None or v >= 0, "an integer >= 0, or null for the top-level seed")
FRACTION = number(float, 0.0, 1.0)
LEARNING_RATE = number(float, 0.0, 1.0, low_open=True)
DECAY = number(float, 0.0, 1.0, low_open=True)
BOOL = (bool, None, "true or false")
TEXT = (str, lambda v: bool(v.strip()), "a non-empty string")
ANY_TEXT = (str, None, "a string")
NGRAM_RANGE = (list, lambda v: len(v) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
               and 1 <= v[0] <= v[1] <= 10, "a list of two integers [smallest, largest] with 1 <= smallest <= largest <= 10")
MODULE_NAMES = ((str, list), lambda v: v == "auto" if isinstance(v, str) else bool(v),
                "'auto' or a non-empty list of module names")
