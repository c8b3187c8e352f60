"""The compress stage on the default data, distillation and pruning both on, beside the full fine-tune's int8.

    python bench/compression.py                       # params.yaml's compress section, both turned on
    python bench/compression.py --students 3,4        # two students (the first run prunes too)
    python bench/compression.py --epochs 3 --sparsity 0.7

Needs data/prepared and models/finetuned (`dvc repro finetune`). Runs stages/compress.py's main in a scratch
folder that links those two in, so the workspace's outputs stay as they are; every figure comes from that one run
(the teacher measured in it too). Writes bench/results/compression.json and bench/compression.md.
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inference import cpu  # noqa: E402
from stages import compress  # noqa: E402
from transfer.config import load_params  # noqa: E402
from transfer.data import dataset  # noqa: E402


def rows(runs):
    """(label, figures, timing, the same run's teacher timing): the fine-tune once, then each compressed model."""
    first = runs[0]
    found = [("full fine-tune", first["metrics"]["teacher"], first["timing"]["teacher"], first["timing"]["teacher"])]
    for run in runs:
        for name in run["metrics"]["variants"]:
            cfg = run["compress"]
            label = (f"distilled, {cfg['student_layers']} of 6 layers, {cfg['epochs']} epochs" if name == "distilled"
                     else f"pruned, {cfg['sparsity']:.0%}, {cfg['prune_epochs']} epoch on")
            found.append((label, run["metrics"][name], run["timing"][name], run["timing"]["teacher"]))
    return found


def table(runs):
    lines = ["| model | params | zero share | test macro-F1: PyTorch / ONNX int8 | ONNX int8 MB (zipped) | "
             "int8 ms at batch 1 / 32 | batch 32 vs fine-tune int8 | vs fine-tune PyTorch fp32 | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, figures, ms, teacher in rows(runs):
        int8_ms = ms["batch32"]["onnx_int8"]
        lines.append(f"| {label} | {figures['total_params']:,} | {figures['zero_share']:.0%} | "
                     f"{figures['test_macro_f1']['pytorch_fp32']:.4f} / {figures['test_macro_f1']['onnx_int8']:.4f} | "
                     f"{figures['size_mb']['onnx_int8']:.1f} ({figures['zipped_mb']['onnx_int8']:.1f}) | "
                     f"{ms['batch1']['onnx_int8']:.1f} / {int8_ms:.0f} | "
                     f"{teacher['batch32']['onnx_int8'] / int8_ms:.2f}x | "
                     f"{teacher['batch32']['pytorch_fp32'] / int8_ms:.2f}x | {ms.get('train_seconds', '-')} |")
    return "\n".join(lines)


def compress_in_scratch(params):
    """stages/compress.py's main in a scratch folder linking the workspace's inputs; its metrics and timing."""
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as scratch:
        for inputs in ("data/prepared", "models/finetuned"):
            (Path(scratch) / inputs).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(ROOT / inputs, Path(scratch) / inputs)
        with contextlib.chdir(scratch):
            compress.main(params)
            return [json.loads(Path(f"metrics/{name}.json").read_text()) for name in ("compress", "timing/compress")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", default=None, help="comma-separated student depths (default: params.yaml's)")
    parser.add_argument("--epochs", type=int, default=None, help="the students' epochs (default: params.yaml's)")
    parser.add_argument("--sparsity", type=float, default=None)
    args = parser.parse_args()
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    cfg = params["compress"]
    cfg.update(epochs=args.epochs or cfg["epochs"], sparsity=args.sparsity or cfg["sparsity"])
    depths = [int(k) for k in args.students.split(",")] if args.students else [cfg["student_layers"]]
    command = f"python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".strip()
    runs = []
    for depth in depths:  # the first run prunes too; each measures the fine-tune again beside its own models
        run_cfg = {**cfg, "distill": True, "student_layers": depth, "prune": depth == depths[0]}
        result, timing = compress_in_scratch({**params, "compress": run_cfg})
        runs.append({"compress": run_cfg, "metrics": result, "timing": timing})
    machine = cpu()
    (ROOT / "bench/results/compression.json").write_text(json.dumps(
        {"command": command, "cpu": machine, "runs": runs}, indent=2) + "\n")
    test_rows = len(dataset.load_prepared(ROOT / "data/prepared")[0]["test"])
    (ROOT / "bench/compression.md").write_text(
        f"# Compression: distilled students and a pruned fine-tune beside the fine-tune's int8\n\n"
        f"Measured by `{command}` on {machine['name']} ({machine['threads']} threads, AVX-512 VNNI: "
        f"{machine['avx512_vnni']}), all-MiniLM-L6-v2 fine-tuned on 2,000 IMDB reviews (the default run's "
        f"models/finetuned), test split of {test_rows:,} reviews. Each student keeps evenly spaced layers up to the "
        f"top one; the pruned model loses the smallest of the encoder's linear weights; all train on the "
        f"fine-tune's soft labels (temperature {cfg['temperature']}, alpha {cfg['alpha']}, learning rate "
        f"{cfg['learning_rate']}). Latency: ONNX Runtime, 128 tokens, mean of params export.latency_runs; each "
        f"ratio against the fine-tune measured in the same compress run.\n\n{table(runs)}\n")
    print(table(runs))


if __name__ == "__main__":
    main()
