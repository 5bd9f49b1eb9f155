"""Debiased linear CKA between layers, from Gram matrices, with a bootstrap over images.

Centered kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network
Representations Revisited", ICML, arXiv 1905.00414) compares two representations of the same n images,
X (n × d₁) and Y (n × d₂), through their linear Gram matrices K = X Xᵀ and L = Y Yᵀ. The *debiased* form
(Nguyen, Raghu & Kornblith 2021, "Do Wide and Deep Networks Learn the Same Things?", ICLR,
arXiv 2010.15327) replaces the biased HSIC by the unbiased estimator of Song, Smola, Gretton, Bedo &
Borgwardt 2012 ("Feature Selection via Dependence Maximization", JMLR 13), so that CKA between unrelated
representations is ≈ 0 rather than a positive value that depends on n and the width::

    K̃ = K with its diagonal set to 0          (L̃ likewise), 1 = the all-ones vector
    HSIC₁(K, L) = [ tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1 ] / (n(n−3))
    CKA(K, L)   = HSIC₁(K, L) / √(HSIC₁(K, K) · HSIC₁(L, L))

HSIC₁ is a U-statistic: the features need no centering (the estimator is exactly invariant to adding a
constant vector to every row of X, which the tests check). The Grams here are built from features
centred by their mean anyway, in float64, only to keep the numbers small (the residual stream of a ViT
can carry a large common offset, and K = X Xᵀ of uncentred features would lose digits to cancellation).
Debiased CKA is invariant to an orthogonal transform and an isotropic scaling of X (not to an arbitrary
invertible linear map), and CKA(K, K) = 1.

For many layers at once every term is an inner product: tr(K̃L̃) = ⟨K, L⟩ − ⟨diag K, diag L⟩ (both
symmetric) and 1ᵀK̃L̃1 = (K̃1)ᵀ(L̃1), so the layer × layer matrix needs one pass over each pair of Grams
and no copy of any Gram (:func:`cka_matrix`).

**Bootstrap over images.** A resample draws n images with replacement, i.e. multinomial counts w
(Σw = n), and the estimator is applied to the resample as n distinct *slots* (what resampling the
indices and recomputing does: two slots holding the same image are two different slots, and the entry
between them is that image's K_ii). With W = wwᵀ and k = diag K, summing over slot pairs s ≠ t:

    tr(K̃'L̃')   = Σ_ij w_i w_j K_ij L_ij − Σ_i w_i K_ii L_ii     = wᵀ(K∘L)w − wᵀ(k∘l)
    1ᵀK̃'1      = wᵀKw − wᵀk
    1ᵀK̃'L̃'1    = Σ_i w_i ((Kw)_i − K_ii) ((Lw)_i − L_ii)

which is exact (equal to recomputing on the resampled indices; tested) and costs one (B × n)·(n × n)
matrix product per layer pair for B replicates, batched over replicates. Percentile intervals
(2.5%, 97.5%) of the replicates give a 95% CI per pair; the argmax over the layers of B, per replicate
and layer of A, gives the distribution of the best-matching layer and so a CI of the match.

Cost: the Grams are O(n²·d) per layer; each pair is O(n²) (O(B·n²) for the bootstrap); memory holds every
Gram, (layers_A + layers_B)·n²·8 bytes — which is why alignment works on a fixed subset of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["BootstrapCKA", "bootstrap_cka", "cka", "cka_matrix", "gram", "hsic1", "match_ci", "percentile_ci"]

#: Smallest number of images for which HSIC₁ is defined (its denominators are n(n−3) and n−2).
MIN_IMAGES = 4
#: Rows of every Gram stacked at a time by :func:`cka_matrix`.
ROW_BLOCK = 64


def gram(chunks: Iterable[np.ndarray], center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The linear Gram matrix K = X Xᵀ (float64) of features given as row chunks, and a per-row finite mask.

    Args:
        chunks: consecutive row blocks (rows, d) of X, any float dtype (fp16 cache rows are fine); they are
            accumulated into one float64 matrix of the subset (n × d; n is the subset, never the dataset).
        center: subtract the mean of the finite rows first (numerics only: HSIC₁ does not need it).

    Returns:
        (K, finite): K is (n, n) float64 with the entries of non-finite rows set to 0; ``finite[i]`` says
        whether row i was finite (the caller drops the others from every Gram of the comparison).
    """
    x = np.concatenate([np.asarray(c, dtype=np.float64) for c in chunks], axis=0)
    finite = np.isfinite(x).all(axis=1)
    x[~finite] = 0.0
    if center and finite.any():
        x[finite] -= x[finite].mean(axis=0)
    k = x @ x.T
    return k, finite


