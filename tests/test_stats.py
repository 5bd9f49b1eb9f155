"""Bootstrap mean CIs and Wilson intervals."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from vitdepth._errors import VitdepthError
from vitdepth.metrics.stats import bootstrap_mean_ci, wilson_interval

# --------------------------------------------------------------------------------------------
# Bootstrap.
# --------------------------------------------------------------------------------------------


def naive_bootstrap(values: np.ndarray, n_boot: int, level: float, seed: int):
    """Loop over resamples, materialising each one, with the same multinomial counts."""
    n = values.shape[0]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    boot = np.array([values[np.repeat(np.arange(n), counts[b])].mean(axis=0) for b in range(n_boot)])
    lo, hi = np.percentile(boot, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return values.mean(axis=0), lo, hi


def test_coverage_of_the_true_mean_for_normal_data():
    true_mean, hits, trials = 3.0, 0, 200
    rng = np.random.default_rng(123)
    for t in range(trials):
        sample = rng.normal(true_mean, 2.0, size=40)
        _, lo, hi = bootstrap_mean_ci(sample, n_boot=500, seed=t)
        hits += lo <= true_mean <= hi
    assert 0.90 * trials <= hits <= 0.99 * trials


@pytest.mark.parametrize("n", [37, 5000])  # 5000 rows: the resamples are drawn in several blocks
def test_matches_naive_resampling_loop(n):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.1] + [0.0, 2.0, -1.0]
    mean, lo, hi = bootstrap_mean_ci(values, n_boot=1000, level=0.9, seed=7)
    want_mean, want_lo, want_hi = naive_bootstrap(values, 1000, 0.9, 7)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(lo, want_lo, rtol=1e-10)
    np.testing.assert_allclose(hi, want_hi, rtol=1e-10)
    assert (lo < mean).all() and (mean < hi).all()


def test_one_dimensional_input_gives_scalars():
    values = np.random.default_rng(2).normal(size=50)
    mean, lo, hi = bootstrap_mean_ci(values, n_boot=200)
    assert np.ndim(mean) == np.ndim(lo) == np.ndim(hi) == 0
    col_mean, col_lo, col_hi = bootstrap_mean_ci(values[:, None], n_boot=200)
    assert (mean, lo, hi) == (col_mean[0], col_lo[0], col_hi[0])


def test_same_seed_same_ci_and_different_seed_different_ci():
    values = np.random.default_rng(3).exponential(size=(80, 4))
    a = bootstrap_mean_ci(values, seed=11)
    b = bootstrap_mean_ci(values, seed=11)
    c = bootstrap_mean_ci(values, seed=12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(a[0], c[0])  # the point estimate does not depend on the seed


def test_narrower_level_gives_narrower_interval():
    values = np.random.default_rng(4).normal(size=100)
    _, lo95, hi95 = bootstrap_mean_ci(values, level=0.95)
    _, lo50, hi50 = bootstrap_mean_ci(values, level=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_nan_handling_per_column():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(60, 4))
    values[:, 1] = np.nan  # all-NaN column
    values[[3, 17, 40], 2] = np.nan  # some NaN rows in one column only
    mean, lo, hi = bootstrap_mean_ci(values, n_boot=300, seed=9)
    assert np.isnan(mean[1]) and np.isnan(lo[1]) and np.isnan(hi[1])
    # A partly-NaN column is bootstrapped over its own valid rows, exactly as if passed alone.
    valid = ~np.isnan(values[:, 2])
    alone = bootstrap_mean_ci(values[valid, 2], n_boot=300, seed=9)
    np.testing.assert_allclose([mean[2], lo[2], hi[2]], alone, rtol=1e-12)
    # NaN rows elsewhere do not affect the clean columns.
    clean = bootstrap_mean_ci(values[:, [0, 3]], n_boot=300, seed=9)
    for got, want in zip((mean, lo, hi), clean, strict=True):
        np.testing.assert_allclose(got[[0, 3]], want, rtol=1e-12)
    assert np.isfinite([mean[0], lo[0], hi[0], mean[2], lo[2], hi[2]]).all()


def test_degenerate_sizes():
    mean, lo, hi = bootstrap_mean_ci(np.array([2.5]))
    assert mean == lo == hi == 2.5
    mean, lo, hi = bootstrap_mean_ci(np.empty((0, 2)))
    assert np.isnan(mean).all() and np.isnan(lo).all() and np.isnan(hi).all()


def test_bootstrap_bad_arguments():
    with pytest.raises(VitdepthError, match="n_boot must be a positive integer"):
        bootstrap_mean_ci(np.ones(5), n_boot=0)
    with pytest.raises(ValueError, match="level must be a float in the open range"):
        bootstrap_mean_ci(np.ones(5), level=1.0)
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, K\); got shape \(2, 2, 2\)"):
        bootstrap_mean_ci(np.ones((2, 2, 2)))


# --------------------------------------------------------------------------------------------
# Wilson.
# --------------------------------------------------------------------------------------------


def _wilson_formula(k: float, n: float, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_hand_computed_value():
    # k = 8, n = 10, 95%: z = 1.959964; centre = 0.716740, half = 0.226578 (worked by hand).
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490162, abs=1e-6)
    assert hi == pytest.approx(0.943318, abs=1e-6)


def test_wilson_matches_formula_on_arrays():
    k = np.array([1, 5, 37, 500, 999])
    n = np.array([3, 20, 40, 1000, 1000])
    for level in (0.9, 0.95, 0.99):
        z = NormalDist().inv_cdf((1 + level) / 2)
        lo, hi = wilson_interval(k, n, level=level)
        assert lo.shape == hi.shape == (5,)
        want = np.array([_wilson_formula(a, b, z) for a, b in zip(k, n, strict=True)])
        np.testing.assert_allclose(lo, want[:, 0], rtol=1e-12)
        np.testing.assert_allclose(hi, want[:, 1], rtol=1e-12)


def test_wilson_edges():
    z2 = NormalDist().inv_cdf(0.975) ** 2
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(z2 / (20 + z2), rel=1e-12)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(20 / (20 + z2), rel=1e-12)
    lo, hi = wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)
    lo, hi = wilson_interval(np.array([0, 3]), np.array([0, 4]))
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and 0 < lo[1] < 0.75 < hi[1] < 1


def test_wilson_bad_arguments():
    with pytest.raises(VitdepthError, match="0 <= k <= n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(-1, 10)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 10, level=95)
