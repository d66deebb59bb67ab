"""Training curves of one or more runs, from their metrics.jsonl, as one PNG (matplotlib, Agg).

Panels: loss (train solid, validation dashed with markers), learning rate, throughput (tokens/s)
and, when a classifier is among the runs, validation accuracy. Each run keeps one colour across
the panels, so several runs overlay into a comparison.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jaxlm.errors import DataError
from jaxlm.run import Run
from jaxlm.run_info import series


FORMATS = (".png", ".svg", ".pdf")  # the image formats `--out` may name, by extension


def _smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    if window <= 1:
        return ys
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def default_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names, or the paths as given when two runs share a name."""
    names = [Path(r).name for r in run_dirs]
    return names if len(set(names)) == len(names) else [str(r) for r in run_dirs]


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *,
              labels: Sequence[str] | None = None, title: str | None = None,
              smooth: int = 1, log_loss: bool = False, dpi: int = 120) -> Path:
    """Draw the curves of `run_dirs` into `out` (PNG, SVG or PDF by extension); returns the path.

    smooth: moving-average window over logged training points (validation is never smoothed).
    """
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed (servers, CI, notebooks)
    import matplotlib.pyplot as plt

    if Path(out).suffix.lower() not in FORMATS:
        raise DataError(f"--out '{out}' names no image format jaxlm plot writes: end it in "
                        f"{', '.join(FORMATS)} (e.g. {Path(out).stem or 'curves'}.png).",
                        culprit="--out")
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise DataError("No run directory given. Pass one or more, e.g. jaxlm plot "
                        "runs/shakespeare_char --out curves.png.", culprit="RUN_DIR")
    labels = list(labels) if labels else default_labels(runs)
    if len(labels) != len(runs):
        raise DataError(f"{len(labels)} labels for {len(runs)} runs: give one label per run "
                        "(comma-separated, in the order of the run directories).",
                        culprit="--labels")
    data = [_read_run(run) for run in runs]
    show_acc = any(info["task"] == "classification" for info, _ in data)
    panels = ["loss", "lr", "throughput"] + (["accuracy"] if show_acc else [])
    ncols = 2 if len(panels) == 4 else 3
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    ax = dict(zip(panels, axes.flat))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((info, records), label) in enumerate(zip(data, labels)):
        _draw_run(ax, info, records, label, colors[i % len(colors)], smooth)
    _style_panels(ax, log_loss)
    for a in list(axes.flat)[len(panels):]:
        a.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _read_run(run: Path) -> tuple[dict, list[dict]]:
    """(Run.describe, metric records) of a run that has logged metrics."""
    info = Run(run).describe(count_params=False)
    records = Run(run).metric_records()
    if not records:
        raise DataError(f"'{run}' has no metrics yet (metrics.jsonl is missing or empty). "
                        "Plot it after its first logged step (train.log_every).",
                        culprit=str(run))
    return info, records


def _draw_run(ax: dict, info: dict, records: list[dict], label: str, c: str,
              smooth: int) -> None:
    """One run's curves, in colour `c`, on the panels `ax` (name -> matplotlib Axes)."""
    xs, ys = series(records, "train", "loss")
    if xs:
        ax["loss"].plot(xs, _smooth(ys, smooth), color=c, lw=1.4, label=f"{label} train")
    xs, ys = series(records, "val", "loss")
    if xs:
        ax["loss"].plot(xs, ys, color=c, lw=1.4, ls="--", marker="o", ms=3,
                        label=f"{label} val")
    xs, ys = series(records, "train", "lr")
    ax["lr"].plot(xs, ys, color=c, lw=1.4, label=label)
    xs, ys = series(records, "train", "tokens_per_s")
    if xs:
        ax["throughput"].plot(xs, _smooth(ys, smooth), color=c, lw=1.4, label=label)
    if "accuracy" in ax:
        xs, ys = series(records, "val", "accuracy")
        if xs and info["task"] == "classification":
            ax["accuracy"].plot(xs, ys, color=c, lw=1.4, marker="o", ms=3, label=f"{label} val")
            best = info["best"]
            if best and best["metric"] == "accuracy":
                ax["accuracy"].scatter([best["step"]], [best["value"]], color=c, marker="*",
                                       s=120, zorder=3)


_TITLES = {"loss": "loss (train solid, validation dashed)", "lr": "learning rate",
           "throughput": "throughput (tokens/s)", "accuracy": "validation accuracy (* best kept)"}


def _style_panels(ax: dict, log_loss: bool) -> None:
    for name, a in ax.items():
        a.set_title(_TITLES[name], fontsize=10)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        if a.get_lines():
            a.legend(fontsize=7)
    if log_loss:
        ax["loss"].set_yscale("log")
    ax["lr"].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax["throughput"].set_ylim(bottom=0)  # dips on a shared machine should not look like a cliff
