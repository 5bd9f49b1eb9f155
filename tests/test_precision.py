"""Precision of the per-image metrics reduced in float32 (the CUDA path) against float64 (the CPU default).

The streaming pass reduces per image in float32 on CUDA (``with reduction_dtype(torch.float32):``) and
in float64 on CPU. Every per-image metric of docs/metrics.md must agree between the two within 1e-5
relative, on real taps of a random-init timm ViT and on a trained-looking version of them (a large
shared offset in the residual stream, where float32 cancellation is worst, and sharp attention).

Relative error of a value ``a`` against the float64 value ``b``: ``|a - b| / max(|b|, scale)``, where
``scale`` is the metric's own resolution (see ``_scales``), so a value that legitimately crosses
zero (a mean of cosines) or underflows float32 (an attention probability of 1e-40) is not divided by
itself.

Three comparisons: float32 reductions against the default float64 ones on CPU (same float32 big-tensor
work); the float32 path against a full float64 reference (the same taps cast to float64, so the
big-tensor work runs in float64 too); and, where CUDA exists, CUDA float32 against both.

``.venv/bin/python tests/test_precision.py`` prints the worst errors per metric (docs/metrics.md,
"Precision").
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from vitdepth import VitdepthError
from vitdepth.analysis.layer_metrics import PER_IMAGE_IDS, per_image_values
from vitdepth.metrics.functional import _acc_dtype, _one_minus_cos, reduction_dtype, token_similarity
from vitdepth.models import create_model
from vitdepth.models.taps import LayerTaps, QueryKey

BOUND = 1e-5
OFFSET = 100.0  # norm of the shared residual offset, in mean token norms
SHARPEN = 64.0  # attention logits scaled by this: normalised entropy 0.1-0.3, as in trained ViTs' later blocks


def _scales(p: int, t: int) -> dict[str, float]:
    """Per metric, the magnitude below which an error is measured in absolute rather than relative terms."""
    return {
        # ||sum_i n_i||^2 - P cancels down to the bound of the range [-1/(P-1), 1].
        "token_sim": 1.0 / (p - 1),
        # Centred tokens in general position give about -1/(P-1).
        "token_sim_centered": 1.0 / (p - 1),
        # A mean of P cosines that can cancel to 0: one patch's weight in it.
        "cls_patch_sim": 1.0 / p,
        # 1 - cos is computed in a stable form, so these hold relative to the value however small.
        "isi_attn": 0.0,
        "attn_delta": 0.0,
        "attn_entropy": 0.0,
        # Attention probabilities: uniform attention's; far smaller ones underflow float32 (1e-38).
        "cls_centrality": 1.0 / t,
        "cls_self": 1.0 / t,
        # 1 - JS / ln 2 is a difference of row entropies of order log T, so its rounding is absolute.
        "attn_consensus": 1.0,
        "attn_distance": 0.0,
    }


@functools.lru_cache(maxsize=1)
def _random_init_taps() -> tuple[tuple[LayerTaps, ...], bool]:
    tm = create_model("timm:vit_tiny_patch16_224", random_init=True, image_size=64)  # P = 16, T = 17, d = 192
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, layers = tm.capture(x)
    return tuple(layers), tm.has_cls


def _with(t: LayerTaps, dtype: torch.dtype | None = None, device: str | None = None,
          offset: torch.Tensor | None = None, sharpen: float = 1.0) -> LayerTaps:
    """A copy of ``t``: residual stream shifted by ``offset`` (in its own dtype), logits scaled, then cast/moved."""
    def cast(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(device=device, dtype=dtype or x.dtype)

    def shift(x: torch.Tensor | None) -> torch.Tensor | None:
        return x if x is None or offset is None else x + offset

    qk = t.qk
    if qk is not None:
        qk = QueryKey(cast(qk.q * sharpen), cast(qk.k), qk.scale, cast(qk.bias))
    return dataclasses.replace(t, tokens=cast(shift(t.tokens)), x_in=cast(shift(t.x_in)), x_mid=cast(shift(t.x_mid)),
                               qk=qk)


def _case(name: str) -> tuple[list[LayerTaps], bool]:
    """The float32 taps of one case: ``random-init``, or ``trained-looking`` (shared offset, sharp attention)."""
    layers, has_cls = _random_init_taps()
    if name == "random-init":
        return list(layers), has_cls
    out = []
    for t in layers:
        direction = torch.randn(t.tokens.shape[-1], generator=torch.Generator().manual_seed(1))
        offset = direction / direction.norm() * OFFSET * t.tokens.norm(dim=-1).mean()
        out.append(_with(t, offset=offset, sharpen=SHARPEN))
    return out, has_cls


def _errors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], t: LayerTaps) -> dict[str, float]:
    """Worst scaled relative error per metric of one layer (NaN where both are NaN counts as agreement)."""
    scales = _scales(t.patches.shape[1], t.tokens.shape[1])
    assert got.keys() == ref.keys()
    out = {}
    for k, b in ref.items():
        a, b = got[k].detach().cpu().double(), b.detach().cpu().double()
        both_nan = a.isnan() & b.isnan()
        err = (a - b).abs() / b.abs().clamp_min(scales[k])
        out[k] = float(torch.where(both_nan, torch.zeros_like(err), err).max())  # NaN against a number stays NaN
    return out


def _worst(case: str, device: str = "cpu", reference: str = "default") -> dict[str, float]:
    """Worst error per metric over every layer and image: the float32 path on ``device`` against ``reference``.

    ``reference``: ``"default"`` (float32 taps, float64 reductions on CPU) or ``"float64"`` (the taps
    cast to float64: big-tensor work and reductions in float64).
    """
    layers, has_cls = _case(case)
    worst: dict[str, float] = {}
    for t in layers:
        ref = per_image_values(_with(t, dtype=torch.float64) if reference == "float64" else t, has_cls)
        assert all(v.dtype == torch.float64 for v in ref.values())
        with reduction_dtype(torch.float32):
            got = per_image_values(_with(t, device=device), has_cls)
        for v in got.values():  # the float32 path really reduces in float32, where it is asked to
            assert v.dtype == torch.float32 and v.device.type == device
        for k, e in _errors(got, ref, t).items():
            worst[k] = max(worst.get(k, 0.0), e)
    assert set(worst) == set(PER_IMAGE_IDS)  # every per-image metric was compared
    return worst


def _check(worst: dict[str, float]) -> None:
    bad = {k: f"{e:.2e}" for k, e in worst.items() if not e <= BOUND}
    assert not bad, f"relative errors above {BOUND:g}: {bad}"


@pytest.mark.parametrize("case", ["random-init", "trained-looking"])
@pytest.mark.parametrize("reference", ["default", "float64"])
def test_float32_reductions_match_float64_on_cpu(case, reference):
    _check(_worst(case, "cpu", reference))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["random-init", "trained-looking"])
@pytest.mark.parametrize("reference", ["default", "float64"])
def test_cuda_float32_matches_cpu_float64(case, reference, monkeypatch):
    # TF32 matmuls (10-bit mantissa) would void the bound: the metrics' dot products and mat-vecs need full float32.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _check(_worst(case, "cuda", reference))


@pytest.mark.parametrize("regime", ["small update", "offset 100x", "offset 1000x", "large update", "opposite",
                                    "tiny b"])
@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
def test_one_minus_cos_holds_relative_precision_from_float32_inputs(regime, acc):
    """``attn_delta``'s 1 - cos(x_in, x_mid) from float32 tokens, against float64 on the same values.

    The float32 cosine is off by ~1e-7, so 1 - cos taken as written misses by 0.5, 50 and 5,000 relative in
    the first three regimes (values 5e-7, 5e-9 and 5e-11).
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 40, 192, generator=g)
    noise = torch.randn(a.shape, generator=g)
    if regime.startswith("offset"):
        a = a + torch.randn(192, generator=g) * float(regime.split()[1][:-1]) * a.norm(dim=-1).mean() / 192**0.5
    b = {"small update": a + 1e-3 * noise, "offset 100x": a + 1e-2 * noise, "offset 1000x": a + 1e-2 * noise,
         "large update": a + noise, "opposite": -0.9 * a + 0.1 * noise, "tiny b": 1e-3 * noise}[regime]
    a64, b64 = a.double(), b.double()
    # (1/2) |a/|a| - b/|b||^2: no cancellation in float64 even for the 1e-11 of the 1000x offset.
    want = 0.5 * (a64 / a64.norm(dim=-1, keepdim=True) - b64 / b64.norm(dim=-1, keepdim=True)).pow(2).sum(-1)
    got = _one_minus_cos(a, b, acc)
    assert got.dtype == acc
    assert ((got.double() - want).abs() / want).max() <= BOUND


