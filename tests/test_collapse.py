"""Neural-collapse metrics against explicit per-class computations, streaming, and constructed geometries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitdepth._errors import VitdepthError
from vitdepth.metrics.collapse import (
    CollapseStats,
    collapse_compute,
    collapse_merge,
    collapse_update,
    nc4_disagreement,
    neural_collapse,
)

# --------------------------------------------------------------------------------------------
# Explicit reference: per-class covariance matrices from the samples, Sigma_B from the means,
# numpy's pinv. float64, no shared code with the library.
# --------------------------------------------------------------------------------------------


def ref_collapse(X: np.ndarray, y: np.ndarray, num_classes: int, W: np.ndarray | None = None) -> dict[str, float]:
    X = X.astype(np.float64)
    present = [c for c in range(num_classes) if np.any(y == c)]
    c_ = len(present)
    means = {c: X[y == c].mean(axis=0) for c in present}
    mu_g = np.mean([means[c] for c in present], axis=0)
    d = X.shape[1]
    sigma_w = np.zeros((d, d))
    for c in present:
        diff = X[y == c] - means[c]
        sigma_w += diff.T @ diff  # the class's scatter matrix, formed explicitly
    sigma_w /= len(X)
    sigma_b = np.zeros((d, d))
    for c in present:
        sigma_b += np.outer(means[c] - mu_g, means[c] - mu_g)
    sigma_b /= c_
    nc1 = np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / c_
    centred = np.array([means[c] - mu_g for c in present])
    norms = [np.linalg.norm(m) for m in centred]
    nc2_norm = np.std(norms) / np.mean(norms)
    angles = []
    for i in range(c_):
        for j in range(c_):
            if i != j:
                cos = centred[i] @ centred[j] / (norms[i] * norms[j])
                angles.append(abs(cos + 1.0 / (c_ - 1)))
    out = {"nc1": nc1, "nc2_norm": nc2_norm, "nc2_angle": np.mean(angles)}
    if W is not None:
        w = W[present]
        out["nc3"] = np.linalg.norm(w / np.linalg.norm(w) - centred / np.linalg.norm(centred))
    return out


def ref_nc4(X: np.ndarray, y: np.ndarray, num_classes: int, pred: np.ndarray) -> int:
    present = [c for c in range(num_classes) if np.any(y == c)]
    means = {c: X[y == c].astype(np.float64).mean(axis=0) for c in present}
    count = 0
    for x, p in zip(X.astype(np.float64), pred, strict=True):
        nearest = min(present, key=lambda c: np.linalg.norm(x - means[c]))
        count += int(nearest != p)
    return count


def _data(n: int = 300, d: int = 8, num_classes: int = 5, seed: int = 0, absent: tuple[int, ...] = ()):
    """Imbalanced Gaussian classes with correlated within-class noise."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(num_classes) if c not in absent]
    probs = np.linspace(1.0, 3.0, len(classes))
    y = rng.choice(classes, size=n, p=probs / probs.sum())
    centres = rng.normal(size=(num_classes, d)) * 2.0
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    X = centres[y] + rng.normal(size=(n, d)) @ mix
    return X, y


def _assert_close(got: dict, want: dict, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert isinstance(got[key], float), key
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=key)


# --------------------------------------------------------------------------------------------
# Parity with the explicit reference.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("d", "num_classes"), [(8, 5), (4, 10)], ids=["d>C-1", "d<C-1"])
def test_matches_explicit_reference(d, num_classes):
    X, y = _data(d=d, num_classes=num_classes)
    W = np.random.default_rng(1).normal(size=(num_classes, d))
    got = neural_collapse(X, y, num_classes, probe_coef=W)
    want = ref_collapse(X, y, num_classes, W)
    _assert_close(got, want)
    # Random classes are far from collapse, so a function returning zeros would fail here.
    assert got["nc1"] > 0.05 and got["nc2_angle"] > 0.05 and got["nc3"] > 0.1


def test_stats_hold_the_documented_sums():
    X, y = _data(n=50, d=3, num_classes=4)
    s = collapse_update(X.astype(np.float32), y, 4)
    x = X.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(s.class_counts, [np.sum(y == c) for c in range(4)])
    np.testing.assert_allclose(s.class_sums, [x[y == c].sum(0) for c in range(4)], rtol=1e-13)
    np.testing.assert_allclose(s.gram_sum, sum(np.outer(v, v) for v in x), rtol=1e-13)
    assert s.class_sums.dtype == np.float64 and s.gram_sum.dtype == np.float64
    assert (s.num_classes, s.dim, s.n) == (4, 3, 50)


