"""Parity of the attention-graph metrics with brute-force float64 loops, plus hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from vitdepth._errors import VitdepthError
from vitdepth.metrics.attention_graph import attention_graph

# --------------------------------------------------------------------------------------------
# Brute-force reference: explicit loops over images, heads, queries and keys, float64.
# --------------------------------------------------------------------------------------------


def _entropy(p: np.ndarray) -> float:
    return -sum(float(v) * math.log(v) for v in p if v > 0)


def _js_by_hand(p: np.ndarray, q: np.ndarray) -> float:
    """JS via the two KL terms, natural log, 0 log 0 = 0."""
    m = 0.5 * (p + q)
    kl_pm = sum(pi * math.log(pi / mi) for pi, mi in zip(p, m, strict=True) if pi > 0)
    kl_qm = sum(qi * math.log(qi / mi) for qi, mi in zip(q, m, strict=True) if qi > 0)
    return 0.5 * (kl_pm + kl_qm)


def ref_attention_graph(attn: np.ndarray, num_prefix: int, grid: tuple[int, int], has_cls: bool) -> dict:
    b_, h_, t_, _ = attn.shape
    gh, gw = grid
    p_ = gh * gw
    pos = [(r, c) for r in range(gh) for c in range(gw)]
    out = {"cls_centrality": [], "cls_self": [], "attn_consensus": [], "attn_distance": []}
    for b in range(b_):
        ccc, self_, js_total, dist_total = 0.0, 0.0, 0.0, 0.0
        for h in range(h_):
            rows = [attn[b, h, num_prefix + q] for q in range(p_)]
            mean_row = np.array([sum(r[k] for r in rows) / p_ for k in range(t_)])
            self_ += attn[b, h, 0, 0]
            for q in range(p_):
                ccc += rows[q][0]
                js_total += jensenshannon(rows[q], mean_row) ** 2  # scipy: sqrt(JS) in nats
                num = den = 0.0
                for k in range(p_):
                    a = rows[q][num_prefix + k]
                    num += a * math.dist(pos[q], pos[k])
                    den += a
                dist_total += num / den
        out["cls_centrality"].append(ccc / (h_ * p_))
        out["cls_self"].append(self_ / h_)
        out["attn_consensus"].append(1.0 - js_total / (h_ * p_) / math.log(2))
        out["attn_distance"].append(dist_total / (h_ * p_))
    if not has_cls:
        del out["cls_centrality"], out["cls_self"]
    return {k: np.array(v) for k, v in out.items()}


def _attention(b: int, h: int, t: int, seed: int = 0, zeros: bool = True) -> torch.Tensor:
    """Row-stochastic attention, sharp enough that heads differ, with exact zeros."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(b, h, t, t, generator=g, dtype=torch.float64) * 2.0).softmax(-1)
    if zeros:
        a = a * (torch.rand(b, h, t, t, generator=g, dtype=torch.float64) > 0.3)
        a[..., -1] += 1e-3  # keep every row's patch mass positive
        a = a / a.sum(-1, keepdim=True)
    return a


# --------------------------------------------------------------------------------------------
# Parity.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_prefix", "grid", "has_cls"),
    [(1, (3, 4), True), (5, (2, 5), True), (5, (4, 3), False), (0, (3, 3), False)],
    ids=["cls", "cls+4reg", "5reg-no-cls", "no-prefix"],
)
def test_matches_brute_force_loops(num_prefix, grid, has_cls):
    t = num_prefix + grid[0] * grid[1]
    a = _attention(3, 2, t, seed=num_prefix)
    got = attention_graph(a, num_prefix, grid, has_cls)
    want = ref_attention_graph(a.numpy(), num_prefix, grid, has_cls)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == torch.float64 and got[key].shape == (3,), key
        np.testing.assert_allclose(got[key].numpy(), value, rtol=0, atol=1e-12, err_msg=key)
    # The random case is far from the degenerate ends, so the parity is informative.
    assert ((got["attn_consensus"] > 0.05) & (got["attn_consensus"] < 0.95)).all()


def test_scipy_js_agrees_with_hand_written_kl():
    # Guards the reference itself (scipy's jensenshannon returns the square root, base e).
    a = _attention(1, 1, 8, seed=3).numpy()[0, 0]
    for p, q in [(a[1], a[2]), (a[3], a.mean(0))]:
        assert jensenshannon(p, q) ** 2 == pytest.approx(_js_by_hand(p, q), abs=1e-14)


