"""The library the stages call, a folder per concept: data, tasks, training, strategies, evaluation, baselines, export.

`stages/` holds the thin entry points `dvc.yaml` runs; they read params, call these modules and write outputs.
"""