def test_centring_is_by_the_mean_of_class_means():
    # Two classes, 1 sample at 0 and 9 samples at 1 (d = 1). Mean of class means = 0.5, so the
    # centred means are -0.5 and +0.5: equal norms (nc2_norm = 0) and cos = -1 = -1/(C-1). The
    # sample-weighted mean 0.9 would give norms 0.9 and 0.1 instead.
    X = np.array([[0.0]] + [[1.0]] * 9)
    y = np.array([0] + [1] * 9)
    got = neural_collapse(X, y, 2)
    assert got["nc2_norm"] == pytest.approx(0.0, abs=1e-15)
    assert got["nc2_angle"] == pytest.approx(0.0, abs=1e-15)
    assert got["nc1"] == pytest.approx(0.0, abs=1e-15)  # no within-class spread


# --------------------------------------------------------------------------------------------
# Streaming.
# --------------------------------------------------------------------------------------------


def test_uneven_chunks_merge_to_one_shot():
    X, y = _data(n=257, d=6, num_classes=7, seed=3)
    X16 = X.astype(np.float16)  # the cache's dtype
    W = np.random.default_rng(2).normal(size=(7, 6))
    bounds = [0, 1, 1, 60, 200, 257]  # includes an empty chunk and a single-row chunk
    stats = CollapseStats.empty(7, 6)
    count = n = 0
    means = collapse_update(X16, y, 7).class_means()
    pred = np.random.default_rng(3).integers(0, 7, size=257)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = X16[lo:hi] if lo % 2 else X16[lo:hi].astype(np.float32)  # mixed chunk dtypes
        stats = collapse_merge(stats, collapse_update(part, y[lo:hi], 7))
        c, m = nc4_disagreement(part, means, pred[lo:hi])
        count, n = count + c, n + m
    one_shot = neural_collapse(X16, y, 7, probe_coef=W, probe_pred=pred)
    streamed = collapse_compute(stats, W)
    streamed["nc4"] = count / n
    _assert_close(streamed, one_shot, rtol=1e-10)
    _assert_close(collapse_compute(stats, W), ref_collapse(X16, y, 7, W), rtol=1e-9)
    assert n == 257 and count == ref_nc4(X16, y, 7, pred)


def test_merge_is_order_free_and_rejects_mismatched_stats():
    X, y = _data(n=90, d=5, num_classes=3)
    a, b = collapse_update(X[:40], y[:40], 3), collapse_update(X[40:], y[40:], 3)
    ab, ba = collapse_merge(a, b), collapse_merge(b, a)
    np.testing.assert_array_equal(ab.gram_sum, ba.gram_sum)
    np.testing.assert_array_equal(ab.class_sums, ba.class_sums)
    with pytest.raises(VitdepthError, match=r"\(3, 5\) and \(4, 5\)"):
        collapse_merge(a, collapse_update(X, y, 4))


# --------------------------------------------------------------------------------------------
# Constructed geometries.
# --------------------------------------------------------------------------------------------


