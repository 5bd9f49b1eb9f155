"""Confidence intervals for per-layer results.

- :func:`bootstrap_mean_ci` — percentile bootstrap (Efron 1979, "Bootstrap methods: another
  look at the jackknife"; Efron & Tibshirani 1993, ch. 13) of the mean over images, for the
  per-image metric curves that design §4 keeps for exactly this purpose.
- :func:`wilson_interval` — Wilson (1927) score interval for a binomial proportion, used for
  probe top-1 accuracy (design §4); it stays inside [0, 1] and behaves at k = 0 and k = n,
  unlike the normal-approximation (Wald) interval (Brown, Cai & DasGupta 2001).
"""

from __future__ import annotations

from numbers import Integral, Real
from statistics import NormalDist

import numpy as np

from vitdepth._errors import VitdepthError

__all__ = ["bootstrap_mean_ci", "wilson_interval"]


class _StatsInputError(VitdepthError, ValueError):
    """Bad input to a statistics helper (also a ``ValueError``, the Python convention)."""


# Bound on the elements of one block of resampling weights, so memory stays ~32 MiB whatever
# the number of images.
_BLOCK_ELEMENTS = 1 << 22


def _check_level(level: object) -> float:
    if isinstance(level, bool) or not isinstance(level, Real) or not 0.0 < float(level) < 1.0:
        raise _StatsInputError(f"level must be a float in the open range (0, 1), e.g. 0.95; got {level!r}.")
    return float(level)


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of the columns of ``values`` (n, k) without NaN; returns (n_boot, k).

    Resample b is a multinomial count vector W_b ~ Mult(n, 1/n) over the rows, and its mean is
    W_b @ values / n, so no (n_boot, n, k) temporary exists. The blocks draw from ``rng`` in
    order, which gives the same counts as one ``rng.multinomial(n, [1/n] * n, size=n_boot)``.
    """
    n, k = values.shape
    pvals = np.full(n, 1.0 / n)
    out = np.empty((n_boot, k))
    block = max(1, min(n_boot, _BLOCK_ELEMENTS // n))
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        counts = rng.multinomial(n, pvals, size=stop - start)
        out[start:stop] = (counts @ values) / n
    return out


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap confidence interval of each column, resampling rows (images).

    For column ``j`` with valid (non-NaN) rows ``v_1..v_n``::

        mean_j = (1/n) sum_i v_i
        mean*_b = (1/n) sum_i W_bi v_i,   W_b ~ Multinomial(n, 1/n),   b = 1..n_boot
        [lo_j, hi_j] = percentiles (1 - level)/2 and (1 + level)/2 of mean*_1..mean*_n_boot

    NaN handling: a row with NaN in column j is excluded for that column only (the column is
    bootstrapped over its own valid rows); a column with no valid row gives NaN for mean, lo and
    hi. Columns with the same valid rows share one set of resamples.

    Determinism: each group of columns draws from ``np.random.default_rng(seed)`` afresh, so a
    column's interval depends only on its own values and ``seed`` — not on which other columns
    are passed with it — and the same seed always gives the same intervals.

    Args:
        values: Per-image values, (N,) or (N, K).
        n_boot: Number of bootstrap resamples (>= 1).
        level: Confidence level in (0, 1).
        seed: Seed for ``np.random.default_rng``.

    Returns:
        ``(mean, lo, hi)``, each of shape () for 1-D input or (K,) for 2-D input, float64.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim not in (1, 2):
        raise _StatsInputError(f"values must have shape (N,) or (N, K); got shape {v.shape}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, Integral) or n_boot < 1:
        raise _StatsInputError(f"n_boot must be a positive integer; got {n_boot!r}.")
    level = _check_level(level)
    squeeze = v.ndim == 1
    if squeeze:
        v = v[:, None]
    n_rows, n_cols = v.shape
    mean = np.full(n_cols, np.nan)
    lo = np.full(n_cols, np.nan)
    hi = np.full(n_cols, np.nan)
    if n_rows > 0 and n_cols > 0:
        valid = ~np.isnan(v)
        patterns, group_of_col = np.unique(valid.T, axis=0, return_inverse=True)
        group_of_col = np.asarray(group_of_col).ravel()
        q = [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]
        for g, rows_ok in enumerate(patterns):
            cols = np.flatnonzero(group_of_col == g)
            rows = np.flatnonzero(rows_ok)
            if rows.size == 0:
                continue
            sub = v[np.ix_(rows, cols)]
            mean[cols] = sub.mean(axis=0)
            boot = _bootstrap_means(sub, int(n_boot), np.random.default_rng(seed))
            lo[cols], hi[cols] = np.percentile(boot, q, axis=0)
    if squeeze:
        return mean[0], lo[0], hi[0]
    return mean, lo, hi


def wilson_interval(
    k: int | np.ndarray, n: int | np.ndarray, level: float = 0.95
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Wilson (1927) score interval for a binomial proportion k/n.

    With ``p = k/n`` and ``z`` the standard normal quantile at ``(1 + level)/2``::

        centre = (p + z^2 / (2n)) / (1 + z^2/n)
        half   = z / (1 + z^2/n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
        [lo, hi] = [centre - half, centre + half]

    ``k == 0`` gives ``lo = 0`` and ``k == n`` gives ``hi = 1`` exactly; ``n == 0`` gives
    ``(nan, nan)``. ``k`` and ``n`` broadcast.

    Args:
        k: Successes (e.g. correct predictions), 0 <= k <= n.
        n: Trials (e.g. test images), >= 0.
        level: Confidence level in (0, 1).

    Returns:
        ``(lo, hi)``: floats for scalar input, arrays otherwise.
    """
    level = _check_level(level)
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(n_arr < 0) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise _StatsInputError(f"wilson_interval needs 0 <= k <= n; got k={k!r}, n={n!r}.")
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    z2 = z * z
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_arr / n_arr
        denom = 1.0 + z2 / n_arr
        centre = (p + z2 / (2.0 * n_arr)) / denom
        half = (z / denom) * np.sqrt(p * (1.0 - p) / n_arr + z2 / (4.0 * n_arr * n_arr))
        lo = np.where(k_arr == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        hi = np.where(k_arr == n_arr, 1.0, np.clip(centre + half, 0.0, 1.0))
    empty = n_arr == 0
    lo = np.where(empty, np.nan, lo)
    hi = np.where(empty, np.nan, hi)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi
