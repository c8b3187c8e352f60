"""Starting a training stage (pretrain, finetune, peft) as params `launcher` asks: in this process, or as
`launcher.processes` processes under torchrun (PyTorch DDP: one GPU each, or CPU processes on the gloo backend).

Under N processes each batch is split N ways: the optimizer sees the rows params.yaml names, in the order one
process would see them, for as many steps. Only rank 0 writes outputs, metrics, curves and checkpoints.
On a machine with GPUs every run first claims the GPUs it trains on (a lock file per GPU in the system's temp
folder, held while it runs; `claim_gpus: false` skips this) and sees only those: the workers of
`dvc queue start -j N` each get their own, and a run waits while every GPU is held by another."""
import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from transfer.schema import UserError

LOCKS = Path(tempfile.gettempdir()) / "transfer-gpu-locks"
STARTED = "TRANSFER_LAUNCHED"  # set in the processes this module starts: they train and start nothing


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main():
    return int(os.environ.get("RANK", "0")) == 0


def barrier():
    """Wait for every process of the run (nothing to wait for in a single-process run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def per_process(batch_size):
    """One process's share of a batch of `batch_size` rows (check makes sure it divides)."""
    return batch_size // world_size()


def visible_gpus():
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES' entries where it is set, else every one CUDA finds."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip() and entry.strip() != "-1"]
    return [str(index) for index in range(torch.cuda.device_count())]


def check(params):
    """Refuse a launcher setting this machine or these params cannot run, before anything starts."""
    processes = params["launcher"]["processes"]
    if processes == 1:
        return
    from transfer.tasks import causal_lm, token_classification

    task_sections = (("causal_lm", causal_lm), ("token_classification", token_classification))
    chosen_task = [section for section, task in task_sections if task.selected(params)]
    for section in ("train", "pretrain", *chosen_task):
        if params[section]["batch_size"] % processes:
            raise UserError(f"params.yaml: {section}.batch_size ({params[section]['batch_size']}) must split evenly "
                            f"among launcher.processes ({processes}): each process trains on its share of every "
                            f"batch. Make {section}.batch_size a multiple of {processes}.")
    gpus = visible_gpus()
    if gpus and processes > len(gpus):
        raise UserError(f"params.yaml: launcher.processes is {processes}, but this machine shows {len(gpus)} GPU(s) "
                        f"({', '.join(gpus)}): one process trains on each. Set launcher.processes to at most "
                        f"{len(gpus)}.")


@contextlib.contextmanager
def claimed_gpus(count, pool, locks=LOCKS, poll_seconds=5.0):
    """Hold `count` GPUs of `pool` that no other process holds (one lock file each) until the block ends; wait
    while fewer are free. A process that dies lets go of its locks with it."""
    locks.mkdir(parents=True, exist_ok=True)
    held, announced = [], False
    try:
        while True:
            for gpu in pool:
                if len(held) == count:
                    break
                handle = open(locks / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                held.append((gpu, handle))
            if len(held) == count:
                break
            for _, handle in held:  # never sit on some while waiting for more: two runs would wait on each other
                handle.close()
            held = []
            if not announced:
                print(f"launcher: waiting for {count} of GPUs {', '.join(pool)}: other runs hold them", flush=True)
                announced = True
            time.sleep(poll_seconds)
        yield [gpu for gpu, _ in held]
    finally:
        for _, handle in held:
            handle.close()


def command(module, processes):
    """The command that trains `module` (stages.finetune, ...) in `processes` processes."""
    if processes == 1:
        return [sys.executable, "-m", module]
    # --local-ranks-filter 0: the console shows rank 0 alone (every rank prints the same); the logs of all are kept
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "--local-ranks-filter=0", "--tee=3", f"--log-dir={tempfile.mkdtemp(prefix='transfer-launch-')}",
            "-m", module]


def start(module, processes, gpus):
    """Run `module` in `processes` new processes that see only `gpus` (None: what this one sees); its exit code."""
    env = {**os.environ, STARTED: "1"}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if processes > 1 and "OMP_NUM_THREADS" not in env:  # torchrun's own default is 1 thread, whatever the cores
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // processes))
    child = subprocess.Popen(command(module, processes), env=env)
    forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731  (a Ctrl-C reaches both already)
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue  # the child got the Ctrl-C too: wait for it to stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _join_process_group():
    """In a process torchrun started: join the others (gloo on a CPU, NCCL on GPUs) before anything waits on them."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def one_device_per_process(args):
    """TrainingArguments that train each process on one device. In a CPU process of several that is 'cpu':
    accelerate names it cpu:<rank>, which torch.load cannot map a checkpoint's tensors to, so the Trainer's resume
    failed loading the optimizer. In a single process that sees several GPUs (launcher.claim_gpus: false, or the
    compress stage, which the launcher does not start) it is the first GPU: the Trainer would spread each batch of
    batch_size rows over all of them with DataParallel, so the optimizer saw batch_size x GPUs rows a step."""
    if world_size() > 1 and args.device.type == "cpu":
        args.__dict__["_setup_devices"] = torch.device("cpu")  # the cached value behind args.device
    if world_size() == 1 and args.device.type == "cuda" and args.n_gpu > 1:
        args._n_gpu = 1  # what n_gpu reads: the Trainer wraps the model in DataParallel where it is over 1
    return args


def run_stage(main):
    """The entry point of a training stage: train here, or start the processes params launcher asks for and wait."""
    from transfer.config import run_stage as run_checked

    module = sys.modules["__main__"].__spec__.name

    def launch_or_train(params):
        check(params)
        processes, claim = params["launcher"]["processes"], params["launcher"]["claim_gpus"]
        gpus = visible_gpus() if not os.environ.get(STARTED) else []
        if os.environ.get(STARTED) or (processes == 1 and not (gpus and claim)):
            _join_process_group()
            return main(params)
        if not (gpus and claim):  # a CPU run (gloo), or every visible GPU taken as it is
            sys.exit(start(module, processes, None))
        with claimed_gpus(processes, gpus) as mine:
            print(f"launcher: {module} in {processes} process(es) on GPU(s) {', '.join(mine)}", flush=True)
            sys.exit(start(module, processes, mine))

    run_checked(launch_or_train)
