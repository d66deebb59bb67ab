"""Host memory reuse on CPU (`jaxlm.host_memory`): `jaxlm.reuse_freed_host_memory()` (which the
`jaxlm` command calls; importing jaxlm does not) stops XLA:CPU from page-faulting its per-step
buffer in again on every step; it can be turned off; it only applies where JAX runs on the CPU."""
import os
import subprocess
import sys
import textwrap

import pytest

from jaxlm.host_memory import will_run_on_cpu

# A jitted step whose temporary buffer (134 MB) is far above glibc's largest mmap threshold (32 MB).
PROBE = textwrap.dedent("""
    import os, resource, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jaxlm
    jaxlm.reuse_freed_host_memory()  # before JAX starts its backend
    import jax, jax.numpy as jnp
    from jaxlm.host_memory import reuse_freed_host_memory

    @jax.jit
    def step(x):
        y = jnp.tanh(x @ x.T)            # [4096, 4096] float32 intermediate: 64 MB
        z = jnp.exp(y) * 2.0 + y         # more large temporaries
        return (z @ x).sum() + (jnp.sin(y) @ x).sum()

    x = jnp.ones((4096, 64), jnp.float32) / 64
    faults = []  # per step; the heap grows over the first few steps, then stays
    for _ in range(14):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    steady = sorted(faults[-8:])[4]  # median of the last 8 steps
    temp = step.lower(x).compile().memory_analysis().temp_size_in_bytes
    print(reuse_freed_host_memory(), steady, temp)
""")


def _probe(**env) -> tuple[bool, int, int]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXLM_HOST_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**full_env, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, faults, temp = out.stdout.split()[-3:]
    return applied == "True", int(faults), int(temp)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_step_buffer_is_reused_instead_of_page_faulted_in_every_step():
    applied, faults, temp = _probe()
    assert applied and temp > 100e6
    off_applied, off_faults, _ = _probe(JAXLM_HOST_MALLOC="system")
    assert not off_applied
    pages = temp / 4096
    assert off_faults > 0.5 * pages  # glibc's default: the buffer is mapped afresh every step
    assert faults < 0.05 * pages, (faults, off_faults, pages)  # steady state: reused


def test_applies_only_where_jax_runs_on_cpu():
    assert will_run_on_cpu({"JAX_PLATFORMS": "cpu"}, ["/dev/nvidia0"])
    assert not will_run_on_cpu({"JAX_PLATFORMS": "cuda"}, [])
    assert not will_run_on_cpu({"JAX_PLATFORMS": "tpu,cpu"}, [])
    assert will_run_on_cpu({}, [])
    assert not will_run_on_cpu({}, ["/dev/accel0"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_the_command_applies_it_and_importing_jaxlm_does_not():
    code = ("import sys; import jaxlm, jaxlm.cli; from jaxlm import host_memory as h; "
            "before = h.applied(); sys.argv = ['jaxlm']; jaxlm.cli.main(); "
            "print(before, h.applied())")
    env = {k: v for k, v in os.environ.items() if k != "JAXLM_HOST_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-2:] == ["False", "True"], out.stderr[-2000:]


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
        "print(tune_host_malloc(lm), h.applied(), xla_bridge.backends_are_initialized())\n")
    env = {k: v for k, v in os.environ.items() if k != "JAXLM_HOST_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=300)
    lines = out.stdout.split("\n")
    assert lines[0] == "2 False True", out.stderr[-2000:]
    assert lines[1] == "False False False"
    assert lines[2] == "True True False"
