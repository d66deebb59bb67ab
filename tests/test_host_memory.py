"""Host memory reuse on CPU (`jaxlm.host_memory`): `jaxlm.reuse_freed_host_memory()` (which the
`jaxlm` command calls; importing jaxlm does not) stops XLA:CPU from page-faulting its per-step
buffer in again on every step; it can be turned off; it only applies where JAX runs on the CPU."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from jaxlm.host_memory import (THREAD_HEAP_BYTES as THREAD_HEAP, transparent_huge_pages_mode,
                               will_run_on_cpu)

# A jitted step whose temporary buffer (134 MB for N=4096) is far above glibc's largest mmap
# threshold (32 MB) and a thread arena's heap (64 MB); N=2560 gives one between the two.
PROBE = textwrap.dedent("""
    import os, resource, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jaxlm
    N, ONE_ARENA = int(os.environ.get("PROBE_N", 4096)), os.environ.get("PROBE_ARENAS") != "threads"
    jaxlm.reuse_freed_host_memory(one_arena=ONE_ARENA)  # before JAX starts its backend
    import jax, jax.numpy as jnp
    from jaxlm.host_memory import reuse_freed_host_memory

    @jax.jit
    def step(x):
        y = jnp.tanh(x @ x.T)            # [N, N] float32 intermediate: 64 MB for N=4096
        z = jnp.exp(y) * 2.0 + y         # more large temporaries
        return (z @ x).sum() + (jnp.sin(y) @ x).sum()

    x = jnp.ones((N, 64), jnp.float32) / 64
    faults = []  # per step
    for _ in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    temp = step.lower(x).compile().memory_analysis().temp_size_in_bytes
    import ctypes
    class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2
        _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks "
                    "fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    heap = libc.mallinfo2().arena  # bytes the main heap holds (sbrk), in use or kept free
    sys.stdout.flush()
    libc.malloc_stats()  # to stderr: every arena, and the most bytes ever mmapped at once
    print(reuse_freed_host_memory(), temp, heap, *faults)
""")


class Probe(NamedTuple):
    applied: bool  # jaxlm switched malloc in the probe process
    faults: list[int]  # page faults of each step
    temp: int  # the step's temporary buffer, bytes
    heap: int  # bytes held by glibc's main (sbrk) heap after the steps
    arenas: int  # malloc arenas in the process
    max_mmapped: int  # the most bytes malloc ever had mmapped at once
    report: str  # the per-step faults and malloc_stats, for a failure message


def _probe(**env) -> Probe:
    full_env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXLM_HOST_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**full_env, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    applied, temp, heap, *faults = line.split()
    stats = out.stderr[out.stderr.rfind("Arena 0:"):]
    max_mmapped = re.search(r"max mmap bytes\s*=\s*(\d+)", stats)
    return Probe(applied == "True", [int(f) for f in faults], int(temp), int(heap),
                 len(re.findall(r"^Arena \d+:", stats, re.M)),
                 int(max_mmapped.group(1)) if max_mmapped else -1,
                 f"faults per step {faults}\n{stats}")


def _refaulted(probe: Probe) -> float:
    """The share of steps after the first two (which grow the heap) that faulted the buffer in."""
    return sum(f > 0.5 * probe.temp / 4096 for f in probe.faults[2:]) / len(probe.faults[2:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_step_buffer_is_reused_instead_of_page_faulted_in_every_step():
    off = _probe(JAXLM_HOST_MALLOC="system")
    assert not off.applied and off.temp > 100e6
    # glibc's default: the buffer is mmapped and unmapped, so faulted in afresh on every step
    assert off.max_mmapped >= off.temp and _refaulted(off) > 0.9, off.report
    for _ in range(3):
        on = _probe()
        # the allocator's side, exact: one arena, the buffer never mmapped, kept in the heap
        assert on.applied and on.arenas == 1, on.report
        assert on.max_mmapped < on.temp and on.heap >= on.temp, on.report
        # The kernel's side. Small allocations sometimes split a freed buffer, so a step now and
        # then finds none whole and grows the heap by one (faulting it in) until the heap holds
        # a few: some of the steps, at random.
        if _refaulted(on) < 0.34:
            break
    else:
        pytest.fail(f"with jaxlm's malloc setting {_refaulted(on):.0%} of the steps still "
                    f"faulted the step buffer in, although malloc kept it:\n{on.report}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_threads_keep_their_arenas_and_reuse_a_buffer_that_fits_their_heaps():
    """Without one arena (XLA's threads keep their own locks), a buffer smaller than a thread's
    heap is still reused: never mmapped, not faulted in again step after step. glibc's defaults
    mmap it afresh every step."""
    off = _probe(JAXLM_HOST_MALLOC="system", PROBE_N="2560")
    assert off.max_mmapped >= off.temp and _refaulted(off) > 0.9, off.report
    on = _probe(PROBE_N="2560", PROBE_ARENAS="threads")
    assert on.applied and on.arenas > 1 and 32 << 20 < on.temp < THREAD_HEAP, on.report
    assert on.max_mmapped < on.temp and _refaulted(on) < 0.25, on.report


# A thread whose arena holds 30 MB allocates, fills and frees a 50 MB buffer ten times (glibc
# only, no JAX): the buffer does not fit beside the 30 MB in the arena's first 64 MB heap.
EMPTIED_HEAP_PROBE = textwrap.dedent("""
    import ctypes, resource, sys, threading
    import jaxlm
    print(jaxlm.reuse_freed_host_memory(one_arena=False))
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    MB, faults = 1 << 20, []
    def work():
        held = libc.malloc(30 * MB)
        ctypes.memset(held, 1, 30 * MB)
        for _ in range(10):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            buffer = libc.malloc(50 * MB)
            ctypes.memset(buffer, 1, 50 * MB)
            libc.free(buffer)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(*faults)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.skipif(transparent_huge_pages_mode() == "always",
                    reason="counts 4 KB page faults; this kernel backs the heap with 2 MB pages")
@pytest.mark.parametrize("setting", ["system", ""])
def test_a_thread_arena_keeps_a_heap_it_emptied(setting):
    """glibc unmaps a thread arena's heap once all of it is free, so a buffer that got a heap of
    its own is faulted in again on every step (12,800 4 KB pages for 50 MB); jaxlm's top pad
    keeps the heap, and only the first step faults the buffer in."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAXLM_HOST_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", EMPTIED_HEAP_PROBE],
                         env={**env, "JAXLM_HOST_MALLOC": setting, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, faults = out.stdout.splitlines()
    faults = [int(f) for f in faults.split()]
    pages = (50 << 20) // 4096
    assert faults[0] > 0.9 * pages, faults  # the first step faults the buffer in
    if setting == "system":
        assert applied == "False" and min(faults[1:]) > 0.9 * pages, faults
    else:
        assert applied == "True" and max(faults[1:]) < 0.01 * pages, faults


def test_the_step_buffer_estimate_errs_high_and_picks_one_arena_only_for_large_steps():
    """The estimate is made before JAX starts, from the config; it must not fall below the buffer
    XLA assigns (a buffer past a thread's heap would be mmapped every step), and the main job's
    small step keeps its threads' arenas while a 16x batch asks for one arena."""
    import dataclasses

    from jaxlm.commands import step_buffer_estimate
    from jaxlm.config import load_config
    from jaxlm.host_memory import THREAD_HEAP_BYTES
    from jaxlm.train.bench import bench

    main = load_config(Path(__file__).parents[1] / "configs/shakespeare_char.yaml")
    large = dataclasses.replace(main, train=dataclasses.replace(main.train, batch_size=192))
    assert step_buffer_estimate(main) < THREAD_HEAP_BYTES < step_buffer_estimate(large)
    for cfg in (main, large):
        B = cfg.train.batch_size
        # the step `jaxlm pretrain` compiles, on one device, with the char vocabulary
        one = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=65),
                                  mesh=dataclasses.replace(cfg.mesh, num_devices=1))
        temp = bench(one, compile_only=True).memory["temp"]
        assert 0.3 * step_buffer_estimate(cfg) < temp <= step_buffer_estimate(cfg), (B, temp)


