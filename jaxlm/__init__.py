"""jaxlm: pretrain Transformer language models and fine-tune them for text classification in
JAX/Flax NNX, from one CPU to a TPU pod.

The command line (`jaxlm --help`, docs/cli.md) drives whole jobs; the modules compose into a
training loop of your own (docs/python_api.md): `jaxlm.models.build_model`,
`jaxlm.sharding.make_mesh` / `use_mesh`, `jaxlm.train.optim.build_optimizer`,
`jaxlm.train.steps.compile_steps` / `put_batch`, `jaxlm.tasks.LOSSES`.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jaxlm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from jaxlm.host_memory import reuse_freed_host_memory

# Before any JAX backend starts: on CPU, XLA's per-step buffers are then reused instead of being
# page-faulted in again every step (1.2-1.4x on a train step; jaxlm.host_memory says why).
reuse_freed_host_memory()