def test_reduction_dtype_sets_nests_and_restores():
    z = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0))
    assert token_similarity(z).dtype == torch.float64
    with reduction_dtype(torch.float32):
        assert token_similarity(z).dtype == torch.float32
        with reduction_dtype(None):
            assert token_similarity(z).dtype == torch.float64
        assert token_similarity(z).dtype == torch.float32
    with pytest.raises(RuntimeError, match="boom"), reduction_dtype(torch.float32):
        raise RuntimeError("boom")
    assert token_similarity(z).dtype == torch.float64  # restored on the way out of an exception


@pytest.mark.parametrize("bad", [torch.float16, torch.bfloat16, torch.int64, "float32", 32])
def test_reduction_dtype_rejects_other_dtypes_in_one_line(bad):
    with pytest.raises((VitdepthError, ValueError)) as err:
        reduction_dtype(bad)  # raises on the call, before any `with`
    assert "'dtype' parameter of reduction_dtype must be torch.float32, torch.float64 or None" in str(err.value)
    assert "\n" not in str(err.value)


def test_mps_reduces_in_float32_and_refuses_float64():
    mps = torch.device("mps")  # a device object needs no MPS hardware
    assert _acc_dtype(mps) == torch.float32
    with reduction_dtype(torch.float32):
        assert _acc_dtype(mps) == torch.float32
    with reduction_dtype(torch.float64), pytest.raises(VitdepthError, match="MPS, which has no float64"):
        _acc_dtype(mps)


if __name__ == "__main__":
    # The measured worst errors quoted in docs/metrics.md ("Precision").
    print(f"{'metric':20s} " + " ".join(f"{c + ' vs ' + r:>34s}" for c in ("random-init", "trained-looking")
                                        for r in ("default", "float64")))
    results = {(c, r): _worst(c, "cpu", r) for c in ("random-init", "trained-looking") for r in ("default", "float64")}
    for m in PER_IMAGE_IDS:
        print(f"{m:20s} " + " ".join(f"{results[key][m]:34.1e}" for key in results))
