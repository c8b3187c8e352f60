"""Time the default pipeline stage by stage and print the figures README.md quotes.

    python bench/default_run.py            # re-runs every stage (dvc repro --force -s <stage>), ~17 min on 2 CPU cores
    python bench/default_run.py --no-run   # only the figures, from the metrics already in metrics/

With `export.source: best` the default run may ship the TF-IDF baseline; the ONNX / int8 figures of the strategy's
model are then measured by exporting it too (`stages.export` with `export.source: peft`) in a scratch folder, which
leaves the run's own outputs alone. Writes bench/default_run.md (only a full run writes the stage timings); on a CPU
without AVX-512 VNNI bench/default_run_avx2.md (or _avx512), beside the other CPU's.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.inference import cpu, on_this_cpu  # noqa: E402

STAGES = ("check", "prepare", "baseline", "pretrain", "finetune", "peft", "evaluate", "export")
OUT = on_this_cpu(ROOT / "bench/default_run.md")


def metrics(name, root=ROOT):
    return json.loads((root / f"metrics/{name}.json").read_text())


def export_peft_apart():
    """Export the strategy's model in a scratch copy of the run; return its export metrics and timing."""
    scratch = Path(tempfile.mkdtemp(prefix="export-peft-"))
    for name in ("stages", "transfer", "data/prepared", "models/pretrained", "models/finetuned", "models/peft",
                 "models/baseline", "metrics"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, scratch / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["export"]["source"] = "peft"
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "stages.export"], cwd=scratch, check=True, stdout=subprocess.DEVNULL)
    result = metrics("export", scratch), metrics("timing/export", scratch)
    shutil.rmtree(scratch)
    return result


def main():
    seconds = {}
    if "--no-run" not in sys.argv:
        for stage in STAGES:
            started = time.perf_counter()
            subprocess.run(["dvc", "repro", "--force", "--single-item", stage], check=True, cwd=ROOT)
            seconds[stage] = time.perf_counter() - started
    pretrain, finetune, peft = metrics("pretrain"), metrics("finetune"), metrics("peft")
    evaluate, export, board = metrics("evaluate"), metrics("export"), metrics("leaderboard")
    finetune_time, peft_time = metrics("timing/finetune"), metrics("timing/peft")
    strategy = peft["strategy"]
    chip = cpu()
    lines = [f"Default `params.yaml`, {chip['name']} ({chip['machine']}, AVX-512 VNNI: "
             f"{'yes' if chip['avx512_vnni'] else 'no'}) with {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, no GPU; the train seconds and latencies are this machine's when the "
             f"run in metrics/ was made on it.", ""]
    if seconds:
        lines += ["| stage | wall seconds |", "|---|---|"]
        lines += [f"| {stage} | {s:.0f} |" for stage, s in seconds.items()]
        lines += [f"| **total** | **{sum(seconds.values()):.0f}** ({sum(seconds.values()) / 60:.1f} min) |", ""]
    lines += [
        "| figure | value |", "|---|---|",
        f"| held-out MLM loss before → after pretraining | {pretrain.get('mlm_loss_before', float('nan')):.3f} → "
        f"{pretrain.get('mlm_loss_after', float('nan')):.3f} |",
        f"| full fine-tune: test accuracy / macro-F1 | {evaluate['finetune']['accuracy']:.4f} / "
        f"{evaluate['finetune']['macro_f1']:.4f} |",
        f"| {strategy}: test accuracy / macro-F1 | {evaluate['peft']['accuracy']:.4f} / "
        f"{evaluate['peft']['macro_f1']:.4f} |",
        f"| TF-IDF + logistic-regression baseline: test accuracy / macro-F1 | "
        f"{evaluate['baseline']['accuracy']:.4f} / {evaluate['baseline']['macro_f1']:.4f} |",
        f"| validation macro-F1: full fine-tune / {strategy} / baseline / majority class | "
        + " / ".join(f"{board[k]['val_macro_f1']:.4f}" for k in ("finetune", "peft", "baseline", "majority")) + " |",
        f"| exported (`export.source: {export['source']}`) | {export['model']} |",
        f"| quality warnings (evaluate) | "
        f"{', '.join(w['kind'] + ' (' + w['model'] + ')' for w in evaluate['warnings']) or 'none'} |",
        f"| {strategy} macro-F1 as a fraction of the full fine-tune's | {evaluate['peft_macro_f1_vs_finetune']:.3f} |",
        f"| trainable parameters: full fine-tune / {strategy} | {finetune['trainable_params']:,} / "
        f"{peft['trainable_params']:,} ({peft['trainable_fraction']:.2%}) |",
        f"| train seconds: full fine-tune / {strategy} / baseline | {finetune_time['train_seconds']:.0f} / "
        f"{peft_time['train_seconds']:.0f} / {metrics('timing/baseline')['fit_seconds']:.0f} |",
    ]
    if export["exported"] == "baseline":
        latency = metrics("timing/export")["latency_ms"]
        lines.append(f"| exported baseline: size MB / latency ms at batch 1 and 32 | {export['size_mb']['baseline']:.1f}"
                     f" / {latency['batch1']['baseline']:.1f} / {latency['batch32']['baseline']:.1f} |")
        export, export_time = export_peft_apart()
        lines.append(f"| the ONNX rows below: `{strategy}` exported apart (`export.source: peft`) | |")
    else:
        export_time = metrics("timing/export")
    lines += [
        f"| exported ({export['model']}) test accuracy: PyTorch fp32 / ONNX fp32 / ONNX int8 | "
        + " / ".join(f"{export['test_accuracy'][k]:.4f}" for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8")) + " |",
        f"| int8 vs fp32: same label / largest recall drop of a class | {export['int8_check']['agreement']:.1%} / "
        f"{max(export['int8_check']['recall_drop'].values()):+.4f} |",
        "| size on disk MB: PyTorch fp32 / ONNX fp32 / ONNX int8 | "
        + " / ".join(f"{export['size_mb'][k]:.1f}" for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8")) + " |",
    ]
    for batch in ("batch1", "batch32"):
        ms = export_time["latency_ms"][batch]
        lines.append(f"| latency ms, {batch.replace('batch', 'batch ')} × {export_time['latency_seq_length']} tokens: "
                     f"PyTorch fp32 / ONNX fp32 / ONNX int8 | {ms['pytorch_fp32']:.1f} / {ms['onnx_fp32']:.1f} / "
                     f"{ms['onnx_int8']:.1f} (int8 {ms['pytorch_fp32'] / ms['onnx_int8']:.2f}× faster than PyTorch) |")
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