def _terms(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(diag K, K̃1, 1ᵀK̃1) of one Gram, without copying it."""
    d = np.diag(k).astype(np.float64)
    r = k.sum(axis=1, dtype=np.float64) - d
    return d, r, float(r.sum())


def _trace(k: np.ndarray, ll: np.ndarray, dk: np.ndarray, dl: np.ndarray) -> float:
    """tr(K̃L̃) = Σ_ij K_ij L_ij − Σ_i K_ii L_ii (K, L symmetric)."""
    return float(np.vdot(k, ll) - dk @ dl)


def hsic1(k: np.ndarray, ll: np.ndarray) -> float:
    """The unbiased HSIC estimator HSIC₁(K, L) of Song et al. (2012) (formula in the module docstring)."""
    n = k.shape[0]
    if n < MIN_IMAGES:
        raise ValueError(f"HSIC1 needs at least {MIN_IMAGES} images, got {n}")
    dk, rk, sk = _terms(k)
    dl, rl, sl = _terms(ll)
    return (_trace(k, ll, dk, dl) + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(rk @ rl)) / (n * (n - 3))


def cka(k: np.ndarray, ll: np.ndarray) -> float:
    """Debiased linear CKA of two Gram matrices: HSIC₁(K, L) / √(HSIC₁(K, K) HSIC₁(L, L)); NaN when a
    self-term is not positive (a constant representation)."""
    den = hsic1(k, k) * hsic1(ll, ll)
    return float(hsic1(k, ll) / np.sqrt(den)) if den > 0 else float("nan")


def _ratio(num: np.ndarray, self_a: np.ndarray, self_b: np.ndarray) -> np.ndarray:
    den = self_a[..., :, None] * self_b[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.sqrt(np.where(den > 0, den, 1.0)), np.nan)


def cka_matrix(grams_a: Sequence[np.ndarray], grams_b: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Debiased linear CKA between every Gram of ``grams_a`` and every Gram of ``grams_b``: (len_a, len_b).

    ``grams_b=None`` compares ``grams_a`` with itself (symmetric; the diagonal is then exactly 1). All Grams are
    (n, n) float64 over the same images in the same order. tr(K̃L̃) = ⟨K, L⟩ − ⟨diag K, diag L⟩ for every pair
    comes from one matrix product per block of Gram rows; the other two terms from each Gram's row sums.
    """
    same = grams_b is None
    grams_b = grams_a if same else grams_b
    n = grams_a[0].shape[0]
    if n < MIN_IMAGES:
        raise ValueError(f"CKA needs at least {MIN_IMAGES} images, got {n}")
    ta = [_terms(g) for g in grams_a]
    tb = ta if same else [_terms(g) for g in grams_b]
    c1, c2, c3 = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2), 1.0 / (n * (n - 3))

    def hsic(k, ll, t1, t2):
        return (_trace(k, ll, t1[0], t2[0]) + t1[2] * t2[2] * c1 - c2 * float(t1[1] @ t2[1])) * c3

    self_a = np.array([hsic(g, g, t, t) for g, t in zip(grams_a, ta, strict=True)])
    self_b = self_a if same else np.array([hsic(g, g, t, t) for g, t in zip(grams_b, tb, strict=True)])
    # ⟨K_a, L_b⟩ for every pair at once, one block of Gram rows at a time: each Gram is read once and only the
    # block (len · ROW_BLOCK · n values) is copied
    inner = np.zeros((len(grams_a), len(grams_b)))
    for r0 in range(0, n, ROW_BLOCK):
        fa = np.stack([g[r0:r0 + ROW_BLOCK].ravel() for g in grams_a])
        fb = fa if same else np.stack([g[r0:r0 + ROW_BLOCK].ravel() for g in grams_b])
        inner += fa @ fb.T
    da, db = np.stack([t[0] for t in ta]), np.stack([t[0] for t in tb])
    ra, rb = np.stack([t[1] for t in ta]), np.stack([t[1] for t in tb])
    sa, sb = np.array([t[2] for t in ta]), np.array([t[2] for t in tb])
    num = (inner - da @ db.T + np.outer(sa, sb) * c1 - c2 * (ra @ rb.T)) * c3
    out = _ratio(num, self_a, self_b)
    if same:
        out = (out + out.T) / 2
        np.fill_diagonal(out, np.where(self_a > 0, 1.0, np.nan))
    return out


