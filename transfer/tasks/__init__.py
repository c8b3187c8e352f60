"""Tasks: what the pipeline learns. classification runs through the stages prepare ... export; each other task has
its own stages (lm_* for causal-lm, tc_* for token-classification) and params section, and does its work only
while the top-level `task` param names it. Otherwise its stages write placeholders in a moment (run_stage), so
switching task leaves the other tasks' results in place, and DVC's run cache brings them back."""
import sys

TASKS = ("classification", "causal-lm", "token-classification")


def write_unused(task, folders=(), files=()):
    """What a stage of `task` writes while params.yaml has another task: a README in each output folder,
    {"task": ..., "ran": false} in each metrics file. The same whichever task is on, so switching between two
    other tasks changes none of these files."""
    from transfer.outputs import replaced_together, write_json

    with replaced_together(*folders, *files) as temporaries:
        for folder in temporaries[:len(folders)]:
            folder.mkdir()
            (folder / "README.md").write_text(f"# Not used\n\nA stage of task {task} writes this folder while "
                                              f"params.yaml has task: {task} (`dvc exp run -S task={task}`).\n")
        for file in temporaries[len(folders):]:
            write_json(file, {"task": task, "ran": False})


def run_stage(task, main, folders=(), files=(), launched=False):
    """The entry point of a stage of `task`. With another task it writes its placeholders in a moment, before torch
    or transformers load; with this one it runs `main` as the other stages run (`launched`: under the launcher, for
    the training stages)."""
    from transfer.config import load_params, run_stage as checked_run
    from transfer.schema import UserError

    try:
        params = load_params()
    except UserError as error:
        sys.exit(f"error: {error}")
    if params["task"] != task:
        write_unused(task, folders, files)
        return
    if launched:
        from transfer.training import launcher

        launcher.run_stage(main)
    else:
        checked_run(main)


def resolve_model(name, key):
    """`name` (a task's model param, `key`) as from_pretrained takes it, the way modeling.resolve_model finds
    model.name (the bundled default aside: each task resolves its own), a local folder with safetensors weights
    only; its messages name `key`."""
    from transfer import modeling
    from transfer.schema import UserError

    try:
        source = modeling.resolve_model(name)
        modeling.require_safetensors(source, key)
        return source
    except UserError as error:
        raise UserError(str(error).replace("model.name", key)) from None


def injected_config(model, cfg, task_type, section):
    """peft's config for cfg["strategy"] lora or ia3 on `model`, from a task's section (`section`): target_modules
    and, for lora, lora_r, lora_alpha, lora_dropout; IA3's feed-forward modules are those of its targets."""
    from peft import IA3Config, LoraConfig

    from transfer.strategies import _injection

    strategy = cfg["strategy"]
    targets = _injection.target_modules(model, cfg["target_modules"], _injection.auto_targets(strategy), section)
    if strategy == "lora":
        return LoraConfig(task_type=task_type, r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"],
                          lora_dropout=cfg["lora_dropout"], target_modules=targets)
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as feedforward

    return IA3Config(task_type=task_type, target_modules=targets,
                     feedforward_modules=[n for n in feedforward.get(model.config.model_type, []) if n in targets])
