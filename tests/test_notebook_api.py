"""Acceptance: the notebook / Python API (issue 13, item 1), driven as a notebook would on real tiny runs."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

import vitdepth
from conftest import tiny_timm_vit

PUBLIC = ("analyze", "AnalyzeConfig", "load_run", "load_compare", "RunResults", "CompareResults", "compare_runs",
          "VitdepthError", "__version__")
HOSTILE = "<script>x</script>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny random-init runs on digits (one with a hostile name) and their comparison."""
    root = tmp_path_factory.mktemp("nb")
    common = dict(data="digits", samples=120, quiet=True, metrics="core", n_boot=50, n_boot_phases=20, figures=False)
    a = vitdepth.analyze(model=tiny_timm_vit(num_classes=10), out=str(root / "a"), name=HOSTILE, **common)
    b = vitdepth.analyze(model=tiny_timm_vit(num_classes=10, depth=4), out=str(root / "b"), name="tiny-4", **common)
    cmp = vitdepth.compare_runs([a, b], root / "cmp", figures=False)
    return a, b, cmp


def test_public_names_are_listed_and_documented():
    names = dir(vitdepth)
    for name in PUBLIC:
        assert name in names and name in vitdepth.__all__
        assert getattr(vitdepth, name) is not None
    assert "load_compare" in vitdepth.__doc__ and "RunResults" in vitdepth.__doc__
    with pytest.raises(AttributeError):
        vitdepth.no_such_name  # noqa: B018


def test_to_pandas_columns_and_dtypes(runs):
    res = vitdepth.load_run(runs[0])
    df = res.to_pandas()
    assert list(df.columns) == ["model", "layer", "depth", "metric", "token_set", "value", "ci_low", "ci_high", "n"]
    assert len(df) == len(res.rows)
    for col in ("model", "metric", "token_set"):
        assert pd.api.types.is_string_dtype(df[col]), col
    assert isinstance(df["layer"].dtype, pd.CategoricalDtype) and df["layer"].cat.ordered
    assert list(df["layer"].cat.categories) == ["pre", "0", "1", "2", "3"]
    for col in ("depth", "value", "ci_low", "ci_high"):
        assert df[col].dtype == np.float64, col
    assert df["n"].dtype == np.int64
    assert set(df["model"]) == {HOSTILE}
    # sorting by the categorical puts pre first, then 0..L numerically
    assert df.sort_values("layer")["layer"].iloc[0] == "pre"


def test_curve_arrays_align(runs):
    res = vitdepth.load_run(runs[0])
    c = res.curve("token_sim")
    assert c.metric == "token_sim" and c.token_set == ""
    assert list(c.layers) == ["pre", "0", "1", "2", "3"]
    assert list(c.layer_index) == [-1, 0, 1, 2, 3]
    for arr in (c.depth, c.values, c.ci_low, c.ci_high, c.n):
        assert isinstance(arr, np.ndarray) and arr.shape == c.layers.shape
    assert np.all(np.diff(c.depth) > 0)
    assert np.all(c.ci_low <= c.values + 1e-12) and np.all(c.values <= c.ci_high + 1e-12)
    # the same numbers as the table
    df = res.to_pandas()
    expected = df[df.metric == "token_sim"].sort_values("layer")["value"].to_numpy()
    np.testing.assert_allclose(c.values, expected)
    probe = res.curve("probe_acc", "mean")
    assert probe.token_set == "mean" and len(probe) == len(probe.values) > 0
    # legacy row view used by the report and phase code
    assert c[-1]["layer"] == "3" and [r["layer"] for r in c] == list(c.layers)


@pytest.mark.parametrize("args, needle", [
    (("tokn_sim",), "did you mean token_sim"),
    (("probe_acc",), "pass one"),
    (("probe_acc", "maen"), "did you mean mean"),
])
def test_curve_errors_are_one_line(runs, args, needle):
    res = vitdepth.load_run(runs[0])
    with pytest.raises(vitdepth.VitdepthError) as e:
        res.curve(*args)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg


def test_known_metric_not_computed_is_empty_and_not_plotted(runs):
    res = vitdepth.load_run(runs[0])
    assert "isi_rec" not in res.metrics
    assert len(res.curve("isi_rec")) == 0 and not res.curve("isi_rec")
    with pytest.raises(vitdepth.VitdepthError, match="not computed"):
        res.plot("isi_rec")


