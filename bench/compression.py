"""The compress stage on the default data, distillation and pruning both on, beside the full fine-tune's int8.

    python bench/compression.py                                 # params.yaml's compress section, both turned on
    python bench/compression.py --student-layers 2 --sparsity 0.7

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


def table(result, timing):
    teacher = timing["teacher"]["batch32"]
    lines = ["| model | params | zero share | test macro-F1: PyTorch / ONNX int8 | ONNX int8 MB (zipped) | "
             "int8 ms at batch 1 / 32 | batch 32 vs fine-tune int8 | vs fine-tune PyTorch fp32 | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ["teacher", *result["variants"]]:
        figures, ms = result[name], timing[name]
        seconds = ms.get("train_seconds", "-")
        lines.append(f"| {'full fine-tune' if name == 'teacher' else name} | {figures['total_params']:,} | "
                     f"{figures['zero_share']:.0%} | {figures['test_macro_f1']['pytorch_fp32']:.4f} / "
                     f"{figures['test_macro_f1']['onnx_int8']:.4f} | {figures['size_mb']['onnx_int8']:.1f} "
                     f"({figures['zipped_mb']['onnx_int8']:.1f}) | {ms['batch1']['onnx_int8']:.1f} / "
                     f"{ms['batch32']['onnx_int8']:.0f} | {teacher['onnx_int8'] / ms['batch32']['onnx_int8']:.2f}x | "
                     f"{teacher['pytorch_fp32'] / ms['batch32']['onnx_int8']:.2f}x | {seconds} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student-layers", type=int, default=None)
    parser.add_argument("--sparsity", type=float, default=None)
    args = parser.parse_args()
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["compress"].update(distill=True, prune=True)
    if args.student_layers:
        params["compress"]["student_layers"] = args.student_layers
    if args.sparsity:
        params["compress"]["sparsity"] = args.sparsity
    command = f"python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".strip()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as scratch:
        for inputs in ("data/prepared", "models/finetuned"):
            (Path(scratch) / inputs).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(ROOT / inputs, Path(scratch) / inputs)
        with contextlib.chdir(scratch):
            compress.main(params)
            result, timing = (json.loads(Path(f"metrics/{name}.json").read_text())
                              for name in ("compress", "timing/compress"))
    machine = cpu()
    (ROOT / "bench/results/compression.json").write_text(json.dumps(
        {"command": command, "cpu": machine, "compress": params["compress"], "metrics": result, "timing": timing},
        indent=2) + "\n")
    cfg, test_rows = params["compress"], len(dataset.load_prepared(ROOT / "data/prepared")[0]["test"])
    (ROOT / "bench/compression.md").write_text(
        f"# Compression: a distilled student and a pruned fine-tune beside the fine-tune's int8\n\n"
        f"Measured by `{command}` on {machine['name']} ({machine['threads']} threads, AVX-512 VNNI: "
        f"{machine['avx512_vnni']}), all-MiniLM-L6-v2 fine-tuned on 2,000 IMDB reviews (the default run's "
        f"models/finetuned), test split of {test_rows:,} reviews. Student: "
        f"{cfg['student_layers']} of 6 layers ({result['distilled']['training']['teacher_layers_kept']}), "
        f"{cfg['epochs']} epochs; pruned: {cfg['sparsity']:.0%} of the encoder's linear weights, "
        f"{cfg['prune_epochs']} epoch on; both on the fine-tune's soft labels (temperature {cfg['temperature']}, "
        f"alpha {cfg['alpha']}). Latency: ONNX Runtime, 128 tokens, mean of params export.latency_runs.\n\n"
        f"{table(result, timing)}\n")
    print(table(result, timing))


if __name__ == "__main__":
    main()
