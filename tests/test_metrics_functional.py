"""Parity of the functional token/attention metrics with brute-force float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitdepth._errors import VitdepthError
from vitdepth.metrics.functional import (
    attention_entropy,
    cls_patch_similarity,
    isi_attention,
    softmax_and_entropy_,
    token_similarity,
    token_similarity_centered,
)

# --------------------------------------------------------------------------------------------
# Brute-force references: explicit matrices and loops, float64, no shared code with the library.
# --------------------------------------------------------------------------------------------


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def ref_token_similarity(patches: np.ndarray) -> np.ndarray:
    out = []
    for z in patches:
        p = z.shape[0]
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        n = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
        cos = n @ n.T  # the full P x P matrix
        off_diag = ~np.eye(p, dtype=bool)
        out.append(cos[off_diag].mean())
    return np.array(out)


def ref_token_similarity_centered(patches: np.ndarray) -> np.ndarray:
    return ref_token_similarity(patches - patches.mean(axis=1, keepdims=True))


def ref_cls_patch_similarity(cls: np.ndarray, patches: np.ndarray) -> np.ndarray:
    return np.array([np.mean([_cos(c, z) for z in zs]) for c, zs in zip(cls, patches, strict=True)])


def ref_attention_entropy(attn: np.ndarray) -> np.ndarray:
    b_, h_, t_, s_ = attn.shape
    out = np.zeros((b_, t_))
    for b in range(b_):
        for t in range(t_):
            acc = 0.0
            for h in range(h_):
                ent = 0.0
                for p in attn[b, h, t]:
                    if p > 0:
                        ent -= p * math.log(p)
                acc += ent / math.log(s_)
            out[b, t] = acc / h_
    return out


def ref_isi(x_in: np.ndarray, x_mid: np.ndarray, attn: np.ndarray) -> dict[str, np.ndarray]:
    e = ref_attention_entropy(attn)
    isi, delta, ent = [], [], []
    for b in range(x_in.shape[0]):
        s_list, se_list, e_list = [], [], []
        for i in range(x_in.shape[1]):
            s = 1.0 - _cos(x_in[b, i], x_mid[b, i])
            s_list.append(s)
            se_list.append(s * e[b, i])
            e_list.append(e[b, i])
        isi.append(np.mean(se_list))
        delta.append(np.mean(s_list))
        ent.append(np.mean(e_list))
    return {"isi_attn": np.array(isi), "attn_delta": np.array(delta), "attn_entropy": np.array(ent)}


# --------------------------------------------------------------------------------------------
# Fixtures.
# --------------------------------------------------------------------------------------------


def _tokens(b: int = 5, p: int = 17, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A shared offset makes the raw similarity clearly positive, so centring has work to do.
    return torch.randn(b, p, d, generator=g, dtype=torch.float64) + 0.7 * torch.randn(
        b, 1, d, generator=g, dtype=torch.float64
    )


def _attention(b: int = 3, h: int = 4, t: int = 9, s: int | None = None, seed: int = 0) -> torch.Tensor:
    """Row-stochastic attention with exact zeros, a one-hot row and a uniform row."""
    s = t if s is None else s
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, h, t, s, generator=g, dtype=torch.float64) * 2.0
    a = logits.softmax(-1)
    a = a * (torch.rand(b, h, t, s, generator=g, dtype=torch.float64) > 0.3)
    a[..., 0] += 1e-3  # keep every row non-empty after the zeroing
    a = a / a.sum(-1, keepdim=True)
    a[0, :, 1] = 0.0
    a[0, :, 1, 2] = 1.0  # one-hot row in every head: entropy 0
    a[1, :, 2] = 1.0 / s  # uniform row in every head: entropy 1
    return a


# --------------------------------------------------------------------------------------------
# Parity with the references.
# --------------------------------------------------------------------------------------------


def test_token_similarity_matches_full_cosine_matrix():
    z = _tokens()
    z[1, 3] = 0.0  # a zero-norm token: cosine 0 with everything, still counted in P(P-1)
    got = token_similarity(z)
    assert got.dtype == torch.float64 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), ref_token_similarity(z.numpy()), rtol=0, atol=1e-12)
    assert got.min() > 0.1  # the shared offset shows up


def test_token_similarity_centered_matches_reference():
    z = _tokens()
    got = token_similarity_centered(z)
    np.testing.assert_allclose(got.numpy(), ref_token_similarity_centered(z.numpy()), rtol=0, atol=1e-12)
    # Centring removes the shared offset: much lower than the raw similarity.
    assert (got < token_similarity(z) - 0.1).all()


def test_cls_patch_similarity_matches_loop():
    z = _tokens()
    cls = torch.randn(5, 12, dtype=torch.float64) + z.mean(1)
    got = cls_patch_similarity(cls, z)
    np.testing.assert_allclose(got.numpy(), ref_cls_patch_similarity(cls.numpy(), z.numpy()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", [None, 5])
def test_attention_entropy_matches_loops(s):
    a = _attention(s=s)
    got = attention_entropy(a)
    assert got.dtype == torch.float64 and got.shape == (3, 9)
    np.testing.assert_allclose(got.numpy(), ref_attention_entropy(a.numpy()), rtol=0, atol=1e-12)


def test_attention_entropy_one_hot_is_zero_and_uniform_is_one():
    a = _attention()
    got = attention_entropy(a)
    assert got[0, 1].item() == 0.0
    assert got[1, 2].item() == pytest.approx(1.0, abs=1e-12)
    assert ((got >= 0) & (got <= 1 + 1e-12)).all()
    # A single key leaves no choice.
    assert attention_entropy(torch.ones(2, 3, 4, 1)).eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_softmax_and_entropy_match_explicit_loops(dtype):
    g = torch.Generator().manual_seed(3)
    # large offsets and spreads: the entropy must not cancel when logits are big
    logits = (torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) * 6.0 + 40.0)
    logits[0, 0, 0, 3] = -math.inf  # a masked key
    ref_p = np.zeros(logits.shape)
    ref_h = np.zeros(logits.shape[:-1])
    for idx in np.ndindex(*logits.shape[:-1]):
        row = logits[idx].numpy()
        e = [math.exp(v - row.max()) for v in row]
        z = sum(e)
        ref_p[idx] = [v / z for v in e]
        ref_h[idx] = -sum(q * math.log(q) for q in ref_p[idx] if q > 0)
    x = logits.to(dtype)
    probs, ent = softmax_and_entropy_(x)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert probs.dtype == dtype and ent.shape == logits.shape[:-1]
    np.testing.assert_allclose(probs.numpy(), ref_p, rtol=0, atol=tol)
    np.testing.assert_allclose(ent.numpy(), ref_h, rtol=0, atol=tol * 10)


def test_softmax_and_entropy_upcast_low_precision_and_leave_input():
    logits = torch.randn(2, 2, 4, 6).to(torch.bfloat16)
    before = logits.clone()
    probs, ent = softmax_and_entropy_(logits)
    assert probs.dtype == torch.float32 and torch.equal(logits, before)
    torch.testing.assert_close(probs, logits.float().softmax(-1), atol=1e-6, rtol=0)


def test_isi_attention_matches_per_token_loops():
    x_in = _tokens(b=3, p=9, d=8, seed=1)
    x_mid = x_in + 0.5 * _tokens(b=3, p=9, d=8, seed=2)
    x_in[0, 4] = 0.0  # zero-norm token: cos 0, s = 1
    a = _attention()
    got = isi_attention(x_in, x_mid, a)
    want = ref_isi(x_in.numpy(), x_mid.numpy(), a.numpy())
    assert set(got) == {"isi_attn", "attn_delta", "attn_entropy"}
    for key, value in want.items():
        assert got[key].dtype == torch.float64 and got[key].shape == (3,)
        np.testing.assert_allclose(got[key].numpy(), value, rtol=0, atol=1e-12, err_msg=key)


def test_isi_attention_zero_when_attention_changes_nothing():
    x = _tokens(b=2, p=9, d=8)
    got = isi_attention(x, x, _attention(b=2))
    assert torch.allclose(got["attn_delta"], torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(got["isi_attn"], torch.zeros(2, dtype=torch.float64), atol=1e-12)


# --------------------------------------------------------------------------------------------
# Precision across dtypes.
# --------------------------------------------------------------------------------------------


def test_float32_inputs_close_to_float64_reference():
    z = _tokens(b=4, p=50, d=64)
    cls = z[:, 0] + 0.3
    a = _attention(b=4, h=3, t=50)
    x_mid = z + 0.05 * _tokens(b=4, p=50, d=64, seed=3)
    pairs = [
        (token_similarity(z.float()), ref_token_similarity(z.numpy())),
        (token_similarity_centered(z.float()), ref_token_similarity_centered(z.numpy())),
        (cls_patch_similarity(cls.float(), z.float()), ref_cls_patch_similarity(cls.numpy(), z.numpy())),
        (attention_entropy(a.float()), ref_attention_entropy(a.numpy())),
    ]
    got_isi = isi_attention(z.float(), x_mid.float(), a.float())
    want_isi = ref_isi(z.numpy(), x_mid.numpy(), a.numpy())
    pairs += [(got_isi[k], want_isi[k]) for k in want_isi]
    for got, want in pairs:
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_run_and_are_close(dtype):
    z = _tokens(b=2, p=30, d=32)
    a = _attention(b=2, h=2, t=30)
    got = token_similarity(z.to(dtype))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref_token_similarity(z.numpy()), atol=2e-2)
    np.testing.assert_allclose(
        token_similarity_centered(z.to(dtype)).numpy(), ref_token_similarity_centered(z.numpy()), atol=2e-2
    )
    np.testing.assert_allclose(
        cls_patch_similarity(z[:, 0].to(dtype), z.to(dtype)).numpy(),
        ref_cls_patch_similarity(z[:, 0].numpy(), z.numpy()),
        atol=2e-2,
    )
    np.testing.assert_allclose(attention_entropy(a.to(dtype)).numpy(), ref_attention_entropy(a.numpy()), atol=2e-2)
    out = isi_attention(z.to(dtype), (z + 0.3).to(dtype), a.to(dtype))
    want = ref_isi(z.numpy(), (z + 0.3).numpy(), a.numpy())
    for key in want:
        assert out[key].dtype == torch.float64
        np.testing.assert_allclose(out[key].numpy(), want[key], atol=2e-2, err_msg=key)


def test_bfloat16_attention_input_is_not_modified():
    a = _attention().to(torch.bfloat16)
    before = a.clone()
    attention_entropy(a)
    assert torch.equal(a, before)
    a32 = _attention().float()
    before32 = a32.clone()
    attention_entropy(a32)
    assert torch.equal(a32, before32)


# --------------------------------------------------------------------------------------------
# Degenerate cases.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_all_patches_equal(dtype):
    g = torch.Generator().manual_seed(0)
    one = torch.randn(3, 1, 24, generator=g) * 5 + 1
    z = one.expand(3, 196, 24).to(dtype)
    np.testing.assert_allclose(token_similarity(z).numpy(), 1.0, atol=1e-6)
    # Documented: after centring nothing is left, so every token counts as the zero vector: 0, not noise.
    assert token_similarity_centered(z).eq(0).all()


def test_single_patch_gives_nan():
    z = torch.randn(2, 1, 8)
    assert token_similarity(z).isnan().all()
    assert token_similarity_centered(z).isnan().all()
    # One patch still has a well-defined cosine with the CLS token.
    np.testing.assert_allclose(cls_patch_similarity(z[:, 0], z).numpy(), np.ones(2), atol=1e-6)


def test_exact_without_forming_the_pxp_matrix():
    # P = 100k tokens: a P x P float32 matrix would need 40 GB, the O(P d) identity needs nothing.
    p = 100_000
    z = torch.zeros(1, p, 3)
    z[0, : p // 2, 0] = 1.0  # half along e1, half along e2: cos 1 within a half, 0 across
    z[0, p // 2 :, 1] = 2.0
    want = (p // 2 - 1) / (p - 1)
    assert token_similarity(z).item() == pytest.approx(want, rel=1e-6)


def test_nan_inputs_propagate():
    z = _tokens(b=2)
    z[0, 3, 1] = math.nan
    got = token_similarity(z)
    assert got[0].isnan() and not got[1].isnan()


# --------------------------------------------------------------------------------------------
# Streaming: per-image values do not depend on how images are batched.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_uneven_batches_concatenate_to_one_batch(dtype):
    b, t, d = 22, 11, 16
    g = torch.Generator().manual_seed(5)
    x_in = torch.randn(b, t, d, generator=g).to(dtype)
    x_mid = (x_in + 0.3 * torch.randn(b, t, d, generator=g)).to(dtype)
    attn = torch.randn(b, 2, t, t, generator=g).softmax(-1).to(dtype)

    def all_metrics(lo: int, hi: int) -> dict[str, torch.Tensor]:
        patches = x_in[lo:hi, 1:]
        out = {
            "token_sim": token_similarity(patches),
            "token_sim_centered": token_similarity_centered(patches),
            "cls_patch_sim": cls_patch_similarity(x_in[lo:hi, 0], patches),
        }
        out.update(isi_attention(x_in[lo:hi], x_mid[lo:hi], attn[lo:hi]))
        return out

    whole = all_metrics(0, b)
    bounds = [(0, 7), (7, 10), (10, 22)]
    parts = [all_metrics(lo, hi) for lo, hi in bounds]
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    for key, value in whole.items():
        merged = torch.cat([part[key] for part in parts])
        assert merged.shape == (b,)
        np.testing.assert_allclose(merged.numpy(), value.numpy(), rtol=0, atol=atol, err_msg=key)


# --------------------------------------------------------------------------------------------
# Errors and devices.
# --------------------------------------------------------------------------------------------


def test_bad_shapes_raise_one_line_errors_with_shapes():
    with pytest.raises(VitdepthError, match=r"\(B, P, d\); got shape \(4, 5\)"):
        token_similarity(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        isi_attention(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"attn of shape \(2, 1, 4, 4\).*x_in of shape \(2, 3, 4\)"):
        isi_attention(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"cls of shape \(2, 7\).*patches of shape \(2, 3, 8\)"):
        cls_patch_similarity(torch.zeros(2, 7), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="floating-point"):
        token_similarity(torch.zeros(2, 3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="torch.Tensor"):
        attention_entropy(np.zeros((1, 1, 2, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_results_stay_on_device_and_match_cpu():
    z = _tokens(b=4, p=50, d=64).float()
    a = _attention(b=4, h=3, t=50).float()
    for fn, args in [(token_similarity, (z,)), (token_similarity_centered, (z,)), (attention_entropy, (a,))]:
        got = fn(*(x.cuda().bfloat16() for x in args))
        assert got.device.type == "cuda" and got.dtype == torch.float64
        np.testing.assert_allclose(got.cpu().numpy(), fn(*args).numpy(), atol=2e-2)
    got = isi_attention(z.cuda(), (z + 0.1).cuda(), a.cuda())
    want = isi_attention(z, z + 0.1, a)
    for key in want:
        np.testing.assert_allclose(got[key].cpu().numpy(), want[key].numpy(), atol=1e-5)


def test_gradients_flow_through_the_in_place_entropy():
    # The entropy's in-place chain must stay autograd-correct (ISI can be used as a training-time check).
    logits = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    attention_entropy(logits.softmax(-1)).sum().backward()
    got = logits.grad.clone()
    logits.grad = None
    p = logits.softmax(-1)
    (-torch.special.xlogy(p, p).sum(-1).mean(1) / math.log(5)).sum().backward()
    torch.testing.assert_close(got, logits.grad)