def test_plot_returns_axes_with_labels(runs):
    matplotlib.use("Agg")  # headless, as in CI; plot() itself never switches a notebook's backend
    import matplotlib.pyplot as plt

    res = vitdepth.load_run(runs[0])
    ax = res.plot("token_sim")
    try:
        assert isinstance(ax, matplotlib.axes.Axes)
        assert ax.get_ylabel().startswith("token_sim (")  # names the metric and its range
        assert ax.get_xlabel() == "layer"
        assert len(ax.lines) >= 1 and len(ax.collections) >= 1  # the curve and its CI band
        fig, ax2 = plt.subplots()
        assert res.plot("probe_acc", "mean", ax=ax2) is ax2
        assert "probe_acc/mean" in ax2.get_ylabel()
    finally:
        plt.close("all")


def test_phases_are_objects(runs):
    res = vitdepth.load_run(runs[0])
    ph = res.phases
    assert ph is not None and res.phases is ph  # read once
    raw = json.loads((res.path / "phases.json").read_text())
    assert set(ph.fits) == set(raw["fits"])
    for key, fit in ph.fits.items():
        assert fit.key == key and isinstance(fit.label, str) and len(fit.breakpoints) == 2
    assert set(ph.saturation) == set(raw["saturation"])
    assert ph.saturation["mean"].layer == raw["saturation"]["mean"]["layer"]
    assert ph.useful_depth == raw["useful_depth"]
    assert ph.recommendations == raw["recommendations"]
    if raw.get("tradeoff_onset"):
        assert ph.tradeoff_onset.layer == raw["tradeoff_onset"]["layer"]


def test_phases_absent_is_none(runs, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(runs[1], copy)
    (copy / "phases.json").unlink()
    assert vitdepth.load_run(copy).phases is None


def test_repr_is_short_and_html_is_small_and_escaped(runs):
    res = vitdepth.load_run(runs[0])
    text = repr(res)
    assert len(text) < 300 and "\n" not in text
    assert HOSTILE in text and "digits" in text and "pre..3" in text
    card = res._repr_html_()
    assert len(card.encode()) < 5000
    assert "<script>" not in card and "&lt;script&gt;x&lt;/script&gt;" in card
    assert "effective depth" in card
    # existing attributes other code relies on
    assert res.model == HOSTILE and isinstance(res.rows, list) and isinstance(res.run, dict)
    assert len(res.layers_sha256) == 64


def test_load_compare(runs):
    a, b, cmp_dir = runs
    cmp = vitdepth.load_compare(cmp_dir)
    assert isinstance(cmp, vitdepth.CompareResults)
    assert cmp.models == [HOSTILE, "tiny-4"]
    assert [r.path for r in cmp.runs] == [a, b]
    assert all(isinstance(r, vitdepth.RunResults) for r in cmp.runs)
    df = cmp.to_pandas()
    assert list(df.columns) == ["from", "to", "what", "layers", "relative_depth", "sentence"]
    assert len(df) == len(json.loads((cmp_dir / "compare.json").read_text())["shifts"])
    assert df["layers"].dtype == np.float64
    models = cmp.models_table()
    assert list(models["name"]) == cmp.models
    text = repr(cmp)
    assert len(text) < 300 and "\n" not in text
    card = cmp._repr_html_()
    assert len(card.encode()) < 5000 and "<script>" not in card


def test_load_compare_finds_moved_runs(runs, tmp_path):
    import shutil

    a, b, cmp_dir = runs
    for d in (a, b):
        shutil.copytree(d, tmp_path / d.name)
    shutil.copytree(cmp_dir, tmp_path / "cmp")
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    for m in data["models"]:  # as the demo leaves them: recorded paths that no longer exist
        m["run_dir"] = str(tmp_path / "gone" / f"{m['run_dir'].rsplit('/', 1)[-1]}")
    (tmp_path / "cmp" / "compare.json").write_text(json.dumps(data))
    cmp = vitdepth.load_compare(tmp_path / "cmp")
    assert [r.path for r in cmp.runs] == [tmp_path / "a", tmp_path / "b"]


def test_load_compare_errors_are_one_line(tmp_path):
    with pytest.raises(vitdepth.VitdepthError, match="not a vitdepth comparison") as e:
        vitdepth.load_compare(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "compare.json").write_text('{"models": 3}')
    with pytest.raises(vitdepth.VitdepthError, match="models is not a list"):
        vitdepth.load_compare(tmp_path)
