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
