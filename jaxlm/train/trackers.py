"""Experiment trackers behind one interface (Levanter's style): TensorBoard, Weights & Biases and
MLflow each log the config, the metrics of every logged step and the final summary.

`metrics.jsonl` is not a tracker here: `jaxlm.train.logger.MetricsLogger` always writes it (jaxlm's
own commands read it) and fans each record out to the trackers `logging.trackers` names.

Failures are split by when they happen, so a run is never lost to a dashboard:
- at start-up (`check_trackers`, then `open_trackers`): a missing package, a W&B login that is
  not there, an MLflow server that does not answer raise a one-paragraph `ConfigError`, before
  any training step;
- mid-run: `MetricsLogger` warns once and switches the tracker off; training carries on.

Resume: the W&B and MLflow run ids live in `<run>/trackers/state.json`, so a resumed run logs
into the same tracker runs.
"""
from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from jaxlm.atomic import write_text_atomic
from jaxlm.errors import ConfigError

# <run>/trackers/ holds state.json (the tracker run ids a resumed run logs into again), wandb/
# (W&B's files, offline runs included) and mlruns/ (the default local MLflow store)
FOLDER, STATE_FILE = "trackers", "state.json"
INSTALL = "pip install 'jaxlm[trackers]'"
WANDB_OFFLINE = ("log offline instead: --set logging.wandb.mode=offline (or WANDB_MODE=offline); "
                 "`wandb sync <run>/trackers/wandb/offline-run-*` uploads it later")


class Tracker:
    """One logging backend. `resumed` is True when it continues a tracker run of an earlier
    invocation (that run already holds the steps logged before the kill)."""

    name = "tracker"
    resumed = False

    def log_config(self, flat: dict[str, Any]) -> None:
        """The experiment's config, flattened to dotted keys (hyperparameters)."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Scalars of one step, keyed `split/name` (train/loss, val/accuracy, ...)."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary.json contents, once at the end."""

    def close(self, status: str = "finished") -> None:
        """Flush and end the tracker run; status is finished, failed or stopped."""


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch. tensorboardX imports torch when
    it is installed (only to accept its tensors), which costs a jaxlm process seconds of start-up
    and a couple of hundred MB of resident memory for nothing: jaxlm logs floats."""
    import sys
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]  # torch imports normally afterwards
    return SummaryWriter


class TensorBoardTracker(Tracker):
    """Event files in `<run>/tensorboard` (tensorboardX: no TensorFlow needed)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, resumed_from: int = 0):
        SummaryWriter = summary_writer_class()
        # TensorBoard hides what a killed run logged after the checkpoint it resumes from
        self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                purge_step=resumed_from + 1 if resumed_from else None)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def close(self, status: str = "finished") -> None:
        self.tb.flush()
        self.tb.close()


def wandb_mode(mode: str) -> str:
    """The W&B mode in effect: the config's, else $WANDB_MODE, else online."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    return {"dryrun": "offline", "run": "online", "": "online"}.get(env, env)


class WandbTracker(Tracker):
    """A W&B run named after the run directory; its files (offline too) in <run>/trackers/wandb."""

    name = "wandb"

    def __init__(self, cfg: Any, run_dir: Path, run_id: str | None):
        import wandb
        self.resumed = run_id is not None
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, mode=wandb_mode(cfg.mode),
            dir=str(run_dir / FOLDER), name=run_dir.name, id=run_id,
            resume="allow" if run_id else None,            settings=wandb.Settings(console="off"))
        self.id = self.run.id

    def log_config(self, flat: dict[str, Any]) -> None:
        # a resume may change optimizer hyper-parameters (jaxlm records them in config_history)
        self.run.config.update(flat, allow_val_change=True)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(flatten(summary, "summary", "/"))

    def close(self, status: str = "finished") -> None:
        self.run.finish(exit_code={"finished": 0, "stopped": 143}.get(status, 1))


def mlflow_uri(cfg: Any, run_dir: Path) -> str:
    """The tracking URI in effect: the config's, else $MLFLOW_TRACKING_URI, else a local store
    in `<run>/trackers/mlruns` (works offline with mlflow-skinny: no server, no database)."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or (run_dir / FOLDER / "mlruns").resolve().as_uri()


def _is_file_store(uri: str) -> bool:
    from urllib.parse import urlparse
    return urlparse(uri).scheme in ("", "file") and uri != "databricks"


class MlflowTracker(Tracker):
    """An MLflow run (named after the run directory) in experiment `logging.mlflow.experiment`;
    the summary is a `summary.json` artifact plus its numbers as `summary/...` metrics."""

    name = "mlflow"

    def __init__(self, cfg: Any, run_dir: Path, run_id: str | None, uri: str):
        from mlflow import MlflowClient
        if _is_file_store(uri):  # MLflow 3 keeps its folder store behind an opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
        self.run_id = run_id if run_id and self._exists(run_id) else None
        self.resumed = self.run_id is not None
        if self.resumed:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # deleted, or another store: start a new run
            return False

    def log_config(self, flat: dict[str, Any]) -> None:
        from mlflow.entities import Param
        # MLflow refuses to change a logged param: a resume logs only keys it does not hold yet
        have = self.client.get_run(self.run_id).data.params if self.resumed else {}
        params = [Param(k, _param_value(v)) for k, v in flat.items() if k not in have]
        for i in range(0, len(params), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=params[i:i + 100], synchronous=True)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in metrics.items()])

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")
        numbers = {k: float(v) for k, v in flatten(summary, "summary", "/").items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)}
        self.log_metrics(int(summary.get("step") or 0), numbers)

    def close(self, status: str = "finished") -> None:
        self.client.set_terminated(self.run_id, status={"finished": "FINISHED",
                                                        "stopped": "KILLED"}.get(status, "FAILED"))


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text[:6000]  # MLflow's longest param value


