"""Run one command and write its wall time and peak resident set as JSON (used by headline.py).

Why a separate small process: Linux carries the resident set of the process that spawned a child
into the child's ru_maxrss (at exec, the old address space's high-water mark is kept), so a child
spawned by a large parent (a test runner with torch loaded, say) would report at least the
parent's size. This wrapper imports only a few standard modules, so the floor it leaves is a few
MiB. It starts the clock just before the spawn and passes that time to the child in
$HEADLINE_SPAWN_TIME (so a child can time itself from its own start).

    python -S benchmarks/measure_child.py OUT.json COMMAND [ARGS...]
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


if __name__ == "__main__":
    sys.exit(main())
