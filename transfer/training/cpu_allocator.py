"""Freed memory kept in the process while training and predicting on a CPU (params compute.cpu_allocator).

glibc's malloc takes a large block (above 128 KiB at first, a threshold it raises up to 32 MiB as such blocks are
freed) straight from the kernel by mmap and hands it back when it is freed, and gives the top of its heap back once
more than its trim threshold is free there. A training step frees and allocates the same large tensors every
time: the word embeddings' gradient (47 MB for MiniLM), the attention scores and their dropout masks, the FFN's
activations. So every step the kernel maps and zero-fills fresh pages for them: about 50,000 page faults and 0.12
to 0.25 CPU seconds in the kernel a step at batch 16 x 128 tokens on a 2-core AMD EPYC, where the step itself took
about 0.6 s (`python -m bench.cpu_allocator`). While `with keep_freed_memory():` is open, malloc maps no block
of its own and trims nothing, so a freed block is there for the next step to reuse: a step ran 1.2x as fast, a
fine-tune on reviews of up to 256 tokens 1.6x. On leaving, mmap and trimming come back at glibc's starting
thresholds and the free memory goes back to the system (malloc_trim).

The cost is memory: the process keeps what it freed until the context closes, and a block kept for one size does
not always fit the next (batches of other lengths), so the peak can rise: by 1% in the default run, by 16% in the
fine-tune bench's reviews of up to 256 tokens (README.md, freed memory kept for reuse). Where the C library is not
glibc (macOS, Alpine's musl) there is nothing to set."""
import contextlib
import ctypes

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters, from glibc's malloc.h
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's starting values
KEEP_EVERYTHING = 2**31 - 1  # mallopt takes an int

_depth = 0  # nested contexts (prediction inside a training run) restore the defaults once, at the outermost exit


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def available():
    """Whether this process allocates with glibc's malloc, whose thresholds can be set."""
    return _glibc() is not None


@contextlib.contextmanager
def keep_freed_memory(enabled=True):
    """Within the context, freed memory stays in the process for the next allocation to reuse (see above); a no-op
    when not enabled or where the C library is not glibc."""
    global _depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    if _depth == 0:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_EVERYTHING)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