class BootstrapCKA:
    """Replicates of the CKA matrix over images resampled with replacement.

    Attributes:
        values: (n_boot, len_a, len_b) CKA of each replicate (NaN where a self-term was not positive).
        weights: (n_boot, n) multinomial counts of each image in each replicate.
    """

    def __init__(self, values: np.ndarray, weights: np.ndarray) -> None:
        self.values, self.weights = values, weights


def _boot_terms(g: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate: the slot row sums g_i = (Kw)_i − K_ii (B, n) and 1ᵀK̃'1 = Σ_i w_i g_i (B,)."""
    rows = w @ g - np.diag(g)[None, :]
    return rows, np.einsum("bi,bi->b", w, rows)


def _boot_trace(k: np.ndarray, ll: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per replicate: tr(K̃'L̃') = wᵀ(K∘L)w − Σ_i w_i K_ii L_ii, (B,)."""
    m = k * ll
    return np.einsum("bi,bi->b", w @ m, w) - w @ np.diag(m)


def bootstrap_cka(grams_a: Sequence[np.ndarray], grams_b: Sequence[np.ndarray] | None = None, n_boot: int = 200,
                  seed: int = 0) -> BootstrapCKA:
    """CKA matrices of ``n_boot`` resamples of the images (multinomial weights; formulas in the module docstring).

    Exact: each replicate equals :func:`cka_matrix` on the resampled rows and columns of every Gram (images
    repeated as distinct slots). Deterministic for a seed. ``grams_b=None`` compares ``grams_a`` with itself
    (symmetric; only the upper triangle is computed, the diagonal is 1).
    """
    same = grams_b is None
    grams_b = grams_a if same else grams_b
    n = grams_a[0].shape[0]
    if n < MIN_IMAGES:
        raise ValueError(f"CKA needs at least {MIN_IMAGES} images, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC4A]))
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_boot)).astype(np.float64)
    ta = [_boot_terms(g, w) for g in grams_a]
    tb = ta if same else [_boot_terms(g, w) for g in grams_b]
    c1, c2 = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2)

    def hsic(tr, t1, t2):
        return (tr + t1[1] * t2[1] * c1 - c2 * np.einsum("bi,bi,bi->b", w, t1[0], t2[0])) / (n * (n - 3))

    self_a = np.stack([hsic(_boot_trace(g, g, w), t, t) for g, t in zip(grams_a, ta, strict=True)], axis=1)
    self_b = self_a if same else np.stack([hsic(_boot_trace(g, g, w), t, t) for g, t in zip(grams_b, tb,
                                                                                               strict=True)], axis=1)
    num = np.empty((len(w), len(grams_a), len(grams_b)))
    for i, (ga, t_a) in enumerate(zip(grams_a, ta, strict=True)):
        for j, (gb, t_b) in enumerate(zip(grams_b, tb, strict=True)):
            if same and j < i:
                num[:, i, j] = num[:, j, i]
            elif same and j == i:
                num[:, i, j] = self_a[:, i]
            else:
                num[:, i, j] = hsic(_boot_trace(ga, gb, w), t_a, t_b)
    values = _ratio(num, self_a, self_b)
    if same:
        idx = np.arange(len(grams_a))
        values[:, idx, idx] = np.where(self_a > 0, 1.0, np.nan)
    return BootstrapCKA(values, w)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 (replicates), ignoring NaN replicates: (low, high)."""
    alpha = (1.0 - level) / 2
    if not np.isnan(values).any():  # the usual case: one vectorised quantile instead of nanquantile's per-cell loop
        return np.quantile(values, alpha, axis=0), np.quantile(values, 1.0 - alpha, axis=0)
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN cell gives NaN, which is what we want
            lo = np.nanquantile(values, alpha, axis=0)
            hi = np.nanquantile(values, 1.0 - alpha, axis=0)
    return lo, hi


def match_ci(values: np.ndarray, positions_b: Sequence[float], level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per layer of A, a percentile interval of the best-matching layer of B over the replicates.

    Args:
        values: (n_boot, len_a, len_b) replicate CKA matrices (:attr:`BootstrapCKA.values`).
        positions_b: the layer numbers of B's layers (``pre`` = −1), what the interval is expressed in.

    Returns:
        (low, high), each (len_a,), values taken from ``positions_b`` (order statistics, never interpolated).
    """
    pos = np.asarray(positions_b, dtype=np.float64)
    filled = np.where(np.isnan(values), -np.inf, values)
    best = pos[np.argmax(filled, axis=2)]  # (n_boot, len_a)
    alpha = (1.0 - level) / 2
    lo = np.quantile(best, alpha, axis=0, method="inverted_cdf")
    hi = np.quantile(best, 1.0 - alpha, axis=0, method="inverted_cdf")
    return lo, hi
