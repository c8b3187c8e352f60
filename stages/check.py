"""Stage 0: check all of params.yaml and that the model and the strategy fit each other, before any stage runs.

`dvc repro` deletes a stage's outputs before it runs the stage, so a params mistake found inside `peft` would
already have cost the previous `models/peft`. This stage runs first (it reads every param), fails with the
project's own message ("... Did you mean 'lora'?"), and writes nothing on failure: its one output is `persist`ed.

With task: causal-lm it also checks causal_lm.model is a decoder-only model, with token-classification that
token_classification.model takes a tagging head; each task's strategy is checked against the ones that fit it.

On success it writes metrics/strategy.json: the chosen strategy and its params section. `peft` and `export`
depend on that file instead of on `${strategy}` in dvc.yaml, which DVC would resolve itself, with its own error
for a misspelt name, and only the chosen strategy's section re-runs them.
"""
from pathlib import Path

from transfer import strategies
from transfer.config import run_stage
from transfer.export import compression
from transfer.outputs import write_json
from transfer.schema import UserError
from transfer.tasks import causal_lm, token_classification

CHOSEN = Path("metrics/strategy.json")


def main(params):
    try:
        config = strategies.preflight(params)  # the model loads (config and tokenizer) and the strategy fits it
    except UserError as error:
        if "masked-LM head" not in str(error):
            raise
        raise UserError(f"{error} To adapt a decoder-only model (GPT-2, Llama, SmolLM2, ...) to your text, use "
                        "task: causal-lm with causal_lm.model.") from None
    if params["compress"]["distill"]:  # the student must be shallower than the model
        compression.kept_layers(config.num_hidden_layers, params["compress"]["student_layers"])
    causal_lm.check_strategy(params["causal_lm"]["strategy"])
    if causal_lm.selected(params):  # a decoder-only model, before lm_prepare deletes anything
        causal_lm.check_model(params["causal_lm"]["model"], params["model"]["trust_remote_code"])
    token_classification.check_strategy(params["token_classification"]["strategy"])
    if token_classification.selected(params):  # an encoder that takes a tagging head, with a fast tokenizer
        token_classification.check_model(params["token_classification"]["model"], params["model"]["trust_remote_code"])
    strategy = params["strategy"]
    write_json(CHOSEN, {"strategy": strategy, strategy: params[strategy]}, exact=True)  # any change re-runs peft
    print(f"check: params.yaml ok; strategy {strategy} fits model.name {params['model']['name']!r}"
          + (f"; task {params['task']}" if params["task"] != "classification" else ""))


if __name__ == "__main__":
    run_stage(main)