def test_has_cls_false_drops_only_the_cls_metrics():
    a = _attention(2, 3, 1 + 12, seed=1)
    with_cls = attention_graph(a, 1, (3, 4), True)
    without = attention_graph(a, 1, (3, 4), False)
    assert set(with_cls) == {"cls_centrality", "cls_self", "attn_consensus", "attn_distance"}
    assert set(without) == {"attn_consensus", "attn_distance"}
    for key in without:
        torch.testing.assert_close(without[key], with_cls[key], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Known cases.
# --------------------------------------------------------------------------------------------


def test_identical_rows_give_consensus_one():
    g = torch.Generator().manual_seed(0)
    row = torch.randn(2, 3, 1, 13, generator=g, dtype=torch.float64).softmax(-1)
    a = row.expand(2, 3, 13, 13).contiguous()
    for dtype in (torch.float64, torch.float32):
        got = attention_graph(a.to(dtype), 1, (3, 4), True)["attn_consensus"]
        np.testing.assert_allclose(got.numpy(), 1.0, atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_one_hot_rows_to_distinct_keys_give_low_consensus():
    # Patch q reads only patch key q: the mean row is uniform over the P patch keys, and
    # JS(delta, u_P) = H(delta/2 + u_P/2) - ln(P)/2 for every query.
    num_prefix, grid = 1, (3, 4)
    p = 12
    a = torch.zeros(1, 2, 13, 13, dtype=torch.float64)
    a[:, :, 0, 0] = 1.0
    for q in range(p):
        a[:, :, 1 + q, 1 + q] = 1.0
    m = np.array([0.5 + 0.5 / p] + [0.5 / p] * (p - 1))
    js = -(m * np.log(m)).sum() - 0.5 * math.log(p)
    got = attention_graph(a, num_prefix, grid, True)
    assert got["attn_consensus"].item() == pytest.approx(1.0 - js / math.log(2), abs=1e-12)
    assert got["attn_consensus"].item() < 0.25
    # Each query reads only itself: distance 0.
    assert got["attn_distance"].item() == pytest.approx(0.0, abs=1e-12)
    assert got["cls_centrality"].item() == 0.0 and got["cls_self"].item() == 1.0


def test_all_patches_attend_to_cls_gives_centrality_one():
    a = torch.zeros(2, 3, 1 + 6, 1 + 6, dtype=torch.float64)
    a[..., 0] = 1.0
    got = attention_graph(a, 1, (2, 3), True)
    np.testing.assert_allclose(got["cls_centrality"].numpy(), 1.0, atol=0)
    np.testing.assert_allclose(got["cls_self"].numpy(), 1.0, atol=0)
    np.testing.assert_allclose(got["attn_consensus"].numpy(), 1.0, atol=1e-12)
    # Documented: no patch mass anywhere, so no distance.
    assert got["attn_distance"].isnan().all()


def test_uniform_attention_over_patches_on_2x2_grid():
    # Every patch sees distances 0, 1, 1, sqrt(2) to the four patches: mean (2 + sqrt 2) / 4.
    want = (2.0 + math.sqrt(2.0)) / 4.0
    a = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    a[..., 1:] = 0.25
    got = attention_graph(a, 1, (2, 2), True)
    assert got["attn_distance"].item() == pytest.approx(want, abs=1e-12)
    assert got["cls_centrality"].item() == 0.0
    # Prefix keys have no position: half the mass on CLS leaves the (renormalised) distance unchanged.
    a[..., 0] = 0.5
    a[..., 1:] = 0.125
    got = attention_graph(a, 1, (2, 2), True)
    assert got["attn_distance"].item() == pytest.approx(want, abs=1e-12)
    assert got["cls_centrality"].item() == pytest.approx(0.5, abs=1e-12)


def test_distance_uses_row_and_column_on_a_non_square_grid():
    # Patch 0 reads only patch 3, the other patches read themselves. Row-major, patch 3 sits at
    # (1, 0) on a 2 x 3 grid (distance 1 from patch 0) and at (1, 1) on a 3 x 2 grid (sqrt 2).
    a = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    for q in range(6):
        a[0, 0, q, q] = 1.0
    a[0, 0, 0] = 0.0
    a[0, 0, 0, 3] = 1.0
    got = attention_graph(a, 0, (2, 3), False)
    assert got["attn_distance"].item() == pytest.approx(1.0 / 6, abs=1e-12)
    assert attention_graph(a, 0, (3, 2), False)["attn_distance"].item() == pytest.approx(math.sqrt(2.0) / 6, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Streaming, precision, inputs.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_uneven_batch_splits_concatenate_to_one_batch(dtype):
    a = _attention(11, 2, 5 + 12, seed=7).to(dtype)
    whole = attention_graph(a, 5, (4, 3), True)
    parts = [attention_graph(a[lo:hi], 5, (4, 3), True) for lo, hi in [(0, 4), (4, 5), (5, 11)]]
    # float32 matmul blocking may depend on the batch size: a few ulps, not more.
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    for key, value in whole.items():
        merged = torch.cat([part[key] for part in parts])
        np.testing.assert_allclose(merged.numpy(), value.numpy(), rtol=0, atol=atol, err_msg=key)


def test_float32_within_1e5_of_float64_reference():
    num_prefix, grid = 1, (7, 8)
    a = _attention(2, 3, num_prefix + 56, seed=11)
    want = ref_attention_graph(a.numpy(), num_prefix, grid, True)
    got = attention_graph(a.float(), num_prefix, grid, True)
    for key, value in want.items():
        assert got[key].dtype == torch.float64
        np.testing.assert_allclose(got[key].numpy(), value, rtol=0, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_and_leaves_input_untouched(dtype):
    a64 = _attention(2, 2, 1 + 12, seed=2, zeros=False)
    a = a64.to(dtype)
    before = a.clone()
    got = attention_graph(a, 1, (3, 4), True)
    assert torch.equal(a, before)  # the float32 copy is modified in place, never the input
    want = attention_graph(a.double(), 1, (3, 4), True)
    for key in want:
        assert got[key].dtype == torch.float64
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, err_msg=key)


def test_float32_input_is_not_modified():
    a = _attention(2, 2, 1 + 6, seed=4).float()
    before = a.clone()
    attention_graph(a, 1, (2, 3), True)
    assert torch.equal(a, before)


def test_nan_propagates_per_image():
    a = _attention(2, 2, 1 + 4, seed=5)
    a[0, 1, 2, 3] = math.nan
    got = attention_graph(a, 1, (2, 2), True)
    for key in ("attn_consensus", "attn_distance"):
        assert got[key][0].isnan() and not got[key][1].isnan(), key
    # The CLS metrics read only key 0 and row 0, which hold no NaN.
    assert not got["cls_centrality"].isnan().any() and not got["cls_self"].isnan().any()


def test_bad_inputs_raise_one_line_errors():
    a = torch.zeros(2, 1, 13, 13)
    with pytest.raises(VitdepthError, match=r"attn of shape \(2, 1, 13, 13\).*expected \(B, H, 10, 10\)"):
        attention_graph(a, 1, (3, 3), True)
    with pytest.raises(ValueError, match="has_cls=True needs num_prefix >= 1"):
        attention_graph(torch.zeros(2, 1, 12, 12), 0, (3, 4), True)
    with pytest.raises(ValueError, match=r"grid must be a pair of positive ints"):
        attention_graph(a, 1, (12,), True)
    with pytest.raises(ValueError, match=r"\(B, H, T, T\); got shape \(13, 13\)"):
        attention_graph(torch.zeros(13, 13), 1, (3, 4), True)
    with pytest.raises(ValueError, match="floating-point"):
        attention_graph(a.long(), 1, (3, 4), True)
    with pytest.raises(VitdepthError, match="num_prefix must be an int >= 0; got -1"):
        attention_graph(a, -1, (3, 4), False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu():
    a = _attention(4, 3, 1 + 49, seed=8).float()
    want = attention_graph(a, 1, (7, 7), True)
    for dtype in (torch.float32, torch.bfloat16):
        got = attention_graph(a.cuda().to(dtype), 1, (7, 7), True)
        for key in want:
            assert got[key].device.type == "cuda" and got[key].dtype == torch.float64
            np.testing.assert_allclose(
                got[key].cpu().numpy(), want[key].numpy(), atol=1e-5 if dtype == torch.float32 else 2e-2
            )


def test_gradients_flow():
    # Usable as a training-time check: float64 gradcheck, and the low-precision in-place path
    # must not trip autograd's version counter.
    logits = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)

    def f(x):
        out = attention_graph(x.softmax(-1), 1, (2, 2), True)
        return out["attn_consensus"], out["attn_distance"], out["cls_centrality"]

    assert torch.autograd.gradcheck(f, (logits,))
    out = attention_graph(logits.softmax(-1).to(torch.bfloat16), 1, (2, 2), True)
    (out["attn_consensus"].sum() + out["attn_distance"].sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
