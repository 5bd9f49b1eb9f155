"""``vitdepth export``: log a finished run directory to Weights & Biases, MLflow or TensorBoard.

Reads only the run directory (:func:`vitdepth.results.load_run` / :func:`~vitdepth.results.load_phases`, which
refuse an interrupted or incomplete run) and logs, through a :mod:`vitdepth.trackers` sink:

- every per-layer curve as a line plot whose step is the layer index (``pre`` is −1), one chart per curve with
  the series ``value``, ``ci_low`` and ``ci_high`` (curve names: ``metric`` or ``metric.token_set``);
- the phase fits of ``phases.json`` as a table ``phases``;
- ``report.html`` as an HTML artifact.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ._errors import VitdepthError
from .results import RunResults, layer_order, load_phases, load_run
from .trackers import SINKS, Sink, create_sink

PHASE_COLUMNS = ["curve", "label", "breakpoint_1", "breakpoint_2", "breakpoint_1_depth", "breakpoint_2_depth", "r2"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an argparse ``subparsers`` object; its handler is ``args.handler``."""
    p = subparsers.add_parser("export", help="log a finished run to Weights & Biases, MLflow or TensorBoard",
                              description="Log a finished run directory to an experiment tracker: per-layer curves "
                                          "(step = layer index), the phase fits as a table, report.html.",
                              epilog="examples:\n  vitdepth export runs/S --to tensorboard --logdir tb\n"
                                     "  WANDB_MODE=offline vitdepth export runs/S --to wandb --project vit\n"
                                     "  vitdepth export runs/S --to mlflow --tracking-uri file:///tmp/mlruns",
                              formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("run_dir", help="a run directory written by vitdepth analyze")
    p.add_argument("--to", required=True, choices=sorted(SINKS), help="the tracker")
    p.add_argument("--project", default="vitdepth", help="W&B project (offline: set WANDB_MODE=offline)")
    p.add_argument("--experiment", default="vitdepth", help="MLflow experiment")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI, e.g. file:///path/mlruns (default: MLFLOW_TRACKING_URI or MLflow's)")
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (the run goes to LOGDIR/NAME)")
    p.add_argument("--name", default=None, help="tracker run name (default: the run directory's name)")
    p.set_defaults(handler=_handle)
    return p


def _handle(args: argparse.Namespace) -> int:
    print(run_export(args.run_dir, args.to, project=args.project, experiment=args.experiment,
                     tracking_uri=args.tracking_uri, logdir=args.logdir, name=args.name))
    return 0


def run_export(run_dir: str | Path, to: str, *, project: str = "vitdepth", experiment: str = "vitdepth",
               tracking_uri: str | None = None, logdir: str | Path = "runs", name: str | None = None,
               **sink_options: Any) -> str:
    """Log a finished run to ``to`` (``wandb``, ``mlflow`` or ``tensorboard``) and return a one-line summary.

    Args:
        run_dir: a finished run directory; an interrupted or incomplete one is refused.
        to: the tracker.
        project: W&B project.
        experiment: MLflow experiment.
        tracking_uri: MLflow tracking URI (None: MLflow's default).
        logdir: TensorBoard log directory; the run is written to ``logdir/name``.
        name: the tracker run's name (default: the run directory's name).
        **sink_options: passed to the sink (e.g. ``mode="offline"``, ``dir=`` for W&B).

    Raises:
        VitdepthError: the run directory is not a finished run, its ``phases.json`` does not belong to it, the
            tracker is unknown or its package is missing.
    """
    if to not in SINKS:
        raise VitdepthError(f"unknown tracker {to!r} for --to; choose one of {', '.join(sorted(SINKS))}")
    res = load_run(run_dir)  # before anything is created at the tracker
    phases = load_phases(res)
    name = name or res.path.resolve().name
    if to == "tensorboard":
        sink = create_sink(to, logdir=Path(logdir) / name, **sink_options)
        where = f"{Path(logdir) / name} (tensorboard --logdir {logdir})"
    elif to == "wandb":
        sink = create_sink(to, project=project, name=name, step_metric="layer", config=_config(res), **sink_options)
        run = sink.run
        where = f"W&B run {run.id} in project {project}" + (f" ({run.url})" if getattr(run, "url", None) else
                                                             f" (offline: {Path(run.dir).parent})")
    else:
        sink = create_sink(to, experiment=experiment, tracking_uri=tracking_uri, run_name=name,
                           params=_params(res), **sink_options)
        where = f"MLflow run {sink.run_id} in experiment {experiment}" + (f" at {tracking_uri}" if tracking_uri
                                                                          else "")
    try:
        n_curves, n_layers = log_curves(sink, res)
        n_fits = 0
        if phases is not None:
            rows = phase_rows(phases)
            sink.log_table("phases", PHASE_COLUMNS, rows)
            n_fits = len(rows)
        report = res.path / "report.html"
        if report.is_file():
            sink.log_html("report", report)
    finally:
        sink.close()
    parts = [f"{n_curves} curves over {n_layers} layers",
             f"{n_fits} phase fits" if phases is not None else "no phases (phases.json missing or unverifiable)",
             "report.html" if report.is_file() else "no report.html"]
    return f"exported {res.model} ({', '.join(parts)}) to {where}"


def log_curves(sink: Sink, res: RunResults) -> tuple[int, int]:
    """Log every ``(metric, token_set)`` curve, step = layer index; returns (curves, layers).

    Layer-major order: all curves at layer ℓ before any at ℓ+1, because W&B steps may only grow.
    """
    by_layer: dict[int, dict[str, dict[str, float]]] = {}
    curves = set()
    for r in res.rows:
        key = r["metric"] + (f".{r['token_set']}" if r["token_set"] else "")
        series = {s: float(r[s]) for s in ("value", "ci_low", "ci_high") if _finite(r.get(s))}
        if "value" not in series:
            continue
        by_layer.setdefault(layer_order(r["layer"]), {})[key] = series
        curves.add(key)
    for step in sorted(by_layer):
        for key, series in sorted(by_layer[step].items()):
            sink.log_scalars(key, series, step)
    return len(curves), len(by_layer)


def phase_rows(phases: dict) -> list[list[Any]]:
    """One row per fitted curve of ``phases.json`` (columns :data:`PHASE_COLUMNS`)."""
    rows = []
    for key, fit in sorted(phases.get("fits", {}).items()):
        b, d = fit["breakpoints_layer"], fit["breakpoints_depth"]
        rows.append([key, fit["label"], str(b[0]), str(b[1]), float(d[0]), float(d[1]),
                     None if fit.get("r2") is None else float(fit["r2"])])
    return rows


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _params(res: RunResults) -> dict[str, Any]:
    """Flat run parameters for MLflow: the model, the data and the seed."""
    model, data = res.run.get("model", {}), res.run.get("data", {})
    out = {"model": res.model, "model_spec": model.get("spec"), "depth": model.get("depth"),
           "embed_dim": model.get("embed_dim"), "data": data.get("spec"), "images": data.get("analyzed"),
           "seed": res.run.get("seed"), "vitdepth_version": res.run.get("vitdepth_version"),
           "run_dir": str(res.path.resolve())}
    return {k: v for k, v in out.items() if v is not None}


def _config(res: RunResults) -> dict[str, Any]:
    """W&B config: the same fields, plus the analysis configuration recorded in run.json."""
    return {**_params(res), "config": res.run.get("config", {})}


if __name__ == "__main__":  # pragma: no cover - ``python -m vitdepth.export`` until the CLI wires the command
    parser = argparse.ArgumentParser(prog="vitdepth")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    try:
        sys.exit(ns.handler(ns))
    except VitdepthError as e:
        print(f"vitdepth: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
