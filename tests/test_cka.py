"""Debiased linear CKA (vitdepth.metrics.cka) against plain float64 references written out here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vitdepth.metrics.cka import bootstrap_cka, cka, cka_matrix, gram, hsic1, match_ci, percentile_ci


def _feats(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = np.tanh(x @ rng.normal(size=(5, 7))) + 0.3 * rng.normal(size=(n, 7))
    z = rng.normal(size=(n, 3))
    return x, y, z


def _hsic1_loops(k, ll):
    """The Song et al. (2012) formula with explicit loops (K̃, L̃: zero diagonal)."""
    n = len(k)
    kt = [[0.0 if i == j else float(k[i][j]) for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else float(ll[i][j]) for j in range(n)] for i in range(n)]
    trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(kt[i][j] for i in range(n) for j in range(n))
    sum_l = sum(lt[i][j] for i in range(n) for j in range(n))
    rk = [sum(kt[i][j] for j in range(n)) for i in range(n)]
    rl = [sum(lt[i][j] for j in range(n)) for i in range(n)]
    cross = sum(rk[i] * rl[i] for i in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


def _hsic1_ustat(k, ll):
    """The U-statistic definition: mean over ordered 4-tuples of distinct images of
    k_ij l_ij + k_ij l_qr − 2 k_ij l_iq (Song et al. 2012, Theorem 3)."""
    n = len(k)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * ll[i, j] + k[i, j] * ll[q, r] - 2 * k[i, j] * ll[i, q]
        count += 1
    return total / count


def _cka_kornblith(k, ll):
    """Debiased CKA as in Kornblith's reference code: unbiased centring of the Gram, then cosine."""

    def center(g):
        g = np.array(g, dtype=np.float64)
        n = len(g)
        np.fill_diagonal(g, 0)
        means = g.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        g = g - means[:, None] - means[None, :]
        np.fill_diagonal(g, 0)
        return g

    a, b = center(k), center(ll)
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _cka_biased(x, y):
    """Biased linear CKA with explicit H K H centring."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, ll = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.trace(k @ ll) / np.sqrt(np.trace(k @ k) * np.trace(ll @ ll)))


def test_hsic1_matches_loops_and_the_u_statistic():
    x, y, _ = _feats(n=9)
    k, ll = x @ x.T, y @ y.T
    assert hsic1(k, ll) == pytest.approx(_hsic1_loops(k, ll), rel=1e-12)
    assert hsic1(k, ll) == pytest.approx(_hsic1_ustat(k, ll), rel=1e-10)
    assert hsic1(k, k) == pytest.approx(_hsic1_ustat(k, k), rel=1e-10)
    assert cka(k, ll) == pytest.approx(_cka_kornblith(k, ll), rel=1e-10)
    assert 0.2 < cka(k, ll) < 1.0


def test_matrix_equals_pairwise_and_self_diagonal_is_one():
    x, y, z = _feats(n=15)
    grams = [f @ f.T for f in (x, y, z)]
    m = cka_matrix(grams[:2], grams)
    for i in range(2):
        for j in range(3):
            assert m[i, j] == pytest.approx(_cka_kornblith(grams[i], grams[j]), rel=1e-10, abs=1e-12)
    s = cka_matrix(grams)
    assert np.array_equal(np.diag(s), np.ones(3))
    assert np.allclose(s, s.T) and np.allclose(s, cka_matrix(grams, grams))


def test_invariances_orthogonal_isotropic_and_shift():
    x, y, _ = _feats(n=20, seed=3)
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    base = cka(x @ x.T, y @ y.T)
    for xt in (x @ q, 3.7 * x):  # orthogonal, isotropic scale
        assert cka(xt @ xt.T, y @ y.T) == pytest.approx(base, rel=1e-10)
    # a mean shift: exact in exact arithmetic; a large offset costs float64 digits (why gram() centres anyway)
    xs = x + rng.normal(size=5) * 50
    assert cka(xs @ xs.T, y @ y.T) == pytest.approx(base, rel=1e-6)
    ks, _ = gram([xs])
    assert cka(ks, y @ y.T) == pytest.approx(base, rel=1e-12)
    # not invariant to an anisotropic linear map (so the check above can fail)
    xa = x * np.array([10.0, 1, 1, 1, 0.1])
    assert abs(cka(xa @ xa.T, y @ y.T) - base) > 1e-3


def test_debiased_is_near_zero_for_unrelated_features_unlike_biased():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 50)), rng.normal(size=(200, 50))
    assert abs(cka(x @ x.T, y @ y.T)) < 0.05
    assert _cka_biased(x, y) > 0.15


def test_gram_from_chunks_centres_and_flags_nonfinite_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 4)).astype(np.float16)
    k, ok = gram([x[:3], x[3:7], x[7:]])
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    assert ok.all() and np.allclose(k, xc @ xc.T, rtol=1e-12, atol=1e-12)
    x[4, 1] = np.inf
    k, ok = gram([x])
    assert list(np.flatnonzero(~ok)) == [4] and np.isfinite(k).all() and (k[4] == 0).all()


def test_bootstrap_equals_resampling_indices_and_is_seeded():
    x, y, z = _feats(n=14, seed=5)
    grams_a = [x @ x.T, y @ y.T]
    grams_b = [y @ y.T, z @ z.T, x @ x.T]
    boot = bootstrap_cka(grams_a, grams_b, n_boot=6, seed=3)
    assert boot.values.shape == (6, 2, 3) and (boot.weights.sum(1) == 14).all()
    for b in range(6):
        idx = np.repeat(np.arange(14), boot.weights[b].astype(int))  # the same resample, as indices
        sub_a = [g[np.ix_(idx, idx)] for g in grams_a]
        sub_b = [g[np.ix_(idx, idx)] for g in grams_b]
        expect = [[_cka_kornblith(ga, gb) for gb in sub_b] for ga in sub_a]
        assert np.allclose(boot.values[b], expect, rtol=1e-9, atol=1e-12)
    again = bootstrap_cka(grams_a, grams_b, n_boot=6, seed=3)
    assert np.array_equal(again.values, boot.values)
    assert not np.array_equal(bootstrap_cka(grams_a, grams_b, n_boot=6, seed=4).values, boot.values)
    own = bootstrap_cka(grams_a, n_boot=6, seed=3)  # the symmetric path agrees with the general one
    assert np.allclose(own.values, bootstrap_cka(grams_a, grams_a, n_boot=6, seed=3).values, rtol=1e-12)
    assert (own.values[:, [0, 1], [0, 1]] == 1).all()


def test_percentile_and_match_intervals():
    vals = np.zeros((40, 2, 4))
    vals[:, 0, 1] = np.linspace(0, 1, 40)
    vals[:30, 1, 2] = 0.9  # layer 1 of A matches B's third layer in 30 replicates, its fourth in 10
    vals[30:, 1, 3] = 0.9
    lo, hi = percentile_ci(vals)
    assert lo[0, 1] == pytest.approx(0.025, abs=1e-9) and hi[0, 1] == pytest.approx(0.975, abs=1e-9)
    mlo, mhi = match_ci(vals, [-1, 0, 1, 2])
    assert (mlo[0], mhi[0]) == (0, 0)
    assert (mlo[1], mhi[1]) == (1, 2)
