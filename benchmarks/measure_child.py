"""Run one command and write its wall time and peak resident set as JSON (used by headline.py).

Why a separate small process: Linux carries the resident set of the process that spawned a child
into the child's ru_maxrss (at exec, the old address space's high-water mark is kept), so a child
spawned by a large parent (a test runner with torch loaded, say) would report at least the
parent's size. This wrapper imports only a few standard modules, so the floor it leaves is a few
MiB. It starts the clock just before the spawn and passes that time to the child in
$HEADLINE_SPAWN_TIME (so a child can time itself from its own start).

    python -S benchmarks/measure_child.py OUT.json COMMAND [ARGS...]

`json_child` is the other way benchmarks run a child: a Python snippet in a fresh CPU process
(so malloc settings, thread affinity or XLA flags are chosen before JAX starts), its result the
JSON object it prints last.
"""
import json
import os
import subprocess
import sys
import time


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[2:]
    env = dict(os.environ)
    t0 = time.time()
    env["HEADLINE_SPAWN_TIME"] = repr(t0)
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    with open(out, "w") as f:
        json.dump({"rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "spawn_time": t0,
                   "peak_rss_mib": usage.ru_maxrss / 1024.0,  # Linux reports KiB
                   "user_s": usage.ru_utime, "sys_s": usage.ru_stime}, f)
    return 0


def json_child(code: str, *args: str) -> dict:
    """Run `python -c code args` on the CPU without the caller's XLA_FLAGS; the JSON object on
    its last line of output (RuntimeError with its stderr if it fails)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**env, "JAX_PLATFORMS": "cpu"})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
