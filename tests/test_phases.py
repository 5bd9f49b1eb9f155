"""Phases (design §5): exhaustive three-segment fit, labels, bootstrap knots, saturation, onset."""

from __future__ import annotations

import ast
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from vitdepth._errors import VitdepthError
from vitdepth.phases import (
    PhaseFit,
    PhaseThresholds,
    bootstrap_breakpoints,
    classify_slope,
    fit_three_segments,
    label_shape,
    saturation_layer,
    tradeoff_onset,
)

L = 12
X = np.arange(-1, L + 1, dtype=float)  # pre, 0..L


def pwl(x, k1, k2, a, c0=0.0):
    """Continuous piecewise-linear curve with knots k1 < k2 and per-layer slopes a = (a1, a2, a3)."""
    x = np.asarray(x, dtype=float)
    a1, a2, a3 = a
    return c0 + a1 * x + (a2 - a1) * np.maximum(x - k1, 0) + (a3 - a2) * np.maximum(x - k2, 0)


def naive_fit(x, y, min_points):
    """Independent reference: every knot pair by explicit loops, each solved with np.linalg.lstsq."""
    o = np.argsort(x)
    x, y = x[o], y[o]
    n = len(x)
    best = None
    for i in range(n):
        for j in range(i + 1, n):
            if i + 1 < min_points or j - i + 1 < min_points or n - j < min_points:
                continue
            k1, k2 = x[i], x[j]
            design = np.column_stack([np.ones(n), x, np.clip(x - k1, 0, None), np.clip(x - k2, 0, None)])
            coef = np.linalg.lstsq(design, y, rcond=None)[0]
            rss = float(np.sum((y - design @ coef) ** 2))
            if best is None or rss < best[0]:
                best = (rss, (k1, k2), coef)
    return best


# ------------------------------------------------------------------------------------------ exact fit