def flatten(tree: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts as one level of `a.b.c` keys (an empty dict stays a value)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


# --- start-up ---------------------------------------------------------------------------------
def _need(module: str, tracker: str, load: Callable[[], Any] | None = None) -> None:
    import importlib
    try:
        load() if load else importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"logging.trackers names '{tracker}', but its package '{module}' cannot be imported "
            f"({e}). Install it with `{INSTALL}` (or `pip install {module}`), or remove "
            f"'{tracker}' from logging.trackers.", culprit="logging.trackers") from None


def check_trackers(logging: Any) -> None:
    """Fail before any training work when a tracker cannot log: its package is missing, W&B is
    online without credentials, or the MLflow server does not answer."""
    if "tensorboard" in logging.trackers:
        _need("tensorboardX", "tensorboard", summary_writer_class)
    if "wandb" in logging.trackers:
        _need("wandb", "wandb")
        if wandb_mode(logging.wandb.mode) == "online" and not _wandb_credentials():
            raise ConfigError(
                "logging.trackers names 'wandb' in online mode, but no W&B API key was found. "
                "Run `wandb login` or set WANDB_API_KEY, or " + WANDB_OFFLINE + ".",
                culprit="logging.wandb.mode")
    if "mlflow" in logging.trackers:
        _need("mlflow", "mlflow")
        uri = logging.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith(("http://", "https://")):
            _check_server(uri)


def _wandb_credentials() -> bool:
    """Whether W&B finds an API key without prompting (True when this wandb version cannot be
    asked: `wandb.init` then reports it)."""
    try:
        from wandb.sdk.lib.wbauth.authenticate import authenticate_session
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        return authenticate_session(host=host, source="jaxlm", prompt=False,
                                    update_session=False) is not None
    except (ImportError, TypeError, AttributeError):
        return True
    except Exception:  # a malformed key: wandb.init names it
        return True


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Any HTTP answer (even 401/404) means the server is there; no answer is a ConfigError."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"The MLflow tracking server at {uri} does not answer ({reason}). Start it "
            "(`mlflow server`), fix logging.mlflow.tracking_uri / MLFLOW_TRACKING_URI, or log to "
            "a local store with no server: --set logging.mlflow.tracking_uri= (empty: "
            "<run>/trackers/mlruns) or file:PATH.", culprit="logging.mlflow.tracking_uri") from None


def read_state(run_dir: Path) -> dict[str, Any]:
    """The tracker run ids of earlier invocations ({} when none)."""
    try:
        return json.loads((run_dir / FOLDER / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def open_trackers(cfg: Any, run_dir: Path, resumed_from: int) -> list[Tracker]:
    """The trackers `cfg.logging.trackers` names, started (or resumed) with the config logged.
    A tracker that cannot start raises a ConfigError naming it and the fix; those already
    started are closed first."""
    from jaxlm.config import to_dict
    logging, names = cfg.logging, dict.fromkeys(cfg.logging.trackers)
    check_trackers(logging)
    flat = flatten(to_dict(cfg))
    state = read_state(run_dir) if resumed_from else {}
    out: list[Tracker] = []
    if "wandb" in names or "mlflow" in names:
        (run_dir / FOLDER).mkdir(exist_ok=True)
    try:
        if "tensorboard" in names:
            out.append(TensorBoardTracker(run_dir, resumed_from))
        if "wandb" in names:
            out.append(_start("wandb", lambda: WandbTracker(
                logging.wandb, run_dir, state.get("wandb", {}).get("id"))))
            state["wandb"] = {"id": out[-1].id}
        if "mlflow" in names:
            uri = mlflow_uri(logging.mlflow, run_dir)
            old = state.get("mlflow", {})
            out.append(_start("mlflow", lambda: MlflowTracker(
                logging.mlflow, run_dir, old.get("run_id") if old.get("uri") == uri else None,
                uri)))
            state["mlflow"] = {"run_id": out[-1].run_id, "uri": uri}
        for t in out:
            _start(t.name, lambda: t.log_config(flat))
    except BaseException:
        for t in out:
            try:
                t.close("failed")
            except Exception:  # the start-up error is the one to report
                pass
        raise
    if "wandb" in state or "mlflow" in state:
        write_text_atomic(run_dir / FOLDER / STATE_FILE, json.dumps(state, indent=2))
    return out


def _start(name: str, make: Any) -> Any:
    """`make()`, its failure turned into a one-paragraph ConfigError with the fix."""
    try:
        return make()
    except ConfigError:
        raise
    except Exception as e:
        fix = (f"Check the login (`wandb login`, WANDB_API_KEY) and network, or {WANDB_OFFLINE}"
               if name == "wandb" else
               "Check logging.mlflow.tracking_uri (or MLFLOW_TRACKING_URI) and the server, or "
               "log to a local store with no server: --set logging.mlflow.tracking_uri= (empty: "
               "<run>/trackers/mlruns)")
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"The {name} tracker could not start ({type(e).__name__}: {first}). "
                          f"{fix}.", culprit="logging.trackers") from None
