"""vitdepth: layer-by-layer depth diagnostics for vision transformers.

Reproduces and extends the analysis of "Mechanisms of Non-Monotonic Scaling in Vision
Transformers" (arXiv 2511.21635): per-layer probes, token similarity, an Information
Scrambling Index and attention statistics, computed in one streaming pass.

Public API (imported on first use, so ``import vitdepth`` stays cheap):

Run an analysis:
    analyze(cfg=None, /, **fields) -> Path
        Analyse a model on a dataset; returns the run directory.
    AnalyzeConfig
        Every field of a run (model, data, out, samples, metrics, ...).
    create_model(spec, ...) -> TappedModel
        Build a model from a spec such as ``timm:vit_small_patch16_224``.
    list_adapters() -> list
        The registered model adapters.

Read results (notebook API):
    load_run(run_dir) -> RunResults
        A run: ``.to_pandas()``, ``.curve(metric, token_set)``, ``.plot(metric)``, ``.phases``.
    RunResults, Curve, Phases
        A loaded run, one curve as numpy arrays, ``phases.json`` as objects.
    load_compare(compare_dir) -> CompareResults
        A comparison: ``.to_pandas()`` (shifts), ``.models_table()``, ``.runs``.
    compare_runs(run_dirs, out, ...) -> Path
        Compare runs (e.g. the S, B, L sizes of a family) and write a comparison directory.

Errors:
    VitdepthError
        The one error class; its message is one line naming the problem and the fix.

Example:
    >>> import vitdepth
    >>> run = vitdepth.load_run("runs/vit_s")  # doctest: +SKIP
    >>> run.to_pandas().query("metric == 'token_sim'")  # doctest: +SKIP
    >>> run.plot("probe_acc", "mean")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from ._errors import VitdepthError as VitdepthError  # noqa: E402

# name -> module that defines it (relative to this package); loaded by __getattr__ on first use
_LAZY = {
    "AnalyzeConfig": ".analysis.run",
    "analyze": ".analysis.run",
    "create_model": ".models",
    "list_adapters": ".models",
    "load_run": ".results",
    "load_compare": ".results",
    "RunResults": ".results",
    "CompareResults": ".results",
    "Curve": ".results",
    "Phases": ".results",
    "compare_runs": ".compare",
}

__all__ = ["AnalyzeConfig", "CompareResults", "Curve", "Phases", "RunResults", "VitdepthError", "__version__",
           "analyze", "compare_runs", "create_model", "list_adapters", "load_compare", "load_run"]


def __getattr__(name: str):
    # Lazy public API: `import vitdepth` stays cheap (no torch import) for the CLI's --help.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vitdepth' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