@pytest.mark.parametrize("k1,k2", [(0, 11), (0, 1), (10, 11), (2, 8), (5, 6), (1, 10)])
@pytest.mark.parametrize("a", [(-3.0, 0.1, 1.5), (2.0, -0.5, 0.7)])
def test_exact_recovery_noiseless(k1, k2, a):
    y = pwl(X, k1, k2, a, c0=0.3)
    fit = fit_three_segments(X, y, depth=L)
    assert fit.breakpoints == (float(k1), float(k2))
    rng_y = y.max() - y.min()
    np.testing.assert_allclose(fit.slopes, np.array(a) * L / rng_y, rtol=1e-9, atol=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.intercept == pytest.approx(0.3, abs=1e-9)
    np.testing.assert_allclose(fit.fitted, y, atol=1e-9)
    assert fit.scale == pytest.approx(rng_y) and fit.depth == L and fit.n_points == X.size
    assert fit.relative_breakpoints == (k1 / L, k2 / L)


def test_exact_recovery_deep_model_unsorted_with_nan():
    depth = 24
    x = np.arange(-1, depth + 1, dtype=float)
    y = pwl(x, 3, 17, (-2.0, 0.05, 0.9), c0=5.0)
    perm = np.random.default_rng(1).permutation(x.size)
    xp, yp = x[perm], y[perm].copy()
    hole = int(np.flatnonzero(xp == 9)[0])
    yp[hole] = np.nan  # a layer where the metric does not apply
    fit = fit_three_segments(xp, yp, depth=depth)
    assert fit.breakpoints == (3.0, 17.0)
    assert fit.n_points == x.size - 1
    # fitted is in input order and defined at the NaN layer too
    np.testing.assert_allclose(fit.fitted, y[perm], atol=1e-9)


def test_fit_is_least_squares_optimum_against_naive_loops():
    rng = np.random.default_rng(123)
    for trial in range(40):
        n = int(rng.integers(6, 20))
        m = int(rng.integers(2, 4))
        if max(3 * m - 2, 5) > n:
            continue
        x = np.arange(-1, n - 1, dtype=float)
        y = rng.normal(size=n) + np.cumsum(rng.normal(size=n))
        rss_ref, knots_ref, coef_ref = naive_fit(x, y, m)
        fit = fit_three_segments(x, y, depth=n - 2, min_points=m)
        rss = float(np.sum((y - fit.fitted) ** 2))
        assert rss == pytest.approx(rss_ref, rel=1e-9, abs=1e-12), trial
        assert fit.breakpoints == knots_ref, trial
        assert fit.intercept == pytest.approx(coef_ref[0], rel=1e-7, abs=1e-9)
        tss = float(np.sum((y - y.mean()) ** 2))
        assert fit.r2 == pytest.approx(1 - rss_ref / tss, rel=1e-9)


def test_min_points_is_respected():
    # the true knot at x=0 leaves segment 1 two points; with min_points=3 it is not allowed
    y = pwl(X, 0, 6, (-5.0, 0.0, 1.0))
    assert fit_three_segments(X, y, L, min_points=2).breakpoints == (0.0, 6.0)
    k1, k2 = fit_three_segments(X, y, L, min_points=3).breakpoints
    assert np.sum(X <= k1) >= 3 and np.sum((X >= k1) & (X <= k2)) >= 3 and np.sum(X >= k2) >= 3
    assert k1 == 1.0


def test_ties_are_broken_deterministically():
    y = 0.5 * X + 2  # every pair fits a straight line exactly: the first pair wins
    fit = fit_three_segments(X, y, L)
    assert fit.breakpoints == (0.0, 1.0)
    assert fit.label == "monotone-rise"
    # a two-phase curve: every k2 on the plateau (and k1 anywhere on the fall) fits exactly; first pair wins
    for k in (2, 3, 5, 9):
        for c in (0.37, 1.3, 7.1):
            fit = fit_three_segments(X, pwl(X, k, k + 1, (-c, 0.0, 0.0), c0=0.3), L)
            assert fit.breakpoints == (0.0, float(k)) and fit.label == "cliff-plateau"
    x24 = np.arange(-1, 25, dtype=float)
    for c in (0.37, 1.3, 7.1, -2.9):
        assert fit_three_segments(x24, c * x24 + 1.1, 24).breakpoints == (0.0, 1.0)
    const = fit_three_segments(X, np.full(X.size, 3.0), L)
    assert const.breakpoints == (0.0, 1.0) and const.slopes == (0.0, 0.0, 0.0)
    assert const.label == "flat" and const.r2 == 1.0 and const.scale == 0.0


def test_to_dict_is_json_ready():
    fit = fit_three_segments(X, pwl(X, 2, 8, (-3, 0, 1)), L)
    d = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert d["breakpoints"] == [2.0, 8.0] and d["label"] == "cliff-plateau-climb"
    assert d["relative_breakpoints"] == [2 / L, 8 / L] and len(d["fitted"]) == X.size
    bare = PhaseFit(breakpoints=(2.0, 8.0), slopes=(-1.0, 0.0, 1.0), intercept=0.0, r2=1.0, label="x",
                    fitted=np.zeros(3))  # no depth given: relative knots are undefined, and None in JSON
    assert bare.to_dict()["relative_breakpoints"] == [None, None]
    assert PhaseThresholds().to_dict() == {"cliff_slope": -0.5, "flat_slope": 0.25, "climb_slope": 0.25}


# ------------------------------------------------------------------------------------------ labels

# per-layer slopes on knots (3, 8) of X; the label each curve must get with default thresholds
SHAPES = {
    "cliff-plateau-climb": (-1.0, 0.0, 0.5),
    "monotone-rise": (0.2, 1.0, 0.4),
    "monotone-fall": (-1.0, -0.2, -0.6),
    "rise-plateau": (1.0, 0.0, 0.0),
    "plateau-climb": (0.0, 0.0, 1.0),
    "cliff-plateau": (-1.0, 0.0, 0.0),
    "rise-fall": (1.0, 1.0, -0.2),  # a tent whose fall is small against the rise
    "fall-rise": (-0.1, -0.1, 1.0),
    "cliff-climb": (-1.0, -1.0, 1.0),  # a V: no plateau in between
    "plateau-cliff": (0.0, 0.0, -1.0),
    "rise-cliff": (0.1, 0.1, -1.0),
    "fall-plateau-climb": (-0.07, 0.0, 0.6),  # the fall is < 1/2 of the range per depth
    "plateau-climb-plateau": (0.0, 1.0, 0.0),
}


@pytest.mark.parametrize("label", sorted(SHAPES))
def test_label_of_shaped_curve(label):
    y = pwl(X, 3, 8, SHAPES[label], c0=1.0)
    fit = fit_three_segments(X, y, L)
    assert fit.label == label, (fit.slopes, fit.breakpoints)


def test_flat_and_gentle_falls_need_a_range_from_elsewhere():
    # Slopes are divided by the curve's range, so a clean non-constant curve always has a segment with
    # |slope| >= depth / (L + 1): only a constant curve is "flat", and a gentle "fall" needs a larger rise
    # (or noise) to set the range. Both are documented in label_shape.
    assert fit_three_segments(X, np.full(X.size, -2.0), L).label == "flat"
    rng = np.random.default_rng(0)
    for _ in range(20):
        k1, k2 = sorted(rng.choice(np.arange(0, L), size=2, replace=False))
        y = pwl(X, k1, k2, rng.normal(size=3))
        fit = fit_three_segments(X, y, L)
        assert max(abs(s) for s in fit.slopes) >= L / (L + 1) - 1e-9
        assert fit.label != "flat"
    assert label_shape((0.2, -0.2, 0.0)) == "flat"
    assert label_shape((-0.3, 0.0, 0.0)) == "fall-plateau" and label_shape((0.0, 0.0, -0.3)) == "plateau-fall"


def test_label_table_is_the_documented_rule():
    cls_slope = {"S": -1.0, "F": -0.3, "0": 0.0, "R": 1.0}
    expected = {
        "S0R": "cliff-plateau-climb", "RRR": "monotone-rise", "000": "flat",
        "R00": "rise-plateau", "RR0": "rise-plateau", "0RR": "plateau-climb", "00R": "plateau-climb",
        "S00": "cliff-plateau", "SS0": "cliff-plateau", "F00": "fall-plateau", "FF0": "fall-plateau",
        "0SS": "plateau-cliff", "00S": "plateau-cliff", "0FF": "plateau-fall", "00F": "plateau-fall",
        "RFF": "rise-fall", "RRF": "rise-fall", "RSS": "rise-cliff", "RRS": "rise-cliff",
        "FRR": "fall-rise", "FFR": "fall-rise", "SRR": "cliff-climb", "SSR": "cliff-climb",
        "F0R": "fall-plateau-climb", "R0R": "rise-plateau-climb", "0R0": "plateau-climb-plateau",
        "RFR": "rise-fall-rise", "SF0": "cliff-fall-plateau", "RS0": "rise-cliff-plateau",
    }
    for combo in itertools.product("SF", repeat=3):
        expected["".join(combo)] = "monotone-fall"
    seen = {}
    for combo in itertools.product("SF0R", repeat=3):
        key = "".join(combo)
        got = label_shape([cls_slope[c] for c in combo])
        assert got == label_shape([cls_slope[c] for c in combo])  # deterministic
        if key in expected:
            assert got == expected[key], key
        words = got.split("-")
        if got not in ("monotone-fall", "monotone-rise", "flat"):
            assert all(w in ("cliff", "fall", "plateau", "rise", "climb") for w in words), got
            assert all(u != v for u, v in zip(words[:-1], words[1:], strict=True)), got  # equal neighbours merged
        seen.setdefault(got, set()).add(key)
    # cliff-plateau-climb comes from exactly one class sequence
    assert seen["cliff-plateau-climb"] == {"S0R"}


def test_classify_slope_cuts():
    t = PhaseThresholds()
    assert [classify_slope(s, t) for s in (-0.5, -0.49, -0.25, -0.24, 0.24, 0.25)] == [
        "fall-steep", "fall", "fall", "flat", "flat", "rise"]
    wide = PhaseThresholds(cliff_slope=-1.0, flat_slope=0.25, climb_slope=0.5)
    assert classify_slope(0.4, wide) == "flat" and classify_slope(0.5, wide) == "rise"


def test_threshold_changes_flip_borderline_labels():
    plateau_drift = (-3.0, 0.2, 1.5)  # middle segment rises slowly: flat by default
    assert label_shape(plateau_drift) == "cliff-plateau-climb"
    strict = PhaseThresholds(flat_slope=0.15, climb_slope=0.15)
    assert label_shape(plateau_drift, strict) == "cliff-climb"
    gentle_cliff = (-0.4, 0.0, 1.0)
    assert label_shape(gentle_cliff) == "fall-plateau-climb"
    assert label_shape(gentle_cliff, PhaseThresholds(cliff_slope=-0.3)) == "cliff-plateau-climb"
    # and through the fit: a curve whose scaled middle slope is ~0.2
    y = pwl(X, 3, 8, (-1.0, 0.08, 0.5))
    fit = fit_three_segments(X, y, L)
    assert 0.15 < fit.slopes[1] < 0.25
    assert fit.label == "cliff-plateau-climb"
    assert fit_three_segments(X, y, L, thresholds=strict).label == "cliff-climb"


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_covers_true_knots():
    pairs = [(2.0, 8.0), (1.0, 6.0), (4.0, 10.0), (0.0, 9.0)]
    n_trials, covered, point_exact, widths = 200, 0, 0, []
    for trial in range(n_trials):
        rng = np.random.default_rng(trial)
        k1, k2 = pairs[trial % len(pairs)]
        y = pwl(X, k1, k2, (-0.8 / (k1 + 1), -0.02, 0.6 / (L - k2)), c0=0.2)  # cliff 0.8, climb 0.6
        per_image = y + rng.normal(0.0, 0.4, size=(60, X.size))
        out = bootstrap_breakpoints(X, per_image, L, n_boot=200, seed=trial)
        (lo1, hi1), (lo2, hi2) = out["breakpoints_ci"]
        covered += (lo1 <= k1 <= hi1) and (lo2 <= k2 <= hi2)
        point_exact += out["breakpoints"] == [k1, k2]
        widths.append(hi1 - lo1 + hi2 - lo2)
    assert covered / n_trials >= 0.90
    # the test can fail: the point estimate alone is wrong too often, and the CIs are not vacuous
    assert point_exact / n_trials < 0.90
    assert np.mean(widths) < L / 2


def test_bootstrap_matches_stats_resampling_and_single_fits():
    from vitdepth.metrics.stats import _bootstrap_means

    rng = np.random.default_rng(7)
    y = pwl(X, 3, 8, (-0.3, 0.0, 0.2))
    per_image = y + rng.normal(0, 1.5, size=(40, X.size))  # noisy enough for the rounding of the ends to matter
    out = bootstrap_breakpoints(X, per_image, L, n_boot=50, seed=11)
    boots = _bootstrap_means(per_image, 50, np.random.default_rng(11))
    fits = [fit_three_segments(X, b, L) for b in boots]
    knots = np.array([f.breakpoints for f in fits])
    point = fit_three_segments(X, per_image.mean(0), L)
    assert out["breakpoints"] == list(point.breakpoints) and out["label"] == point.label
    assert np.quantile(knots, 0.025, axis=0, method="lower").tolist() != np.quantile(
        knots, 0.025, axis=0, method="higher").tolist()
    assert out["breakpoints_ci"] == [
        [np.quantile(knots[:, c], 0.025, method="lower"), np.quantile(knots[:, c], 0.975, method="higher")]
        for c in range(2)]
    assert out["label_agreement"] == pytest.approx(np.mean([f.label == point.label for f in fits]))
    assert out["relative_breakpoints_ci"] == [[a / L, b / L] for a, b in out["breakpoints_ci"]]
    assert out["n_boot"] == 50 and out["n_images"] == 40 and out["level"] == 0.95
    json.dumps(out, allow_nan=False)
    assert bootstrap_breakpoints(X, per_image, L, n_boot=50, seed=11) == out  # deterministic


def test_bootstrap_drops_whole_nan_columns():
    rng = np.random.default_rng(3)
    y = pwl(X, 3, 8, (-1.0, 0.0, 0.5))
    per_image = y + rng.normal(0, 0.2, size=(30, X.size))
    with_nan = per_image.copy()
    with_nan[:, 0] = np.nan  # e.g. no value at the pre layer
    a = bootstrap_breakpoints(X, with_nan, L, n_boot=40, seed=0)
    b = bootstrap_breakpoints(X[1:], per_image[:, 1:], L, n_boot=40, seed=0)
    assert a == b
    with_nan[5, 4] = np.nan
    with pytest.raises(VitdepthError, match=r"column at x=3 is NaN for 1 of 30 images"):
        bootstrap_breakpoints(X, with_nan, L, n_boot=40)


def test_bootstrap_refits_are_fast():
    depth = 24
    x = np.arange(-1, depth + 1, dtype=float)
    rng = np.random.default_rng(0)
    per_image = pwl(x, 4, 16, (-1.0, 0.0, 0.4)) + rng.normal(0, 1.0, size=(200, x.size))
    bootstrap_breakpoints(x, per_image, depth, n_boot=5)  # warm the per-x design cache
    t0 = time.perf_counter()
    bootstrap_breakpoints(x, per_image, depth, n_boot=200)
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------------ saturation


def test_saturation_layer():
    acc = [np.nan, 0.10, 0.50, 0.79, 0.80, 0.795]
    x = [-1, 0, 1, 2, 3, 4]
    out = saturation_layer(x, acc)
    # 0.99 * 0.80 = 0.792 > 0.79: layer 2 does not reach it, layer 3 does
    assert out == {"layer_x": 3.0, "value": 0.80, "best": 0.80, "best_x": 3.0, "fraction": 0.99,
                   "threshold": pytest.approx(0.792)}
    assert saturation_layer(x, acc, fraction=0.98)["layer_x"] == 2.0
    assert saturation_layer(x, acc, fraction=1.0)["layer_x"] == 3.0
    # unsorted x: "first" means smallest layer position, not first in the array
    perm = [5, 3, 1, 4, 0, 2]
    assert saturation_layer(np.array(x)[perm], np.array(acc)[perm], 0.98) == saturation_layer(x, acc, 0.98)
    # the best is attained twice: best_x is the first
    assert saturation_layer([0, 1, 2, 3], [0.2, 0.9, 0.5, 0.9])["best_x"] == 1.0


def test_tradeoff_onset():
    x = np.arange(-1, 7)
    acc = np.array([0.05, 0.2, 0.5, 0.85, 0.9, 0.9, 0.9, 0.89])
    isi = np.array([np.nan, 1.0, 1.2, 1.5, 1.7, 2.0, 2.6, 3.1])
    out = tradeoff_onset(x, acc, isi, depth=6)
    assert out["layer_x"] == 3.0 and out["relative_depth"] == 0.5
    assert out["isi_at_onset"] == 1.7 and out["isi_last"] == 3.1 and out["isi_last_x"] == 6.0
    assert out["isi_rise_after"] == pytest.approx(1.4)
    json.dumps(out, allow_nan=False)
    # ISI not defined at the onset layer (here: pre) -> None, not NaN
    out2 = tradeoff_onset(x, [1.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], isi, depth=6)
    assert out2["layer_x"] == -1.0 and out2["isi_at_onset"] is None and out2["isi_rise_after"] is None
    # last layer with ISI NaN -> the last defined one
    isi3 = isi.copy()
    isi3[-1] = np.nan
    assert tradeoff_onset(x, acc, isi3, depth=6)["isi_last_x"] == 5.0


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("call,match", [
    (lambda: fit_three_segments(X, X[:-1], L), r"len\(x\)=14 and len\(y\)=13"),
    (lambda: fit_three_segments(X, np.full(X.size, np.nan), L), r"at least 5 non-NaN points .* got 0"),
    (lambda: fit_three_segments(X[:6], X[:6], L, min_points=3), r"at least 7 non-NaN points for three segments "
                                                                 r"of min_points=3; got 6"),
    (lambda: fit_three_segments(X, X, 0), r"'depth' parameter of fit_three_segments must be an int"),
    (lambda: fit_three_segments(X, X, L, min_points=1), r"'min_points' .* range \[2, inf\). Got 1"),
    (lambda: fit_three_segments([0, 1, 1, 2, 3], [0, 1, 2, 3, 4], L), r"distinct layer positions"),
    (lambda: fit_three_segments([0, 1, np.nan, 2, 3], [0, 1, 2, 3, 4], L), r"finite layer positions"),
    (lambda: fit_three_segments(X, np.full(X.size, np.inf), L), r"infinite value"),
    (lambda: fit_three_segments(X.reshape(2, 7), X, L), r"must be 1-D; got shape \(2, 7\)"),
    (lambda: fit_three_segments(X, X, L, thresholds={"flat_slope": 0.1}), r"must be a PhaseThresholds"),
    (lambda: PhaseThresholds(flat_slope=0.0), r"'flat_slope' .* range \(0, inf\)"),
    (lambda: PhaseThresholds(cliff_slope=-0.1), r"'cliff_slope' .* <= -flat_slope"),
    (lambda: PhaseThresholds(climb_slope=float("nan")), r"'climb_slope' .* finite float"),
    (lambda: label_shape((1.0, 2.0)), r"three finite floats"),
    (lambda: label_shape("abc"), r"three floats"),
    (lambda: classify_slope(float("inf")), r"'slope' parameter of classify_slope"),
    (lambda: bootstrap_breakpoints(X, np.zeros((10, 5)), L), r"shape \(N, len\(x\)\) = \(N, 14\); got shape \(10, 5\)"),
    (lambda: bootstrap_breakpoints(X, np.zeros((0, 14)), L), r"no images"),
    (lambda: bootstrap_breakpoints(X, np.zeros((3, 14)), L, level=1.0), r"'level' .* \(0, 1\)"),
    (lambda: bootstrap_breakpoints(X, np.zeros((3, 14)), L, n_boot=0), r"'n_boot'"),
    (lambda: bootstrap_breakpoints(X, np.zeros((3, 14)), L, seed=1.5), r"'seed'"),
    (lambda: saturation_layer([0, 1], [0.5], 0.99), r"len\(x\)=2 and len\(acc\)=1"),
    (lambda: saturation_layer([0, 1], [0.5, np.inf]), r"acc holds an infinite value"),
    (lambda: tradeoff_onset([0, 1], [0.1, 0.2], [1.0, -np.inf], 2), r"isi holds an infinite value"),
    (lambda: fit_three_segments(X, ["a"] * X.size, L), r"'y' parameter of fit_three_segments must be a 1-D array"),
    (lambda: bootstrap_breakpoints(X, [["a"] * X.size], L), r"'per_image' parameter .* array of numbers"),
    (lambda: bootstrap_breakpoints(X, np.full((3, X.size), np.inf), L), r"per_image holds infinite values"),
    (lambda: saturation_layer([0, 1], [0.5, 0.6], 0.0), r"'fraction' .* \(0, 1\]"),
    (lambda: saturation_layer([0, 1], [0.0, 0.0]), r"best accuracy must be > 0"),
    (lambda: saturation_layer([0, 1], [np.nan, np.nan]), r"NaN at every layer"),
    (lambda: tradeoff_onset([0, 1, 2], [0.1, 0.2, 0.3], [1.0, 2.0], 2), r"len\(x\)=3 and len\(isi\)=2"),
    (lambda: tradeoff_onset([0, 1], [0.1, 0.2], [np.nan, np.nan], 2), r"isi is NaN at every layer"),
])
def test_errors_are_one_line(call, match):
    with pytest.raises(VitdepthError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_phases_imports_only_numpy():
    src = Path(__file__).resolve().parents[1] / "src" / "vitdepth" / "phases.py"
    tree = ast.parse(src.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            roots.add(node.module)
    third_party = {r for r in roots if r.split(".")[0] not in {"__future__", "math", "dataclasses", "functools",
                                                                "numbers", "typing"}}
    assert third_party == {"numpy", "vitdepth._errors"}
