"""Keep freed host memory for reuse, so that XLA:CPU stops page-faulting its step buffer.

XLA:CPU allocates each execution's temporary buffer (tens of MB for a small model's train step,
hundreds for a mid-sized one) with posix_memalign from a worker thread. glibc serves a request
that large with a fresh mmap, and unmaps it when it is freed, so on every step the kernel faults
in and zeroes every page again, a large share of the step's CPU time. With no mmap and no
trimming, freed blocks stay in the heap and the buffer is reused from step to step
(benchmarks/profile_train_step.py prints the step time, page faults and kernel time; run it with
and without JAXLM_HOST_MALLOC=system).

A thread's arena grows by heaps of at most THREAD_HEAP_BYTES, and glibc mmaps a larger block
afresh whatever the settings say; such a buffer is reused only when every thread allocates from
the one main (brk-grown) heap: `one_arena`. But one arena means one malloc lock for all of XLA's
threads, which slows a small model's train step and every compilation
(benchmarks/host_malloc_arenas.py prints both for the main job's step), so the `jaxlm` command
asks for it only when its estimate of the step's buffer (`jaxlm.commands.step_buffer_estimate`)
exceeds a thread's heap.

A thread's arena also unmaps a heap of its own once everything in it is freed, whatever the trim
threshold, unless its top pad is a whole heap. Without that pad, a buffer that does not fit beside
what its arena already holds gets a heap to itself and is faulted in afresh on every step, in
some processes and not others as XLA's threads and arenas happen to pair up
(tests/test_host_memory.py shows the case). Thread arenas therefore come with a top pad of
THREAD_HEAP_BYTES: address space only, as pages are touched only when used.

It has to run before the XLA backend starts its threads (glibc binds a thread to an arena at its
first allocation and fixes the arena limit then). Importing jaxlm does not apply it (a library does
not change its host's allocator unasked): the `jaxlm` command applies it before anything starts
JAX (its training commands only when every train step has one shape, see
`jaxlm.commands.tune_host_malloc`), and a script or notebook on the CPU calls it first thing:

    import jaxlm
    jaxlm.reuse_freed_host_memory()  # before the first JAX computation
    import jax

Its costs: the process keeps its peak heap, as any caching allocator does; small allocations
now and then split a freed buffer, so that a step finds none whole and grows the heap by one
more, until it holds a few (tests/test_host_memory.py shows both); with one arena, the shared lock
above. A job of more than a handful of steps gains; `JAXLM_HOST_MALLOC=system` turns it off.

The `jaxlm` command's training commands leave it off when their steps have several shapes (a
classifier's length buckets): each shape's buffer splits the ones freed before it, so the heap
settles at a few of the largest, and peak memory rises more than a peer's would allow.
`JAXLM_HOST_MALLOC=reuse` turns it on for them too, for speed at that memory (the MiniLM SST-2
job: README, "host memory reuse").

Huge pages (`restart_with_huge_pages`): where the kernel gives 2 MB pages only to memory that asks
(transparent_hugepage "madvise", a common default), `jaxlm pretrain` and `jaxlm finetune` restart
themselves once with glibc's `glibc.malloc.hugetlb=1` tunable, so that malloc asks for them. A
buffer that is still mapped afresh every step (the several-shape steps above) then page-faults in
512 times less often, at no memory cost. `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` (or
JAXLM_HOST_MALLOC=system) keeps the process as started.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
# The largest heap of a thread's arena (glibc's HEAP_MAX_SIZE on 64-bit): a larger block asked
# for from a thread's arena is mmapped afresh (and unmapped when freed), whatever mallopt says.
THREAD_HEAP_BYTES = 64 << 20
SETTING = "JAXLM_HOST_MALLOC"  # system | reuse | unset
_applied = False
_one_arena = False
_allowed = False


def will_run_on_cpu(environ: dict | None = None, device_files: list[str] | None = None) -> bool:
    """Whether JAX will pick its CPU backend: JAX_PLATFORMS says so, or no GPU/TPU is attached."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    if device_files is None:
        device_files = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/accel*") + glob.glob(
            "/dev/vfio/[0-9]*")
    return not device_files


