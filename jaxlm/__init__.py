"""jaxlm: pretrain Transformer language models and fine-tune them for text classification in
JAX/Flax NNX, from one CPU to a TPU pod.

The command line (`jaxlm --help`, docs/cli.md) drives whole jobs; the names below compose into a
training loop of your own (docs/python_api.md):

    import jaxlm
    cfg = jaxlm.ModelConfig(family="llama", vocab_size=256, num_layers=2, d_model=64)
    model = jaxlm.build_model(cfg, "causal")

Importing jaxlm changes nothing in the process and does not import JAX: each name is imported
from its module when first used (PEP 562). On CPU, call `jaxlm.reuse_freed_host_memory()` before
JAX starts (the `jaxlm` command does): see `jaxlm.host_memory`.
"""
from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("jaxlm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# public name -> the module that defines it, or "module:attribute" (imported on first use)
_LAZY: dict[str, str] = {
    # configs
    **dict.fromkeys(("Config", "ModelConfig", "OptimConfig", "TrainConfig", "DataConfig",
                     "MeshConfig", "LoRAConfig", "load_config", "config_from_dict"),
                    "jaxlm.config"),
    "ConfigError": "jaxlm.errors", "JaxlmError": "jaxlm.errors",
    # models, attention, sharding
    "build_model": "jaxlm.models",
    **dict.fromkeys(("apply_lora", "merge_lora"), "jaxlm.models.lora"),
    **dict.fromkeys(("register_attention", "attention_names", "AttentionFn", "xla_attention"),
                    "jaxlm.models.attention"),
    **dict.fromkeys(("make_mesh", "use_mesh"), "jaxlm.sharding"),
    # training: the trainer and its tasks
    **dict.fromkeys(("Trainer", "Hook", "StepInfo", "stop_at"), "jaxlm.train.trainer"),
    **dict.fromkeys(("compile_steps", "CompiledSteps", "train_step", "put_batch"),
                    "jaxlm.train.steps"),
    "TrainState": "jaxlm.train.state",
    "build_optimizer": "jaxlm.train.optim",
    "pretrain": "jaxlm.train.pretrain", "finetune": "jaxlm.train.finetune",
    "Evaluator": "jaxlm.evaluation",
    **dict.fromkeys(("Task", "TASKS", "task_for", "CausalLMTask", "MaskedLMTask",
                     "ClassificationTask", "GenerativeTask", "LOSSES"), "jaxlm.tasks"),
    # trained runs: load, evaluate, generate
    **dict.fromkeys(("Run", "load_run"), "jaxlm.run"),
    "evaluate": "jaxlm.evaluation:evaluate_run",  # a run on a dataset (`jaxlm evaluate`)
    # process settings (explicit, never on import)
    "reuse_freed_host_memory": "jaxlm.host_memory",
}

__all__ = ["__version__", *_LAZY, "generate"]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'jaxlm' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        value = getattr(module, attr or name)
    except AttributeError:
        raise AttributeError(f"module 'jaxlm' has no attribute {name!r} ({module_name} does not "
                             "define it)") from None
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """`jaxlm.generate` is the function `jaxlm.generate.generate`, although the submodule has the
    same name: the import system's binding of the submodule to the package is ignored, so the name
    does not depend on what was imported first. (`from jaxlm.generate import ...` is unaffected.)"""

    @property
    def generate(self) -> Any:
        from jaxlm.generate import generate
        return generate

    @generate.setter
    def generate(self, value: Any) -> None:  # the submodule, bound after its first import
        pass


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names above are lazy
    from jaxlm.config import (Config, DataConfig, LoRAConfig, MeshConfig, ModelConfig,
                              OptimConfig, TrainConfig, config_from_dict, load_config)
    from jaxlm.errors import ConfigError, JaxlmError
    from jaxlm.evaluation import evaluate_run as evaluate
    from jaxlm.generate import generate
    from jaxlm.host_memory import reuse_freed_host_memory
    from jaxlm.models import build_model
    from jaxlm.models.lora import apply_lora, merge_lora
    from jaxlm.models.attention import (AttentionFn, attention_names, register_attention,
                                        xla_attention)
    from jaxlm.run import Run, load_run
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import (LOSSES, TASKS, CausalLMTask, ClassificationTask, GenerativeTask,
                             MaskedLMTask, Task, task_for)
    from jaxlm.evaluation import Evaluator
    from jaxlm.train.finetune import finetune
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.pretrain import pretrain
    from jaxlm.train.state import TrainState
    from jaxlm.train.steps import CompiledSteps, compile_steps, put_batch, train_step
    from jaxlm.train.trainer import Hook, StepInfo, Trainer, stop_at
