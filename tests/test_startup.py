"""Start-up: a command imports only what it needs (issue "Fast where users wait", deliverable 2).

Listing models or metrics, --help, and the errors for a bad spec or flag load no torch, timm, transformers,
scikit-learn or matplotlib; the static spec forms of :mod:`vitdepth.specs` equal the registries, and the early
errors equal the registries' and ``analyze()``'s own. How long start-up takes is measured by
``benchmarks/bench_startup.py``, not asserted here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitdepth._errors import VitdepthError
from vitdepth.cli import main
from vitdepth.specs import DATA_SPECS, MODEL_SPECS, data_spec_error, model_spec_error

HEAVY = ("torch", "timm", "transformers", "sklearn", "matplotlib")

# Runs main(argv) in a fresh interpreter; prints the exit code and the heavy modules that got loaded.
_PROBE = """
import json, sys
import vitdepth.cli
try:
    code = vitdepth.cli.main(json.loads(sys.argv[1]))
except SystemExit as e:  # argparse: --help, a bad flag
    code = e.code
print("\\nSTARTUP " + json.dumps({"code": code, "loaded": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def _fresh(argv: list[str], cwd: Path | None = None) -> tuple[int, list[str], str]:
    """(exit code, heavy modules loaded, stderr) of ``vitdepth ARGV`` in a new interpreter."""
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)], capture_output=True,
                         text=True, env=os.environ, cwd=cwd, timeout=120)
    line = [x for x in res.stdout.splitlines() if x.startswith("STARTUP ")]
    assert line, res.stderr
    out = json.loads(line[-1][len("STARTUP "):])
    return out["code"], out["loaded"], res.stderr


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["models"], 0, ""),
    (["metrics"], 0, ""),
    (["metrics", "isi_rec"], 0, ""),
    (["metrics", "isi_recc"], 2, "did you mean isi_rec"),
    (["--help"], 0, ""),
    (["analyze", "--help"], 0, ""),
    (["analyze", "nosuchkind:x", "--out", "OUT"], 2, "unknown model spec prefix 'nosuchkind'"),
    (["analyze", "tim:vit_tiny_patch16_224", "--out", "OUT"], 2, "did you mean timm:vit_tiny_patch16_224"),
    (["analyze", "timm:", "--out", "OUT"], 2, "names no model after 'timm:'"),
    (["analyze", "runs/S", "--out", "OUT"], 2, "unknown model spec 'runs/S': it needs a prefix"),
    (["analyze", "timm:vit_tiny_patch16_224", "--data", "nosuch:1", "--out", "OUT"], 2, "unknown data spec"),
    (["analyze", "timm:vit_tiny_patch16_224", "--data", "digts", "--out", "OUT"], 2, "did you mean 'digits'"),
    (["analyze", "timm:vit_tiny_patch16_224", "--device", "tpu", "--out", "OUT"], 2, "--device 'tpu'"),
    (["analyze", "timm:vit_tiny_patch16_224", "--image-size", "0", "--out", "OUT"], 2, "--image-size"),
    (["analyze", "timm:vit_tiny_patch16_224", "--figure-format", "gif", "--out", "OUT"], 2, "--figure-format"),
    (["analyze", "timm:vit_tiny_patch16_224", "--samples", "0", "--out", "OUT"], 2, "--samples"),
    (["analyze", "timm:vit_tiny_patch16_224"], 2, "--out"),
    (["compare", "--out", "OUT"], 2, "required"),
    (["compare", "A", "--out", "OUT"], 2, "at least two run directories"),
    (["compare", "A", "B", "--out", "OUT"], 2, "is not a vitdepth run directory"),
    (["compare", "A", "B", "--out", "OUT", "--figure-format", "gif"], 2, "--figure-format"),
    (["export", "A", "--to", "tensorboard"], 2, "is not a vitdepth run directory"),
    (["nosuchcommand"], 2, "invalid choice"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_command_loads_no_heavy_library(argv, code, message, tmp_path):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    got, loaded, stderr = _fresh(argv, cwd=tmp_path)
    assert got == code, stderr
    assert message in stderr
    assert loaded == [], f"vitdepth {' '.join(argv)} loaded {loaded}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["models"], ["metrics"], ["--help"]], ids=" ".join)
def test_listings_load_not_even_numpy(argv, tmp_path):
    # the parser of export / align / reproduce (numpy, the alignment code) is built only when that command runs
    code = ("import sys, vitdepth.cli\ntry:\n    vitdepth.cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('\\nLOADED', [m for m in ('numpy', 'vitdepth.align', 'vitdepth.export', 'vitdepth.reproduce') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True,
                         env=os.environ, cwd=tmp_path)
    assert out.stdout.splitlines()[-1] == "LOADED []"


def test_lazy_command_stubs_carry_the_commands_own_help():
    from vitdepth.cli import _LAZY_COMMANDS, _build_parser

    def helps(parser):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {a.dest: a.help for a in sub._choices_actions}

    full, stubs = helps(_build_parser()), helps(_build_parser(""))
    assert full == stubs
    assert {name: full[name] for name in _LAZY_COMMANDS} == _LAZY_COMMANDS
    assert _build_parser().format_help() == _build_parser("").format_help()
    for name in _LAZY_COMMANDS:  # the command that runs gets its full parser
        assert _build_parser(name).format_help() == _build_parser().format_help()


def test_library_imports_stay_light():
    code = ("import sys, vitdepth, vitdepth.data, vitdepth.models, vitdepth.metrics, vitdepth.metrics.probes, "
            "vitdepth.specs, vitdepth.results, vitdepth.compare, vitdepth.export, vitdepth.align\n"
            f"print([m for m in {HEAVY + ('scipy',)!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"


def test_analysis_import_loads_no_sklearn_matplotlib_or_transformers():
    # the probes' scikit-learn estimator loads when a probe is fitted, matplotlib when a figure is drawn
    code = "import sys, vitdepth.analysis.run\nprint([m for m in ('sklearn', 'matplotlib', 'transformers') " \
           "if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"


def test_labelled_analyze_loads_no_sklearn(tiny_file_model, tmp_path):
    # the ridge probes of a run are plain arrays (RidgeSolution): scikit-learn's ~1 s import is not paid by analyze
    code = ("import sys\nfrom vitdepth.analysis.run import AnalyzeConfig, analyze\n"
            f"analyze(AnalyzeConfig(model='file:{tiny_file_model}', data='digits', samples=200, quiet=True, "
            f"metrics='probe_acc,nc1', cka_samples=0, out={str(tmp_path / 'r')!r}))\n"
            "print([m for m in ('sklearn',) if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "r" / "layers.csv").is_file()


def test_lazy_package_names_resolve():
    import vitdepth
    import vitdepth.data
    import vitdepth.metrics
    import vitdepth.models

    for pkg in (vitdepth, vitdepth.data, vitdepth.models, vitdepth.metrics):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, f"{pkg.__name__}.{name}"
        assert set(pkg.__all__) <= set(dir(pkg))
        with pytest.raises(AttributeError):
            pkg.no_such_name  # noqa: B018
    from vitdepth.metrics.probes import RidgeProbe, fit_ridge_probe  # noqa: F401

    assert vitdepth.metrics.probes.RidgeProbe is RidgeProbe
    with pytest.raises(AttributeError):
        vitdepth.metrics.probes.no_such_name  # noqa: B018


# -----------------------------------------------------------------------------------------------------------------
# the static forms and the early errors equal the registries'


def test_static_model_specs_equal_the_adapter_registry():
    from vitdepth.models import list_adapters

    assert [(a.prefix, a.example, a.description) for a in list_adapters()] == [tuple(f) for f in MODEL_SPECS]


def test_static_data_specs_equal_the_source_registry():
    from vitdepth.data import list_sources
    from vitdepth.data.sources import _SOURCES

    assert list(_SOURCES) == [f.kind for f in DATA_SPECS]
    assert list_sources() == [(f.example, f.description) for f in DATA_SPECS]


def test_models_listing_shows_the_registries(capsys):
    from vitdepth.data import list_sources
    from vitdepth.models import list_adapters

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = ["model specs:", *(f"  {a.example:<34} {a.description}" for a in list_adapters()),
                "data specs:", *(f"  {e:<34} {d}" for e, d in list_sources())]
    assert lines == expected


@pytest.mark.parametrize("spec", ["nosuchkind:x", "tim:vit_tiny_patch16_224", "timm:", "hf:", "runs/S", "x",
                                  "vit_tiny_patch16_224", "vit_tiny_patch16_224.augreg_in21k", ":x", "",
                                  "torchvison:vit_b_16", "timm:vit_tiny_patch16_224"])
def test_model_spec_errors_equal_the_registry(spec):
    from vitdepth.models.registry import parse_spec

    try:
        parse_spec(spec)
        expected = None
    except VitdepthError as e:
        expected = str(e)
    assert model_spec_error(spec) == expected


def test_data_spec_errors_equal_create_source(tmp_path):
    from vitdepth.data import create_source

    folder = tmp_path / "images"
    folder.mkdir()
    specs = ["nosuch:1", "digts", "synthetc:n=5", "Folder2:x", "", "   ", str(folder), str(tmp_path / "x.csv"),
             str(tmp_path / "x.TSV"), "a.tar", "b.parquet", "c.arrow", " zz ", "hf-datset:cifar10", "wds",
             "DIGITS", " synthetic:n=5"]
    for spec in specs:
        try:
            create_source(spec, exclude=[tmp_path / "out"])
            expected = None
        except VitdepthError as e:  # errors in the options or the data of a known kind are create_source's own
            known_kind = not str(e).startswith(("unknown data spec ", "data spec must be a non-empty string"))
            expected = None if known_kind else str(e)
        assert data_spec_error(spec) == expected, spec


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("--device", "tpu", "device"),
    ("--image-size", "0", "image_size"),
    ("--figure-format", "gif", "figure_formats"),
])
def test_early_flag_errors_equal_analyze(tmp_path, capsys, flag, value, field):
    from vitdepth.analysis.run import AnalyzeConfig, analyze

    cli_value = int(value) if field == "image_size" else value
    with pytest.raises(VitdepthError) as info:
        analyze(AnalyzeConfig(model="timm:vit_tiny_patch16_224", data="digits", out=str(tmp_path / "lib"),
                              **{field: cli_value}))
    assert main(["analyze", "timm:vit_tiny_patch16_224", flag, value, "--out", str(tmp_path / "cli")]) == 2
    assert capsys.readouterr().err.strip() == f"vitdepth: error: {info.value}"


def test_loaded_registry_answers_for_its_own_prefixes(tmp_path, capsys, monkeypatch):
    # an adapter registered at run time (a library caller) is not refused by the CLI's static early check
    from vitdepth.models import registry

    def loader(target, **_):
        raise VitdepthError(f"custom loader reached with {target!r}")

    monkeypatch.setitem(registry._ADAPTERS, "custom", registry.AdapterInfo("custom", "custom:x", "test", loader))
    code = main(["analyze", "custom:x", "--data", "digits", "--samples", "20", "--out", str(tmp_path / "r"),
                 "--quiet"])
    assert code == 2
    assert "custom loader reached with 'x'" in capsys.readouterr().err