def requested(environ: dict | None = None) -> str:
    """What JAXLM_HOST_MALLOC asks for: "system" (never switch), "reuse" (switch even where the
    `jaxlm` command would not) or "" (let it decide)."""
    value = (os.environ if environ is None else environ).get(SETTING, "").strip().lower()
    return value if value in ("system", "reuse") else ""


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc on Linux (the settings here are glibc's)."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - AttributeError off glibc (e.g. musl)
    except (OSError, AttributeError):
        return None
    return libc


def allow_reuse() -> None:
    """Let `reuse_freed_host_memory(when_allowed=True)` apply later (the `jaxlm` command allows
    it, then a training command decides once its config is read, before JAX starts)."""
    global _allowed
    _allowed = True


def applied() -> bool:
    """Whether `reuse_freed_host_memory` has switched malloc in this process."""
    return _applied


def setting() -> str:
    """This process's malloc: "system", "reuse, one arena" or "reuse, thread arenas"."""
    if not _applied:
        return "system"
    return "reuse, one arena" if _one_arena else "reuse, thread arenas"


def reuse_freed_host_memory(when_allowed: bool = False, *, one_arena: bool = True) -> bool:
    """Switch glibc malloc to keep freed memory (no mmap, no trimming) for the whole process, so
    that XLA:CPU reuses each step's temporary buffer instead of page-faulting it in again (a CPU
    train step runs faster; see the module docstring for the costs). With `one_arena` (for steps
    whose buffer is larger than a thread's heap, THREAD_HEAP_BYTES) every thread allocates from
    the main heap; without it threads keep their own arenas, which is faster for smaller buffers,
    and keep their emptied heaps (top pad THREAD_HEAP_BYTES) instead of unmapping them.
    Call it before JAX starts its backend (the first computation or device query); the `jaxlm`
    command calls it for you.

    Returns True when it was applied (or had been). Does nothing off Linux/glibc, when JAX will
    not run on the CPU (`will_run_on_cpu`), or with JAXLM_HOST_MALLOC=system; with
    `when_allowed`, nothing unless `allow_reuse` was called."""
    global _applied, _one_arena
    if _applied:
        return True
    if when_allowed and not _allowed:
        return False
    libc = _glibc()
    if libc is None or requested() == "system" or not will_run_on_cpu():
        return False
    mallopt = libc.mallopt
    # one arena, or threads' arenas that keep their emptied heaps (module docstring)
    arena_set = mallopt(_M_ARENA_MAX, 1) if one_arena else mallopt(_M_TOP_PAD, THREAD_HEAP_BYTES)
    ok = (arena_set == 1 and mallopt(_M_MMAP_MAX, 0) == 1
          and mallopt(_M_TRIM_THRESHOLD, -1) == 1)  # -1: SIZE_MAX, never trim
    _applied, _one_arena = bool(ok), one_arena
    return _applied


def release_freed_host_memory() -> None:
    """Give the memory freed so far back to the system (glibc `malloc_trim`), when
    `reuse_freed_host_memory` is on: called between the phases of a run (after set-up and
    compilation, after a validation or a checkpoint), so that what one phase freed does not stay
    resident through the next, while the train step still reuses its own buffer from step to
    step. Does nothing otherwise."""
    if not _applied:
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------- transparent huge pages

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages_mode(path: str = _THP_MODE_FILE) -> str:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"; "" unknown)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    chosen = [w.strip("[]") for w in text.split() if w.startswith("[")]
    return chosen[0] if chosen else ""


def huge_pages_environ(environ: dict | None = None, thp_mode: str | None = None
                       ) -> dict[str, str] | None:
    """The environment under which glibc malloc asks for transparent huge pages, or None when
    the process should keep its own (already asked, JAXLM_HOST_MALLOC=system, not glibc on Linux,
    not on the CPU, or a kernel whose mode makes the request useless).

    Where the kernel's mode is "madvise" (a common default), memory gets 2 MB pages only when
    asked for (madvise MADV_HUGEPAGE), which glibc does for its heap and its mmapped blocks with
    the glibc.malloc.hugetlb=1 tunable. XLA:CPU's step buffers then page-fault in 512 times less
    often, without the peak memory that `reuse_freed_host_memory` keeps for several-shape steps
    (README, "transparent huge pages"). glibc reads tunables only at start-up, hence a restart
    (`restart_with_huge_pages`)."""
    environ = dict(os.environ if environ is None else environ)
    mode = transparent_huge_pages_mode() if thp_mode is None else thp_mode
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (mode != "madvise" or "glibc.malloc.hugetlb" in tunables
            or requested(environ) == "system" or not will_run_on_cpu(environ)
            or _glibc() is None):
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else \
        HUGE_PAGES_TUNABLE
    return environ


def restart_with_huge_pages() -> None:
    """Replace this process with itself under `huge_pages_environ` when that asks for a change;
    returns (doing nothing) otherwise. Only for a program's first lines, before anything has run
    that a restart would repeat: the `jaxlm` command calls it before its command starts."""
    env = huge_pages_environ()
    argv = list(getattr(sys, "orig_argv", []) or [])
    if env is None or not argv or not sys.executable or getattr(sys, "frozen", False):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:
        return  # keep running as we are: the restart only buys speed