def _simplex_etf(num_classes: int, d: int, seed: int = 0) -> np.ndarray:
    """C unit vectors in R^d with pairwise cosine -1/(C-1), in a random orientation."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(d, num_classes)))
    m = math.sqrt(num_classes / (num_classes - 1)) * (np.eye(num_classes) - 1.0 / num_classes)
    return (u @ m).T * 5.0 + rng.normal(size=d)  # rows; a shared offset that centring must remove


@pytest.mark.parametrize("balanced", [True, False])
def test_simplex_etf_with_tiny_noise_is_collapsed(balanced):
    c, d = 6, 12
    means = _simplex_etf(c, d)
    rng = np.random.default_rng(1)
    counts = [40] * c if balanced else [5, 10, 20, 40, 80, 160]
    y = np.repeat(np.arange(c), counts)
    X = means[y] + 1e-4 * rng.normal(size=(len(y), d))
    got = neural_collapse(X, y, c, probe_coef=means - means.mean(0), probe_pred=y)
    assert got["nc1"] < 1e-6
    assert got["nc2_norm"] < 1e-4 and got["nc2_angle"] < 1e-4
    assert got["nc3"] < 1e-4 and got["nc4"] == 0.0
    # The same class means with unit within-class noise are far from collapse.
    noisy = neural_collapse(means[y] + rng.normal(size=(len(y), d)), y, c)
    assert noisy["nc1"] > 1e-2


def test_nc3_zero_when_probe_equals_centred_means_up_to_scale():
    X, y = _data(num_classes=5, absent=(2,))
    stats = collapse_update(X, y, 5)
    centred = stats.class_means()
    present = ~np.isnan(centred).any(axis=1)
    centred[present] -= centred[present].mean(0)
    W = np.where(present[:, None], 3.0 * centred, 123.0)  # the absent class's row is ignored
    assert collapse_compute(stats, W)["nc3"] == pytest.approx(0.0, abs=1e-14)
    W_other = W.copy()
    W_other[0] *= -1
    assert collapse_compute(stats, W_other)["nc3"] > 0.1


def test_nc4_counts_on_a_hand_made_case():
    # Class means (0, 0) and (10, 0); class 2 absent (NaN row).
    means = np.array([[0.0, 0.0], [10.0, 0.0], [np.nan, np.nan]])
    X = np.array([[1.0, 0.0], [4.9, 3.0], [5.1, -2.0], [9.0, 1.0], [-3.0, 0.0]])
    # nearest:    0           0           1            1           0
    pred = np.array([0, 1, 1, 0, 2])
    assert nc4_disagreement(X, means, pred) == (3, 5)  # rows 1, 3 and 4 disagree
    # A large shared offset changes nothing (distances are translation invariant).
    assert nc4_disagreement(X + 1e7, means + 1e7, pred) == (3, 5)
    # Additive over chunks, in any chunking.
    assert nc4_disagreement(X[:2], means, pred[:2])[0] + nc4_disagreement(X[2:], means, pred[2:])[0] == 3


def test_missing_class_is_left_out():
    X, y = _data(num_classes=6, absent=(3,), seed=4)
    W = np.random.default_rng(5).normal(size=(6, 8))
    got = neural_collapse(X, y, 6, probe_coef=W)
    _assert_close(got, ref_collapse(X, y, 6, W))
    # Same as relabelling the five present classes 0..4 and declaring five classes.
    relabel = np.array([0, 1, 2, -1, 3, 4])
    _assert_close(got, neural_collapse(X, relabel[y], 5, probe_coef=np.delete(W, 3, axis=0)), rtol=1e-12)
    assert np.isnan(collapse_update(X, y, 6).class_means()[3]).all()


def test_fewer_than_two_classes_give_nan():
    X = np.random.default_rng(0).normal(size=(10, 3))
    for y in (np.zeros(10, dtype=int), None):
        if y is None:
            got = collapse_compute(CollapseStats.empty(4, 3), np.ones((4, 3)))
        else:
            got = neural_collapse(X, y, 4, probe_coef=np.ones((4, 3)))
        assert set(got) == {"nc1", "nc2_norm", "nc2_angle", "nc3"}
        assert all(math.isnan(v) for v in got.values())
    empty = neural_collapse(np.zeros((0, 3)), np.zeros(0, dtype=int), 4, probe_pred=np.zeros(0, dtype=int))
    assert math.isnan(empty["nc4"])


def test_large_shared_offset_keeps_precision():
    # A feature mean 1000 within-class standard deviations from zero (massive activations).
    X, y = _data(n=400, d=6, num_classes=4, seed=6)
    offset = np.array([1e3, 0, 0, -5e2, 0, 0]) * X.std()
    _assert_close(neural_collapse(X + offset, y, 4), ref_collapse(X, y, 4), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_one_line_errors():
    X, y = _data(n=20, d=3, num_classes=3)
    with pytest.raises(VitdepthError, match=r"y must lie in \[0, 2\) for num_classes=2; got values in \[0, 2\]"):
        collapse_update(X, y, 2)
    with pytest.raises(ValueError, match=r"y of shape \(19,\) does not match X with 20 rows"):
        collapse_update(X, y[:19], 3)
    with pytest.raises(ValueError, match=r"X must have shape \(n, d\); got shape \(20,\)"):
        collapse_update(X[:, 0], y, 3)
    with pytest.raises(ValueError, match="1-D integer numpy array"):
        collapse_update(X, y.astype(float), 3)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1; got 0"):
        collapse_update(X, y, 0)
    with pytest.raises(ValueError, match=r"probe_coef of shape \(3, 4\).*\(3, 3\)"):
        collapse_compute(collapse_update(X, y, 3), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"class_means of shape \(3, 2\) does not match X of shape \(20, 3\)"):
        nc4_disagreement(X, np.zeros((3, 2)), y)
    with pytest.raises(ValueError, match="at least one class mean"):
        nc4_disagreement(X, np.full((3, 3), np.nan), y)


def test_pseudo_inverse_rank_is_capped_at_c_minus_1():
    # With d > C - 1, Sigma_B has d - C + 1 eigenvalues that are zero up to rounding. Even with the
    # tolerance switched off (rtol=0), those directions must not be inverted.
    X, y = _data(n=200, d=12, num_classes=4, seed=8)
    stats = collapse_update(X, y, 4)
    want = ref_collapse(X, y, 4)["nc1"]
    assert collapse_compute(stats, rtol=0.0)["nc1"] == pytest.approx(want, rel=1e-9)
    assert collapse_compute(stats)["nc1"] == pytest.approx(want, rel=1e-9)
    # A large tolerance drops real directions and lowers nc1 (the cut-off is actually applied).
    assert collapse_compute(stats, rtol=0.5)["nc1"] < 0.9 * want
