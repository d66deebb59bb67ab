"""The run directory: one object for the folder a run lives in.

A run directory is self-describing. Training writes `config.yaml` (the resolved config) before its
first step, then `model.json` (resolved model config, task and head), `tokenizer.json`,
`metrics.jsonl`, `tensorboard/`, `checkpoints/STEP/` (the train state), `best/STEP/` (fine-tuning:
the best validation parameters) and, when it finishes, `summary.json`. `jaxlm evaluate` adds
`eval_SPLIT.json`, `jaxlm convert` `hf_import.json`. Rerunning the same command on the same folder
resumes it.

    run = Run("runs/sst2")
    loaded = run.load()                      # the best checkpoint (else the latest)
    run.checkpoint_steps(), run.metric_records(), run.describe()

`Run` is the one place that knows these files: the trainer, evaluation, prediction, generation,
`jaxlm info` / `runs` and Hugging Face export all go through it. Loading reads only the parameters
from orbax, so nothing here imports the training package.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jaxlm.atomic import file_above, write_text_atomic, writing
from jaxlm.config import Config, ModelConfig, config_from_dict, migrate_raw, save_config, to_dict
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.run_describe import KEY_METRIC, describe  # noqa: F401  (KEY_METRIC re-exported)
from jaxlm.run_spec import read_model_spec, spec_model_config
from jaxlm.run_start import (HISTORY_FILE, OPTIM_HINT, adjustable_changes, not_a_start,
                             optim_refusals, record, refusal, run_files)
from jaxlm.run_start import pick as _pick

# Sections that must match for a run directory to be resumed with a config (mesh, step count,
# logging and evaluation cadence may change between sessions).
# The optimizer's hyper-parameters may change too (`jaxlm.run_start.ADJUSTABLE`); its name, and
# turning a stage on or off, change the saved optimizer state (`jaxlm.run_start.optim_refusals`).
IDENTITY_KEYS = ("model", "data", "train.task", "train.batch_size", "train.seed",
                 "train.grad_accum", "finetune.lora")
# ... and, per task, the settings that change what its examples are
TASK_IDENTITY_KEYS = {"generative": ("generative.prompt_template", "generative.target_template",
                                     "generative.chat_template", "generative.packing",
                                     "generative.overlong")}

# What a run directory holds: nothing but training (and `--overwrite`) may replace these.
RUN_FILES = ("config.yaml", "model.json", "tokenizer.json", "summary.json", "metrics.jsonl",
             "hf_import.json", "checkpoints", "checkpoints.corrupt", "best", "tensorboard",
             "chat_template.jinja", HISTORY_FILE, "base", "base.partial", "trackers")

# Checkpoint folders and the orbax item in each step folder that holds the parameters.
CHECKPOINT_ITEMS = {"checkpoints": "state", "best": "params"}



@dataclass
class LoadedRun:
    """A trained model ready for inference on one device (see `Run.load`)."""

    run_dir: Path
    cfg: Config | None  # the run's config (None for a Hugging Face folder)
    model_cfg: ModelConfig  # resolved
    task: str  # causal, masked or classification
    head: dict  # num_labels, class_names, pooling, pooler (classifiers)
    tokenizer: Any  # jaxlm.data.tokenizer.TextTokenizer
    model: Any  # nnx.Module holding the checkpoint's parameters
    checkpoint: str  # which checkpoint was loaded, for reports ("best (step 40)", "step 60")

    @property
    def class_names(self) -> list[str]:
        """The classifier's label names, in logit order."""
        return list(self.head.get("class_names", []))


