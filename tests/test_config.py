import pytest
import yaml

from transfer import strategies
from transfer.config import load_params, validate
from transfer.schema import UserError
from tests.conftest import ROOT, default_params


def write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_default_params_are_valid():
    params = validate(default_params())
    assert params["strategy"] == "lora"
    assert isinstance(params["finetune"]["learning_rate"], float)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    params = default_params()
    params["finetune"]["learnig_rate"] = 1e-4
    with pytest.raises(UserError, match=r"unknown key 'finetune.learnig_rate'.*Did you mean 'learning_rate'"):
        load_params(write(tmp_path, params))


def test_misspelt_strategy_lists_the_allowed_ones():
    params = default_params()
    params["strategy"] = "lorra"
    listed = "adapter, adapter_stack, frozen, gradual, ia3, llrd, lora, partial, prefix, prompt, scratch"
    with pytest.raises(UserError, match=rf"'strategy' is 'lorra'; it must be one of: {listed}\. Did you mean 'lora'\?"):
        validate(params)


def test_negative_learning_rate_is_refused():
    params = default_params()
    params["finetune"]["learning_rate"] = -1e-5
    with pytest.raises(UserError, match=r"'finetune.learning_rate' is -1e-05; it must be a number > 0.0"):
        validate(params)


def test_wrong_type_is_refused():
    params = default_params()
    params["peft"]["epochs"] = "three"
    with pytest.raises(UserError, match=r"'peft.epochs' is 'three'; it must be an integer >= 1"):
        validate(params)
    params = default_params()
    params["pretrain"]["enabled"] = 1
    with pytest.raises(UserError, match=r"'pretrain.enabled' is 1; it must be true or false"):
        validate(params)


def test_missing_key_is_named():
    params = default_params()
    del params["lora"]["r"]
    with pytest.raises(UserError, match=r"missing key 'lora.r'"):
        validate(params)


def test_missing_data_file_is_named(tmp_path):
    params = default_params()
    params["data"]["source"] = str(tmp_path / "nope.csv")
    with pytest.raises(UserError, match=r"'data.source' file .*nope.csv' does not exist"):
        validate(params)


def test_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    params = default_params()
    params["finetune"]["learning_rate"] = 7.0e-5
    path.write_text(yaml.safe_dump(params).replace("learning_rate: 7.0e-05", "learning_rate: 7e-5"))
    assert "7e-5" in path.read_text()
    assert load_params(path)["finetune"]["learning_rate"] == 7e-5


def test_config_module_refuses_bad_params_with_one_line(tmp_path, monkeypatch):
    import subprocess
    import sys

    from tests.conftest import ROOT

    params = default_params()
    params["strategy"] = "nope"
    write(tmp_path, params)
    result = subprocess.run([sys.executable, "-m", "transfer.config"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 1
    assert result.stderr.startswith("error: params.yaml: 'strategy' is 'nope'")
    assert "Traceback" not in result.stderr


def test_a_key_from_another_strategys_section_is_refused():
    params = default_params()
    params["prompt"]["reduction_factor"] = 16
    with pytest.raises(UserError, match=r"unknown key 'prompt.reduction_factor'.*Allowed here: learning_rate, "
                                        r"num_virtual_tokens, init_text"):
        validate(params)


def test_every_strategy_has_its_section_with_a_learning_rate():
    params = default_params()
    for strategy in strategies.NAMES:
        assert "learning_rate" in params[strategy], strategy
        validate({**params, "strategy": strategy})


BITFIT = '''"""BitFit: only the biases (and the head) train."""
from transfer.schema import LEARNING_RATE
from transfer.strategies import Plan

PARAMS = {"learning_rate": LEARNING_RATE}


def build(model, params, **_):
    from transfer.strategies._layerwise import head_parameters

    head = {id(p) for p in head_parameters(model)}
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.endswith(".bias") or id(parameter) in head
    return Plan(model)
'''

USE_IT = '''
import transformers
from transfer import strategies
from transfer.config import load_params, validate
from transfer.schema import UserError

assert "bitfit" in strategies.NAMES
params = load_params()
config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, num_labels=2)
plan = strategies.prepare("bitfit", transformers.BertForSequenceClassification(config), params)
trained = {name for name, p in plan.model.named_parameters() if p.requires_grad}
assert trained and all(name.endswith(".bias") or name.startswith("classifier.") for name in trained), trained
del params["bitfit"]
try:
    validate(params)
except UserError as error:
    print(error)
'''


def test_a_new_strategy_is_a_file_plus_its_params_section(tmp_path):
    """Drop a module into transfer/strategies and a section into params.yaml: params accept it, peft's prepare
    applies it, and without its section params.yaml is refused."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    shutil.copytree(ROOT / "transfer", tmp_path / "transfer", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "transfer/strategies/bitfit.py").write_text(BITFIT)
    write(tmp_path, {**default_params(), "strategy": "bitfit", "bitfit": {"learning_rate": 1e-3}})
    result = subprocess.run([sys.executable, "-c", USE_IT], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "params.yaml: missing key 'bitfit'. Add it (see README.md for its meaning)."


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_each_example_params_file_turns_into_dvc_settings_that_validate(example):
    """examples/<task>.yaml, as README.md runs it: `dvc exp run $(python -m transfer.config --settings ...)`."""
    from transfer import tasks
    from transfer.config import settings

    params = default_params()
    words = settings(ROOT / "examples" / example, params)
    assert words[0::2] == ["-S"] * (len(words) // 2)
    changed = dict(word.split("=", 1) for word in words[1::2])
    assert changed["task"] in tasks.TASKS and example == f"{changed['task']}.yaml"
    for key, text in changed.items():  # DVC reads each value as YAML: it lands as the example's value
        *path, leaf = key.split(".")
        expected = yaml.safe_load((ROOT / "examples" / example).read_text())
        for part in [*path, leaf]:
            expected = expected[part]
        assert yaml.safe_load(text) == expected


def test_an_example_with_a_misspelt_key_or_a_spaced_value_is_refused(tmp_path):
    from transfer.config import settings

    (tmp_path / "bad.yaml").write_text("task: causal-lm\ncausal_lm:\n  strategi: lora\n")
    with pytest.raises(UserError, match="unknown key 'causal_lm.strategi'. Did you mean 'strategy'"):
        settings(tmp_path / "bad.yaml", default_params())
    (tmp_path / "spaced.yaml").write_text("causal_lm:\n  source: my notes.txt\n")
    with pytest.raises(UserError, match="holds white space"):
        settings(tmp_path / "spaced.yaml", default_params())


def test_attention_dropout_must_be_below_one_or_null():
    params = default_params()
    params["train"]["attention_dropout"] = 1.0
    with pytest.raises(UserError, match=r"'train.attention_dropout' is 1.0; it must be a number >= 0 and < 1, "
                                        r"or null for the model's own"):
        validate(params)
    for fine in (None, 0, 0.25):
        params["train"]["attention_dropout"] = fine
        validate(params)
