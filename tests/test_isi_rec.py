"""Reconstruction ISI: parity with scikit-learn ridges on explicit features, streaming, constructed blocks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler

from vitdepth._errors import VitdepthError
from vitdepth.metrics.isi_rec import (
    DEFAULT_ALPHAS,
    ReconstructionISI,
    default_k_in,
    draw_projections,
    isi_reconstruction,
)

GRID = np.logspace(-2, 5, 15)  # a short grid keeps the scikit-learn reference loops fast


def _block(n=600, num_tokens=5, num_patches=4, dim=12, rank=3, mix=0.0, noise=0.3, seed=0,
           const_prefix=False, pos_scale=3.0):
    """Synthetic layer: patch token p = M (e_p + mix * sum_q A_pq e_q) + pos_p + noise, prefix tokens noise.

    ``e_p`` are i.i.d. over patches and images (rank-``rank`` Gaussians in ``dim`` dims), ``M`` is one
    map applied to every token (as a transformer's weights are), ``pos_p`` a per-position offset
    (a position embedding) and ``A`` a fixed random patch-mixing matrix with a zero diagonal.
    """
    rng = np.random.default_rng(seed)
    pre = rng.standard_normal((n, num_patches, rank)) @ rng.standard_normal((rank, dim))
    mixing = mix * rng.standard_normal((num_patches, num_patches))
    np.fill_diagonal(mixing, 0.0)
    mixed = pre + np.einsum("pq,nqd->npd", mixing, pre)
    m = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    pos = pos_scale * rng.standard_normal((num_patches, dim))
    patches = mixed @ m + pos + noise * rng.standard_normal((n, num_patches, dim))
    n_prefix = num_tokens - num_patches
    if const_prefix:  # a CLS token at block 0's input: the same vector for every image
        prefix = np.broadcast_to(5.0 + rng.standard_normal((1, n_prefix, dim)), (n, n_prefix, dim))
    else:
        prefix = rng.standard_normal((n, n_prefix, dim))
    tokens = np.concatenate([prefix, patches], axis=1)
    split = np.array([0, 0, 1, 2])[np.arange(n) % 4][rng.permutation(n)]  # 1/2 train, 1/4 val, 1/4 test
    return torch.from_numpy(tokens), torch.from_numpy(pre), split


def _fit(tokens, pre, split, batches=None, **kw):
    isi = ReconstructionISI(tokens.shape[2], tokens.shape[1], pre.shape[1], **kw)
    edges = [0, *np.cumsum(batches or [len(split)])]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        isi.update(tokens[a:b], pre[a:b], split[a:b])
    return isi


# --------------------------------------------------------------------------------------------
# Explicit reference: projected features formed in full, StandardScaler + Ridge + r2_score.
# --------------------------------------------------------------------------------------------


def _explicit(tokens, pre, isi):
    n, t, _ = tokens.shape
    p = pre.shape[1]
    x_all = (tokens.numpy() @ isi.r_in).reshape(n, -1)  # (n, T k_in), token-major
    y_all = (pre.numpy() @ isi.r_out).reshape(n, -1)  # (n, P k)
    x_self = tokens.numpy()[:, t - p :] @ isi.r_in  # (n, P, k_in)
    y_self = pre.numpy() @ isi.r_out  # (n, P, k)
    return x_all, y_all, x_self, y_self


def _ref_all(x, y, split, alpha, on=2):
    tr, ev = split == 0, split == on
    sc = StandardScaler().fit(x[tr])
    pred = Ridge(alpha=alpha, solver="cholesky").fit(sc.transform(x[tr]), y[tr]).predict(sc.transform(x[ev]))
    return pred, y[ev]


def _ref_self(x, y, split, alpha, on=2):
    """Shared map, per-position intercepts: centre on train per-position means, pooled within-position std."""
    tr, ev = split == 0, split == on
    k_in, k = x.shape[2], y.shape[2]
    mx, my = x[tr].mean(0), y[tr].mean(0)
    xc, yc = x - mx, y - my
    scale = xc[tr].reshape(-1, k_in).std(0)
    ridge = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky")
    ridge.fit((xc[tr] / scale).reshape(-1, k_in), yc[tr].reshape(-1, k))
    pred = ridge.predict((xc[ev] / scale).reshape(-1, k_in)).reshape(xc[ev].shape[0], -1, k) + my
    n_ev = int(ev.sum())
    return pred.reshape(n_ev, -1), y[ev].reshape(n_ev, -1)


@pytest.mark.parametrize("const_prefix", [False, True])
def test_r2_and_alphas_equal_sklearn_ridge_on_explicit_features(const_prefix):
    tokens, pre, split = _block(mix=0.6, noise=0.8, const_prefix=const_prefix)
    isi = _fit(tokens, pre, split, k=3, k_in=4, seed=3, alphas=GRID)
    out = isi.compute()
    x_all, y_all, x_self, y_self = _explicit(tokens, pre, isi)

    pred, y = _ref_all(x_all, y_all, split, out["alpha_all"])
    assert out["r2_all"] == pytest.approx(r2_score(y, pred, multioutput="variance_weighted"), abs=1e-6)
    pred, y = _ref_self(x_self, y_self, split, out["alpha_self"])
    assert out["r2_self"] == pytest.approx(r2_score(y, pred, multioutput="variance_weighted"), abs=1e-6)
    assert out["isi_rec"] == pytest.approx(out["r2_all"] - out["r2_self"], abs=1e-12)
    assert 0.05 < out["r2_self"] < out["r2_all"] < 0.99  # a case where both fits are informative

    # Each alpha is the grid's argmin of the pooled *validation* SSE, recomputed by scikit-learn.
    for name, ref, x, y in (("all", _ref_all, x_all, y_all), ("self", _ref_self, x_self, y_self)):
        sse = [np.sum((np.subtract(*ref(x, y, split, a, on=1))) ** 2) for a in GRID]
        assert out[f"alpha_{name}"] == GRID[int(np.argmin(sse))], name


def test_few_train_images_kernel_path_equals_gram_path_and_sklearn():
    """With fewer train images than inputs (T k_in) the fit runs through the n x n train kernel: same answer."""
    tokens, pre, split = _block(n=112, mix=0.6, noise=0.8, seed=6)
    isi = _fit(tokens, pre, split, batches=[30, 50, 32], k=3, k_in=12, seed=2, alphas=GRID)
    assert isi.input_width == 60 and 0 < int((split == 0).sum()) <= 60 and isi._held[0]  # kernel path
    rows = isi.compute()
    as_sums = ReconstructionISI(12, 5, 4, k=3, k_in=12, seed=2, alphas=GRID)
    as_sums.load_state_dict(isi.state_dict())  # sums only: the Gram path
    assert not as_sums._held
    sums = as_sums.compute()
    for key in ("isi_rec", "r2_self", "r2_all"):
        assert rows[key] == pytest.approx(sums[key], abs=1e-8), key
    assert (rows["alpha_all"], rows["alpha_self"]) == (sums["alpha_all"], sums["alpha_self"])
    x_all, y_all, _, _ = _explicit(tokens, pre, isi)
    pred, y = _ref_all(x_all, y_all, split, rows["alpha_all"])
    assert rows["r2_all"] == pytest.approx(r2_score(y, pred, multioutput="variance_weighted"), abs=1e-6)
    sse = [np.sum((np.subtract(*_ref_all(x_all, y_all, split, a, on=1))) ** 2) for a in GRID]
    assert rows["alpha_all"] == GRID[int(np.argmin(sse))]


def test_self_model_is_sklearn_ridge_with_unpenalised_position_intercepts():
    # Cross-check of the self-only convention by a second route: one-hot position columns scaled
    # so large that their ridge penalty vanishes are the same as unpenalised per-position intercepts.
    tokens, pre, split = _block(n=400, mix=0.5, noise=0.5, seed=4)
    isi = _fit(tokens, pre, split, k=3, k_in=4, alphas=GRID)
    out = isi.compute()
    _, _, x_self, y_self = _explicit(tokens, pre, isi)
    n, p, k_in = x_self.shape
    tr, te = split == 0, split == 2
    mx = x_self[tr].mean(0)
    scale = (x_self - mx)[tr].reshape(-1, k_in).std(0)
    onehot = np.broadcast_to(1e5 * np.eye(p), (n, p, p))
    feats = np.concatenate([x_self / scale, onehot], axis=2)
    ridge = Ridge(alpha=out["alpha_self"]).fit(feats[tr].reshape(-1, k_in + p), y_self[tr].reshape(-1, 3))
    pred = ridge.predict(feats[te].reshape(-1, k_in + p)).reshape(int(te.sum()), -1)
    ref = r2_score(y_self[te].reshape(int(te.sum()), -1), pred, multioutput="variance_weighted")
    assert out["r2_self"] == pytest.approx(ref, abs=1e-5)


def test_alpha_is_chosen_on_validation_only():
    tokens, pre, split = _block(mix=0.6, noise=0.8, seed=1)
    base = _fit(tokens, pre, split, k=3, k_in=4, alphas=GRID).compute()
    other_tokens, other_pre, _ = _block(mix=0.6, noise=2.0, seed=9)
    test = split == 2
    tokens2, pre2 = tokens.clone(), pre.clone()
    tokens2[test], pre2[test] = other_tokens[test], other_pre[test]
    changed = _fit(tokens2, pre2, split, k=3, k_in=4, alphas=GRID).compute()
    assert changed["alpha_all"] == base["alpha_all"] and changed["alpha_self"] == base["alpha_self"]
    assert abs(changed["r2_all"] - base["r2_all"]) > 0.01  # the test data did change the score

    val = split == 1
    tokens3 = tokens.clone()
    tokens3[val] = other_tokens[val]
    moved = _fit(tokens3, pre, split, k=3, k_in=4, alphas=GRID).compute()
    assert (moved["alpha_all"], moved["alpha_self"]) != (base["alpha_all"], base["alpha_self"])


# --------------------------------------------------------------------------------------------
# Streaming, merging, state.
# --------------------------------------------------------------------------------------------


def _assert_states_close(a, b):
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-9)


def test_uneven_batches_and_merge_equal_one_batch():
    tokens, pre, split = _block(n=500, mix=0.5, seed=2)
    one = _fit(tokens, pre, split, k=3, k_in=4, alphas=GRID)
    streamed = _fit(tokens, pre, split, batches=[7, 1, 180, 12, 300], k=3, k_in=4, alphas=GRID)
    left = _fit(tokens[:211], pre[:211], split[:211], batches=[200, 11], k=3, k_in=4, alphas=GRID)
    right = _fit(tokens[211:], pre[211:], split[211:], batches=[3, 286], k=3, k_in=4, alphas=GRID)
    merged = left.merge(right)
    ref = one.compute()
    for other in (streamed, merged):
        _assert_states_close(other.state_dict(), one.state_dict())
        for key, value in other.compute().items():
            assert value == pytest.approx(ref[key], abs=1e-9), key
    assert int(one.state_dict()["n"].sum()) == 500


def test_single_split_batches_and_empty_rank():
    tokens, pre, split = _block(n=300, seed=5)
    order = np.argsort(split, kind="stable")  # batches that each hold one split (the no-index path)
    one = _fit(tokens, pre, split, k=3, k_in=4)
    sorted_ = _fit(tokens[order], pre[order], split[order], batches=[100, 50, 75, 75], k=3, k_in=4)
    _assert_states_close(sorted_.state_dict(), one.state_dict())
    empty = ReconstructionISI(12, 5, 4, k=3, k_in=4)
    assert all(float(v.abs().sum()) == 0 for v in empty.state_dict().values())
    assert empty.merge(one).compute() == one.compute()  # a rank with no data contributes zeros


def test_state_dict_round_trip_is_sums_only_and_pickles():
    tokens, pre, split = _block(n=300, seed=6)
    isi = _fit(tokens, pre, split, k=3, k_in=4)
    state = isi.state_dict()
    assert set(state) == {"n", "sum_x", "sum_y", "sum_y2", "gram", "cross"}
    assert all(v.shape[0] == 3 for v in state.values())
    assert state["gram"].shape == (3, 20, 20) and state["cross"].shape == (3, 20, 12)
    assert state["gram"].dtype == torch.float64 and state["n"].dtype == torch.int64
    # DDP-style: the state of two ranks summed tensor by tensor = the state of the union.
    halves = [_fit(tokens[s], pre[s], split[s], k=3, k_in=4) for s in (slice(0, 120), slice(120, None))]
    summed = {k: halves[0].state_dict()[k] + halves[1].state_dict()[k] for k in state}
    fresh = ReconstructionISI(12, 5, 4, k=3, k_in=4)
    fresh.load_state_dict(summed)
    assert fresh.compute() == pytest.approx(isi.compute(), abs=1e-9)
    clone = pickle.loads(pickle.dumps(isi))
    assert clone.compute() == isi.compute()
    with pytest.raises(VitdepthError, match=r"'gram' must have shape \(3, 20, 20\)"):
        fresh.load_state_dict({**summed, "gram": summed["gram"][:, :5, :5]})


def test_low_precision_inputs_and_inference_mode():
    tokens, pre, split = _block(n=300, seed=7)
    with torch.inference_mode():
        isi = _fit(tokens.to(torch.bfloat16), pre.to(torch.float16), split, k=3, k_in=4)
    isi.update(tokens[:10].float(), pre[:10].float(), split[:10])  # outside inference mode afterwards
    ref = _fit(tokens.to(torch.bfloat16).double(), pre.to(torch.float16).double(), split, k=3, k_in=4)
    ref.update(tokens[:10].float().double(), pre[:10].float().double(), split[:10])
    _assert_states_close(isi.state_dict(), ref.state_dict())


# --------------------------------------------------------------------------------------------
# Constructed blocks: unmixed tokens give ~0, mixed tokens clearly > 0.
# --------------------------------------------------------------------------------------------


def test_unmixed_block_gives_isi_near_zero():
    # Every patch token is the same linear map of its own embedding plus a position offset and
    # noise; prefix tokens are pure noise. Nothing is scrambled.
    tokens, pre, split = _block(n=2400, mix=0.0, noise=0.5, seed=8)
    out = _fit(tokens, pre, split, k=3, k_in=4).compute()
    assert out["r2_self"] > 0.5
    assert abs(out["isi_rec"]) < 0.02, out


def test_mixing_block_gives_clearly_positive_isi():
    # Each token = its own embedding + a strong random mix of the other patches' embeddings:
    # token p alone cannot separate e_p from the mix, all tokens together can.
    tokens, pre, split = _block(n=2400, mix=1.0, noise=0.1, seed=8)
    out = _fit(tokens, pre, split, k=3, k_in=4).compute()
    assert out["r2_all"] > 0.9
    assert out["isi_rec"] > 0.1, out


def test_one_shot_equals_streaming_shell():
    tokens, pre, split = _block(n=300, mix=0.4, seed=10)
    one_shot = isi_reconstruction(tokens, pre, torch.from_numpy(split), k=3, k_in=4)
    assert one_shot == pytest.approx(_fit(tokens, pre, split, batches=[150, 150], k=3, k_in=4).compute(), abs=1e-12)


# --------------------------------------------------------------------------------------------
# Projections.
# --------------------------------------------------------------------------------------------


def test_projections_are_deterministic_orthonormal_and_recorded():
    a = ReconstructionISI(32, 197, 196, seed=11)
    b = ReconstructionISI(32, 197, 196, seed=11)
    c = ReconstructionISI(32, 197, 196, seed=12)
    np.testing.assert_array_equal(a.r_in, b.r_in)
    np.testing.assert_array_equal(a.r_out, b.r_out)
    assert a.projection_info() == b.projection_info()
    assert a.projection_info()["sha256"] != c.projection_info()["sha256"]
    assert not np.allclose(a.r_in, c.r_in)
    for r in (a.r_in, a.r_out):
        np.testing.assert_allclose(r.T @ r, np.eye(r.shape[1]), atol=1e-12)
    info = a.projection_info()
    assert (info["k"], info["k_in"], info["r_in_shape"], info["r_out_shape"]) == (8, 5, [32, 5], [32, 8])
    assert len(info["sha256"]) == 64 and info["seed"] == 11
    # The targets' projection does not depend on the input width or token count.
    np.testing.assert_array_equal(draw_projections(32, 3, 8, 11)[1], a.r_out)


def test_defaults():
    assert default_k_in(197) == 5 and default_k_in(17) == 32 and default_k_in(50) == 20 and default_k_in(5000) == 1
    assert default_k_in(5, dim=16) == 16 and ReconstructionISI(16, 5, 4).r_in.shape == (16, 16)
    isi = ReconstructionISI(384, 197, 196)
    assert (isi.k, isi.k_in, isi.input_width, isi.output_width) == (8, 5, 985, 1568)
    np.testing.assert_array_equal(isi.alphas, DEFAULT_ALPHAS)


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    tokens, pre, split = _block(n=30)
    with pytest.raises(ValueError, match=r"'k' parameter of ReconstructionISI must be an int in the range \[1, 12\]"):
        ReconstructionISI(12, 5, 4, k=13)
    with pytest.raises(ValueError, match="'num_patches' parameter"):
        ReconstructionISI(12, 5, 6)
    with pytest.raises(ValueError, match="'alphas' parameter"):
        ReconstructionISI(12, 5, 4, alphas=[1.0, -1.0])
    isi = ReconstructionISI(12, 5, 4, k=3, k_in=4)
    with pytest.raises(VitdepthError, match=r"tokens must have shape \(B, T, d\) = \(B, 5, 12\); got \(30, 4, 12\)"):
        isi.update(tokens[:, 1:], pre, split)
    with pytest.raises(VitdepthError, match="same images"):
        isi.update(tokens, pre[:10], split)
    with pytest.raises(VitdepthError, match="codes must be 0/1/2"):
        isi.update(tokens, pre, split + 1)
    with pytest.raises(VitdepthError, match=r"split must be an integer array of shape \(30,\)"):
        isi.update(tokens, pre, split[:5])
    isi.update(tokens, pre, np.where(split == 1, 0, split))
    with pytest.raises(VitdepthError, match="val has none"):
        isi.compute()
    with pytest.raises(VitdepthError, match=r"differ in \['seed', 'sha256'\]"):
        isi.merge(ReconstructionISI(12, 5, 4, k=3, k_in=4, seed=1))


def test_shared_targets_equal_own_projection():
    """Layers of one batch may share one projection of the pre-PE embeddings: same state, same result."""
    tokens, pre, split = _block(n=200, mix=0.4, seed=8)
    own = _fit(tokens, pre, split, k=3, k_in=4)
    shared = ReconstructionISI(12, 5, 4, k=3, k_in=4)
    other_layer = ReconstructionISI(12, 5, 4, k=3, k_in=4)  # same projections: its targets serve
    for a, b in ((0, 70), (70, 200)):
        shared.update(tokens[a:b], pre[a:b], split[a:b], targets=other_layer.targets(pre[a:b]))
    _assert_states_close(shared.state_dict(), own.state_dict())
    with pytest.raises(VitdepthError, match=r"targets must have shape \(B, P k\) = \(3, 12\)"):
        shared.update(tokens[:3], pre[:3], split[:3], targets=torch.zeros(3, 5))