class Run:
    """A run directory: its named files, the create / resume / overwrite rules, and readers for
    what a run wrote (config, model spec, tokenizer, metrics, checkpoints, summary, model)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run('{self.path}')"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def for_config(cls, cfg: Config, run_dir: str | Path | None = None) -> Run:
        """The run of a config: --run, else the config's run_dir, else runs/<name> (a name is
        one plain folder name, so a run never lands outside runs/ by its name)."""
        if run_dir or cfg.run_dir:
            return cls(run_dir or cfg.run_dir)
        name = cfg.name
        if (not name or name in (".", "..") or Path(name).name != name or "\\" in name
                or "\0" in name):
            raise ConfigError(f"name {name!r} is not a plain folder name, so runs/<name> would "
                              "put the run somewhere else. Use a name without '/', '\\' or "
                              "'..', or pass --run PATH (or set run_dir) to put the run in "
                              "another place.", culprit="name")
        return cls(Path("runs") / name)

    # --- named paths -----------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.yaml")
    model_spec_path = property(lambda self: self.path / "model.json")
    tokenizer_path = property(lambda self: self.path / "tokenizer.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    best_dir = property(lambda self: self.path / "best")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    import_info_path = property(lambda self: self.path / "hf_import.json")
    base_dir = property(lambda self: self.path / "base")  # a LoRA run's frozen base

    def eval_path(self, split: str) -> Path:
        """Where `jaxlm evaluate` writes its report on `split`."""
        return self.path / f"eval_{split}.json"

    @staticmethod
    def is_run_dir(path: str | Path) -> bool:
        """A jaxlm run directory: a config.yaml beside something only a run writes (its model
        spec, tokenizer, metrics or checkpoints), so a project folder that merely has a
        config.yaml is not mistaken for one."""
        p = Path(path)
        return (p / "config.yaml").is_file() and any(
            (p / name).exists() for name in RUN_FILES if name != "config.yaml")

    # --- create / resume / overwrite -------------------------------------------------------
    def prepare(self, cfg: Config, overwrite: bool = False) -> bool:
        """Create or check the run directory for `cfg`; returns True when it holds a run to resume.

        A directory holding a run with a different config is refused unless `overwrite`, so a
        finished run is never clobbered by accident; without `overwrite` a folder is cleared only
        when it holds nothing but the files of a start that never trained (`jaxlm.run_start`).
        """
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"Run directory '{run_dir}' exists and is a file. Choose another "
                              "--run.", culprit=str(run_dir))
        above = file_above(run_dir)
        if above is not None:
            raise ConfigError(f"Run directory '{run_dir}' cannot be created: '{above}' is a file. "
                              "Choose another --run.", culprit=str(run_dir))
        if overwrite:
            self._clear()
        elif self.config_path.is_file():
            resume = self._check_resume(cfg)
            if resume is not None:
                return resume
        elif run_dir.is_dir() and any(p.suffix != ".tmp" for p in run_dir.iterdir()):
            # (a .tmp file: a first write cut short)
            raise ConfigError(f"Run directory '{run_dir}' is not empty and is not a jaxlm run (no "
                              "config.yaml). Choose an empty or new --run, or pass --overwrite.",
                              culprit=str(run_dir))
        with writing(self.config_path, "the run's config"):
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.config_path)
        return False

    def differences(self, cfg: Config) -> tuple[dict, dict, list[str]]:
        """(the saved config, `cfg` as a dict, the keys that differ and make `cfg` another run
        than the one saved here)."""
        old = migrate_raw(_read_yaml(self.config_path))  # train.objective -> train.task
        new = to_dict(cfg)
        keys = IDENTITY_KEYS + TASK_IDENTITY_KEYS.get(cfg.train.task, ())
        diffs = [k for k in keys if _pick(old, k) != _pick(new, k)]
        return old, new, diffs + optim_refusals(old, new)

    def matches(self, cfg: Config) -> bool:
        """Whether this folder holds `cfg`'s run: it resumes with `cfg`, perhaps with changed
        optimizer hyper-parameters (so its tokenizer is the one to use)."""
        return self.config_path.is_file() and not self.differences(cfg)[2]

    def _check_resume(self, cfg: Config) -> bool | None:
        """Whether the run saved here resumes with `cfg` (None: it was cleared, start afresh).
        Changed optimizer hyper-parameters are accepted, announced and kept in
        config_history.jsonl with their old values."""
        run_dir = self.path
        old, new, diffs = self.differences(cfg)
        steps = self.checkpoint_steps("checkpoints")
        if diffs and not steps + self.checkpoint_steps("best"):
            self._clear_start(diffs, old)  # refused unless only a start that never trained
            return None
        if diffs:
            raise ConfigError(
                f"Run directory '{run_dir}' holds a run with a different config ({', '.join(diffs)} "
                "differ), so it cannot be resumed with this one. Use a new --run, rerun with "
                "the original config to resume, or pass --overwrite to discard the old run."
                + (OPTIM_HINT if any(k.startswith("optim.") for k in diffs) else ""),
                culprit=str(run_dir))
        changes = adjustable_changes(old, new)
        with writing(self.config_path, "the run's config"):
            if changes:
                record(run_dir, steps[-1] if steps else None, changes)
            if old != new:  # e.g. more steps: config.yaml describes the latest invocation
                save_config(cfg, self.config_path)
        return self.checkpoints_dir.is_dir()

    def _clear_start(self, diffs: list[str], old: dict) -> None:
        """Clear a start with another config that never trained, or refuse to touch a folder
        that holds more (anything jaxlm did not write for such a start)."""
        more = not_a_start(self.path, old)
        if not more:
            from jaxlm.checkpoint import warn
            warn(f"'{self.path}' holds only the files of a start with a different config "
                 f"({', '.join(diffs)} differ) that never trained a step; starting it again "
                 "with this config.")
            self._clear()
            return
        raise refusal(self.path, diffs, more, run_files(self.path, RUN_FILES))

    def _clear(self) -> None:
        """Remove what a run wrote (and nothing else in the folder): --overwrite, or a start that
        never trained."""
        for name in run_files(self.path, RUN_FILES):
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()

    # --- config, model spec, tokenizer ----------------------------------------------------
    def raw_config(self) -> dict:
        """config.yaml as a mapping, as written (older versions' keys included)."""
        if not self.config_path.is_file():
            raise CheckpointError(f"'{self.path}' is not a jaxlm run directory (no config.yaml). "
                                  "Pass the --run of a pretrain or finetune run.",
                                  culprit=str(self.path))
        return _read_yaml(self.config_path)

    def config(self) -> Config:
        """The resolved config saved in the run directory (an older version's spellings read
        silently: the file is the run's record, not something the user typed)."""
        raw = migrate_raw(self.raw_config())
        try:
            return config_from_dict(raw)
        except ConfigError as e:
            raise CheckpointError(f"The config saved in '{self.config_path}' is not valid for this "
                                  f"jaxlm ({e}). It was written by another version or edited by "
                                  "hand.", culprit=str(self.config_path)) from None

    def write_model_spec(self, model_cfg: ModelConfig, task: str, *, lora: dict | None = None,
                         **head: Any) -> None:
        """model.json: the resolved model config, task and head (and the LoRA adapters' settings,
        `jaxlm.models.lora.lora_spec`), so inference and export need no other run or config."""
        spec = {"task": task, "model": dataclasses.asdict(model_cfg), "head": head}
        if lora:
            spec["lora"] = lora
        write_text_atomic(self.model_spec_path, json.dumps(spec, indent=2))

    def model_spec(self) -> dict:
        """model.json as {"task", "model", "head"} (runs written before 0.2 say "objective")."""
        if not self.model_spec_path.is_file():
            raise CheckpointError(f"'{self.path}' has no model.json: it is not a finished jaxlm "
                                  "run directory. Pass the --run of a pretrain or finetune "
                                  "run.", culprit=str(self.path))
        return read_model_spec(self.model_spec_path)

    def tokenizer(self):
        """The run's tokenizer (a TextTokenizer)."""
        from jaxlm.data.tokenizer import TextTokenizer

        if not self.tokenizer_path.is_file():
            raise CheckpointError(f"Run directory '{self.path}' has no tokenizer.json; it was not "
                                  "written by jaxlm, or is incomplete.",
                                  culprit=str(self.tokenizer_path))
        return TextTokenizer.load(self.tokenizer_path)

    def save_tokenizer(self, tokenizer) -> None:
        """Write tokenizer.json."""
        tokenizer.save(self.tokenizer_path)

    # --- metrics, summary -----------------------------------------------------------------
    def metric_records(self) -> list[dict]:
        """Records of metrics.jsonl, one per (step, split) in step order: a resumed run's
        repeated records keep the last one, and a torn last line (a run killed or still writing)
        is skipped."""
        if not self.metrics_path.is_file():
            return []
        latest: dict[tuple[int, str], dict] = {}
        for line in self.metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            step = rec.get("step") if isinstance(rec, dict) else None
            if (isinstance(step, (int, float)) and not isinstance(step, bool)
                    and math.isfinite(step) and step == int(step) and "split" in rec):
                rec["step"] = int(step)  # a step that is not a whole number: a damaged record
                latest[(rec["step"], str(rec["split"]))] = rec
        return [latest[k] for k in sorted(latest)]

    def write_summary(self, summary: dict) -> None:
        """Write summary.json (dataclasses and numpy scalars made JSON-able). A resumed run (or a
        finished one run again, which only re-reports) adds the wall time of the summary it
        replaces and keeps its throughput when this invocation trained no step, so neither is
        lost."""
        if summary.get("resumed_from") and self.summary_path.is_file():
            old = self.summary() or {}
            summary = dict(summary)  # the caller's dict stays as it was
            if isinstance(old.get("wall_s"), (int, float)) and summary.get("wall_s") is not None:
                summary["wall_s"] += old["wall_s"]
            if summary.get("tokens_per_s") is None:
                summary["tokens_per_s"] = old.get("tokens_per_s")
        write_text_atomic(self.summary_path, json.dumps(summary, indent=2, default=_json_default))

    def summary(self) -> dict | None:
        """summary.json (None until the run finishes, or when unreadable)."""
        return _read_json(self.summary_path)

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_steps(self, kind: str = "checkpoints") -> list[int]:
        """Steps of the finished checkpoints in checkpoints/ (train states) or best/ (the best
        parameters): digit-named step folders holding their orbax item (a step folder is renamed
        into place when complete)."""
        folder, item = self.path / kind, CHECKPOINT_ITEMS[kind]
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir()
                      if p.name.isdigit() and (p / item).is_dir())

    def checkpointer(self, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        """A `jaxlm.checkpoint.Checkpointer` over checkpoints/."""
        from jaxlm.checkpoint import Checkpointer

        return Checkpointer(self.checkpoints_dir, keep=keep, async_save=async_save,
                            read_only=read_only)

    def _checkpoint_item(self, checkpoint: str | int) -> tuple[Path, str | None, str]:
        """(orbax item folder, subtree holding the params or None, description) for "best" (a
        fine-tuning run's best validation parameters, else the latest), "latest" or a step."""
        from jaxlm.checkpoint import latest_intact, require_intact

        if checkpoint == "best":
            best = latest_intact(self.best_dir, self.checkpoint_steps("best"), "best checkpoint")
            if best is not None:
                return self.best_dir / str(best) / "params", None, f"best (step {best})"
            checkpoint = "latest"
        folder = self.checkpoints_dir
        steps = self.checkpoint_steps()
        if not steps:
            raise CheckpointError(f"No checkpoint found in '{folder}'. Train or convert into this "
                                  "run directory first.", culprit=str(self.path))
        if checkpoint == "latest":
            step = latest_intact(folder, steps)
            if step is None:
                raise CheckpointError(f"Every checkpoint in '{folder}' is damaged (see the "
                                      "warnings above); restore them from a backup.",
                                      culprit=str(folder))
        else:
            try:
                step = int(checkpoint)
            except ValueError:
                raise CheckpointError(f"The checkpoint must be best, latest or a step number, got "
                                      f"'{checkpoint}'.", culprit=str(checkpoint)) from None
            if step not in steps:
                raise CheckpointError(f"'{self.path}' has no checkpoint at step {step}; it has "
                                      f"steps {', '.join(map(str, steps))}.",
                                      culprit=str(self.path))
            require_intact(folder, step)
        return folder / str(step) / "state", "params", f"step {step}"

    def read_params(self, checkpoint: str | int = "latest") -> tuple[dict, str]:
        """({param path: numpy array}, which checkpoint) of "best", "latest" or a step: only the
        parameters are read, onto the host; damaged steps are skipped (latest, best) or refused
        (a step), never moved."""
        from jaxlm.checkpoint import read_params

        path, key, which = self._checkpoint_item(checkpoint)
        return read_params(path, key), which

    # --- loading the model ----------------------------------------------------------------
    def load(self, checkpoint: str | int = "best") -> LoadedRun:
        """The run's model holding a checkpoint's parameters: "best" (a fine-tuning run's best
        validation checkpoint, else the latest), "latest" or a step number. The parameters sit
        on the default device; `Generator(model, mesh=...)` shards them like training."""
        from jaxlm.params import model_from_params

        cfg = self.config()
        tok = self.tokenizer()
        flat, which = self.read_params(checkpoint)
        spec = (self.model_spec() if self.model_spec_path.is_file()
                else self._spec_from_config(cfg, flat, tok))
        model_cfg = spec_model_config(spec)
        head = dict(spec.get("head") or {})
        if spec.get("lora"):  # a LoRA run's checkpoints hold adapters and heads; the base: base/
            from jaxlm.checkpoint import read_frozen_base
            flat = {**read_frozen_base(self.base_dir), **flat}
        model = model_from_params(model_cfg, spec["task"], head, flat, lora=spec.get("lora"),
                                  where=f"The checkpoint in '{self.path}' ({which})")
        return LoadedRun(self.path, cfg, model_cfg, spec["task"], head, tok, model, which)

    def _spec_from_config(self, cfg: Config, flat: dict, tok) -> dict:
        """A model.json-like spec for runs that lack one (older runs): the config plus what the
        parameter shapes say (vocabulary, heads)."""
        from jaxlm.params import model_kwargs, task_of

        emb = flat.get(("backbone", "embeddings", "token", "embedding"))
        if emb is None:
            raise CheckpointError(f"The checkpoint in '{self.path}' has no backbone token "
                                  "embedding; it is not a jaxlm model checkpoint.",
                                  culprit=str(self.path))
        pad = cfg.model.pad_token_id if cfg.model.vocab_size else (tok.pad_id or 0)
        mcfg = dataclasses.replace(cfg.model, vocab_size=int(emb.shape[0]), pad_token_id=pad)
        task = task_of(flat) or cfg.train.task
        head = model_kwargs(mcfg, flat, task, _find_key(self.raw_config(), "pooling"))
        return {"task": task, "model": dataclasses.asdict(mcfg), "head": head}

    # --- description (jaxlm info, jaxlm runs) ---------------------------------------------
    def describe(self, *, count_params: bool = True) -> dict[str, Any]:
        """Everything `jaxlm info` shows about the run, as a JSON-ready dict, from its files alone
        (no checkpoint restore): see `jaxlm.run_describe.describe`."""
        return describe(self, count_params=count_params)

    def read_json(self, path: str | Path) -> Any:
        """A JSON file of the run (a named path, or one relative to the run directory); None
        when it is missing or unreadable (e.g. torn by a killed write)."""
        path = Path(path)
        return _read_json(path if path.is_relative_to(self.path) else self.path / path)


def load_run(path: str | Path, checkpoint: str | int = "best") -> LoadedRun:
    """`Run(path).load(checkpoint)`: a run's model, config, tokenizer and head."""
    return Run(path).load(checkpoint)


def check_output_path(path: str | Path, flag: str, *, folder: bool = False,
                      run_ok: bool = False) -> None:
    """Refuse an output path that would overwrite part of an existing jaxlm run (its config,
    model, tokenizer, metrics or checkpoints), a folder where a file is expected, or a path
    below a regular file (nothing can be written there). `run_ok`: the folder may be a run
    directory (a command that writes runs checks that itself)."""
    p = Path(path).absolute()
    above = file_above(p)
    if above is not None:
        raise ConfigError(f"{flag} '{path}' cannot be written: '{above}' is a file, not a "
                          "folder. Choose a path in a folder.", culprit=flag)
    if not folder and p.is_dir():
        raise ConfigError(f"{flag} '{path}' is a directory; give the path of a file to write.",
                          culprit=flag)
    if folder and p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} '{path}' is an existing file; give a folder to write into.",
                          culprit=flag)
    if folder and not run_ok and Run.is_run_dir(p):
        raise ConfigError(f"{flag} '{path}' is a jaxlm run directory; writing there would "
                          "replace the run's own files. Choose another folder.", culprit=flag)
    for parent in p.parents:
        if Run.is_run_dir(parent):
            part = p.relative_to(parent).parts[0]
            if part in RUN_FILES:
                raise ConfigError(f"{flag} '{path}' would overwrite '{part}' of the jaxlm run in "
                                  f"'{parent}'. Write the output somewhere else.", culprit=flag)
            return


def _find_key(raw: Any, key: str) -> Any:
    """The first value of `key` anywhere in a nested config mapping (None when absent)."""
    if isinstance(raw, dict):
        if key in raw:
            return raw[key]
        for v in raw.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{path}' is not readable YAML ({str(e).splitlines()[0]}): the run "
                              "directory is damaged. Restore config.yaml from a backup, or start "
                              "a new --run.", culprit=str(path)) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{path}' does not hold a config mapping: the run directory is "
                              "damaged. Restore config.yaml from a backup, or start a new --run.",
                              culprit=str(path))
    return raw


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return float(o)

