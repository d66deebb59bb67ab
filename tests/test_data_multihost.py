"""Two real processes (jax.distributed on CPU): a packed pipeline's checkpoint state is gathered
from both hosts, is the same on both, and restores each host to its own position."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys
import jax
port, pid, corpus = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
from jaxlm.data.packing import DocEncoder, packed_train_dataset
from jaxlm.data.sources import open_source
from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer
src = open_source(f"text:{corpus}?documents=blank_line")
tok = TextTokenizer(train_tokenizer(src.texts(), "char"))
make = lambda: packed_train_dataset(src, DocEncoder(tok), seq_len=32, global_batch=4, seed=0,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
it = iter(make())
for _ in range(3):
    next(it)
state = json.loads(json.dumps(it.get_state()))  # a collective: both hosts call it
expected = [next(it)["inputs"].tolist() for _ in range(5)]
again = iter(make())
again.set_state(state)
got = [next(again)["inputs"].tolist() for _ in range(5)]
print(json.dumps({"state": state, "resume_ok": got == expected, "first": expected[0]}))
"""


def test_two_processes_gather_and_restore_their_own_data_position(tiny_corpus):
    port = str(random.randint(20000, 40000))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, port, str(i), str(tiny_corpus)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0]["state"] == outs[1]["state"] and len(outs[0]["state"]["hosts"]) == 2
    assert all(o["resume_ok"] for o in outs)
    assert outs[0]["first"] != outs[1]["first"]  # each host reads its own documents