def test_applies_only_where_jax_runs_on_cpu():
    assert will_run_on_cpu({"JAX_PLATFORMS": "cpu"}, ["/dev/nvidia0"])
    assert not will_run_on_cpu({"JAX_PLATFORMS": "cuda"}, [])
    assert not will_run_on_cpu({"JAX_PLATFORMS": "tpu,cpu"}, [])
    assert will_run_on_cpu({}, [])
    assert not will_run_on_cpu({}, ["/dev/accel0"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_the_command_applies_it_and_importing_jaxlm_does_not():
    """Commands that do not train (a few executions, compilation first) keep thread arenas."""
    code = ("import sys; import jaxlm, jaxlm.cli; from jaxlm import host_memory as h; "
            "before = h.applied(); sys.argv = ['jaxlm']; jaxlm.cli.main(); "
            "print(before, h.applied(), h.setting().replace(' ', '_'))")
    env = {k: v for k, v in os.environ.items() if k != "JAXLM_HOST_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-3:] == ["False", "True", "reuse,_thread_arenas"], out.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_training_commands_reuse_only_when_every_step_has_one_shape():
    """A classifier's length buckets give steps of several shapes: its buffers would fragment
    the one heap, so `jaxlm finetune` of a classifier keeps glibc's defaults; pretraining (one
    shape) switches. The decision waits for the config, and is taken before JAX starts."""
    code = (
        "import sys; from jaxlm import host_memory as h; import jaxlm.cli\n"
        "from jaxlm.commands import tune_host_malloc\n"
        "from jaxlm.config import config_from_dict\n"
        "sys.argv = ['jaxlm', 'finetune', '--config', 'missing.yaml']\n"
        "rc = jaxlm.cli.main()\n"
        "print(rc, h.applied(), h._allowed)\n"
        "cls = config_from_dict({'train': {'task': 'classification'}})\n"
        "gen = config_from_dict({'train': {'task': 'generative'}, 'generative': {'packing': False}})\n"
        "print(tune_host_malloc(cls), tune_host_malloc(gen), h.applied())\n"
        "lm = config_from_dict({'train': {'task': 'causal'}})\n"
        "from jax._src import xla_bridge\n"
        "print(tune_host_malloc(lm), h.applied(), xla_bridge.backends_are_initialized())\n"
        "print(h.setting())\n")
    env = {k: v for k, v in os.environ.items() if k != "JAXLM_HOST_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=300)
    lines = out.stdout.split("\n")
    assert lines[0] == "2 False True", out.stderr[-2000:]
    assert lines[1] == "False False False"
    assert lines[2] == "True True False"
    assert lines[3] == "reuse, thread arenas"  # the default model's step fits a thread's heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.parametrize("setting, expected", [("reuse", "True True"), ("system", "False False")])
def test_the_environment_overrides_the_commands_choice(setting, expected):
    """JAXLM_HOST_MALLOC=reuse switches a classifier's finetune too (speed for memory);
    =system keeps glibc's defaults even for pretraining."""
    task = "classification" if setting == "reuse" else "causal"
    code = ("from jaxlm import host_memory as h\n"
            "from jaxlm.commands import tune_host_malloc\n"
            "from jaxlm.config import config_from_dict\n"
            "h.allow_reuse()\n"
            f"print(tune_host_malloc(config_from_dict({{'train': {{'task': '{task}'}}}})), "
            "h.applied())\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXLM_HOST_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.split()[-2:] == expected.split(), out.stderr[-2000:]


# --------------------------------------------------------------------- transparent huge pages

def test_huge_pages_are_asked_for_only_where_the_kernel_waits_to_be_asked():
    from jaxlm.host_memory import HUGE_PAGES_TUNABLE, huge_pages_environ
    cpu = {"JAX_PLATFORMS": "cpu"}
    if sys.platform.startswith("linux"):
        assert huge_pages_environ(cpu, "madvise")["GLIBC_TUNABLES"] == HUGE_PAGES_TUNABLE
        other = huge_pages_environ({**cpu, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise")
        assert other["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"
    assert huge_pages_environ(cpu, "always") is None  # the kernel gives them unasked
    assert huge_pages_environ(cpu, "never") is None
    opted_out = {**cpu, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert huge_pages_environ(opted_out, "madvise") is None
    assert huge_pages_environ({**cpu, "JAXLM_HOST_MALLOC": "system"}, "madvise") is None
    assert huge_pages_environ({"JAX_PLATFORMS": "cuda"}, "madvise") is None


# Restarts itself with the tunable where that applies, then mallocs and touches 64 MB with glibc
# (numpy would madvise its own arrays) and reads how much of the process is in huge pages.
HUGE_PAGE_PROBE = textwrap.dedent("""
    import ctypes, os, re
    from jaxlm.host_memory import restart_with_huge_pages, transparent_huge_pages_mode
    restart_with_huge_pages()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 64 << 20
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    rollup = open("/proc/self/smaps_rollup").read()
    huge_kb = int(re.search(r"AnonHugePages:\\s+(\\d+) kB", rollup).group(1))
    print(transparent_huge_pages_mode(), os.environ.get("GLIBC_TUNABLES", "-"), huge_kb)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_the_restart_puts_malloced_buffers_in_huge_pages():
    """Where the kernel gives huge pages only when asked ("madvise"), the restart makes glibc ask:
    most of a 64 MB buffer lands in 2 MB pages, where without it none does; elsewhere it does
    not restart."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAXLM_HOST_MALLOC", "GLIBC_TUNABLES")}
    env["JAX_PLATFORMS"] = "cpu"
    runs = {}
    for setting in ("", "system"):
        out = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE],
                             env={**env, "JAXLM_HOST_MALLOC": setting}, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        runs[setting] = out.stdout.split()
    mode, tunables, huge_kb = runs[""]
    if mode != "madvise":
        assert tunables == "-"  # nothing to ask for: no restart
        return
    assert tunables == "glibc.malloc.hugetlb=1"
    assert int(huge_kb) >= 32 << 10, runs  # at least half of the buffer
    assert runs["system"][1] == "-" and int(runs["system"][2]) < 8 << 10, runs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_training_commands_restart_with_huge_pages_and_others_do_not():
    from jaxlm.host_memory import transparent_huge_pages_mode
    code = ("import os, sys, jaxlm.cli\n"
            "sys.argv = ['jaxlm', *sys.argv[1:]]\n"
            "rc = jaxlm.cli.main()\n"
            "print(rc, os.environ.get('GLIBC_TUNABLES', '-'))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAXLM_HOST_MALLOC", "GLIBC_TUNABLES")}
    asked = "glibc.malloc.hugetlb=1" if transparent_huge_pages_mode() == "madvise" else "-"
    for args, expected in ((["finetune", "--config", "missing.yaml"], f"2 {asked}"),
                           (["pretrain", "--config", "missing.yaml"], f"2 {asked}"),
                           (["generate", "--run", "missing-run", "--prompt", "x"], "2 -")):
        out = subprocess.run([sys.executable, "-c", code, *args],
                             env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                             timeout=300)
        last = out.stdout.strip().split("\n")[-1]
        assert last == expected, (args, out.stdout, out.stderr[-2000:])
