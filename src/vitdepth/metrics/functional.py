"""Per-image token and attention metrics as pure functions.

These are the functional core of the streaming metrics (style rule 9): every function maps one
batch of taps to one value per image, keeps no state and knows nothing about models. The
stateful shells only concatenate the per-image values (design §4 keeps them for bootstrap CIs)
or sum them.

Metrics, for one image with patch tokens ``z_1..z_P`` (d-dim) and prefix token ``c`` (CLS):

- ``token_similarity`` — mean pairwise cosine similarity of patch tokens, the "token
  similarity" / over-smoothing measure tracked across depth in "Mechanisms of Non-Monotonic
  Scaling in Vision Transformers" (arXiv 2511.21635) and, before it, in the over-smoothing
  literature (Gong et al. 2021, "Vision Transformers with Patch Diversification",
  arXiv 2104.12753). The paper's exact formula was not public: the formula below is our
  definition.
- ``token_similarity_centered`` — the same after removing the image's mean patch token, so a
  shared offset (e.g. a large constant direction in the residual stream) does not read as
  similarity. Our definition.
- ``cls_patch_similarity`` — mean cosine between the CLS token and the patch tokens. Our
  definition.
- ``attention_entropy`` — Shannon entropy of each attention row, averaged over heads and
  normalised by ``log S`` (attention entropy as in Zhai et al. 2023, "Stabilizing Transformer
  Training by Preventing Attention Entropy Collapse", arXiv 2303.06296; the normalisation is
  ours).
- ``isi_attention`` — the attention form of the Information Scrambling Index (design §4): how
  much the attention sub-layer changed each token times how widely it read. Our concrete form
  of the paper's ISI idea.

Precision: bf16/fp16 inputs are upcast to float32 before any normalisation or sum (their 8-
and 11-bit mantissas would lose most digits over hundreds of tokens); float64 inputs stay
float64. The final per-image reductions run in the *reduction dtype* and every function returns
that dtype on the input's device. By default it is float64 (float32 on MPS, which has no
float64); :func:`reduction_dtype` sets it for a block of code, e.g. float32 on CUDA, where
float64 arithmetic is slow on most GPUs. The float32 reductions agree with the float64 ones to
better than 1e-5 relative on every per-image metric (``tests/test_precision.py``; figures in
docs/metrics.md, "Precision"). :mod:`vitdepth.metrics.attention_graph` follows the same policy.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from vitdepth._errors import VitdepthError

__all__ = [
    "attention_entropy",
    "attention_row_entropy",
    "cls_patch_similarity",
    "isi_attention",
    "reduction_dtype",
    "softmax_and_entropy_",
    "token_similarity",
    "token_similarity_centered",
]


class _MetricInputError(VitdepthError, ValueError):
    """A tensor handed to a metric has the wrong type, rank or shape.

    Also a ``ValueError``, so callers that follow the Python convention for bad arguments
    catch it too.
    """


# A token closer to its image's mean patch token than this many float epsilons (relative to
# the image's RMS token norm) is treated as the zero vector after centring. The mean of P
# identical float32 tokens is off by a few ulps (pairwise summation), so without a tolerance
# an image whose patches are all equal would report the cosine of pure rounding noise.
_CENTRED_RTOL_EPS = 64.0


def _check_tensor(name: str, x: object, ndim: int, layout: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise _MetricInputError(f"{name} must be a torch.Tensor of shape {layout}; got {type(x).__name__}.")
    if x.ndim != ndim:
        raise _MetricInputError(f"{name} must have shape {layout}; got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise _MetricInputError(f"{name} must be a floating-point tensor; got {x.dtype}. Cast it with .float().")
    return x


def _compute_dtype(*xs: Tensor) -> torch.dtype:
    dtype = torch.float32
    for x in xs:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


# The reduction dtype of the current context; None = the default (float64, float32 on MPS). A ContextVar
# rather than a module global, so concurrent runs in other threads or asyncio tasks keep their own setting.
_REDUCTION_DTYPE: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar(
    "vitdepth_reduction_dtype", default=None
)


def reduction_dtype(dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """Context manager setting the dtype of the per-image reductions of every metric in this package.

    Inside ``with reduction_dtype(dtype):`` every per-image value of :mod:`vitdepth.metrics.functional`
    and :mod:`vitdepth.metrics.attention_graph` is reduced in, and returned as, ``dtype``: the squared
    norms of the summed unit vectors, ``1 - cos`` and its mean over tokens, the means of row entropies
    and their normalisation, the Jensen-Shannon terms of the consensus, the distance ratios and every
    mean over heads, queries or tokens. The big-tensor work (normalisation, sums over tokens, softmax,
    entropies of the rows, mat-vecs) always runs in the compute dtype (float32, or float64 for float64
    inputs), whatever the setting. ``None`` restores the default:
    float64, except on MPS (no float64), where it is float32. Contexts nest; the setting is per thread
    and per asyncio task (a ``contextvars.ContextVar``), so set it in the thread that calls the metrics.

    The streaming pass reduces in float32 on CUDA, where float64 runs at a small fraction of the
    float32 rate on most GPUs; the values agree with the float64 reductions to better than 1e-5
    relative (``tests/test_precision.py``; docs/metrics.md, "Precision").

    Args:
        dtype: ``torch.float32``, ``torch.float64`` or None (the default).

    Returns:
        A context manager; the setting applies from ``__enter__`` to ``__exit__``.

    Example:
        >>> import torch
        >>> z = torch.randn(2, 16, 8)
        >>> token_similarity(z).dtype
        torch.float64
        >>> with reduction_dtype(torch.float32):
        ...     token_similarity(z).dtype
        torch.float32
    """
    if dtype is not None and dtype is not torch.float32 and dtype is not torch.float64:
        raise _MetricInputError(
            "The 'dtype' parameter of reduction_dtype must be torch.float32, torch.float64 or None. "
            f"Got {dtype!r} instead."
        )
    return _reduction_dtype_context(dtype)


@contextlib.contextmanager
def _reduction_dtype_context(dtype: torch.dtype | None) -> Iterator[None]:
    token = _REDUCTION_DTYPE.set(dtype)
    try:
        yield
    finally:
        _REDUCTION_DTYPE.reset(token)


def _acc_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the per-image reductions on ``device`` under the current :func:`reduction_dtype`."""
    dtype = _REDUCTION_DTYPE.get()
    if device.type == "mps":
        if dtype is torch.float64:
            raise _MetricInputError(
                "reduction_dtype(torch.float64) cannot run on MPS, which has no float64; use torch.float32 or None."
            )
        return torch.float32
    return torch.float64 if dtype is None else dtype


def _inv_norm(z: Tensor, tol: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Return ``1 / ||z||`` over the last dim, 0 where ``||z|| <= tol``, and the mask of kept vectors.

    Mapping small vectors to a weight of exactly 0 makes their cosine with anything 0, while NaN
    inputs still propagate as NaN (NaN > tol is False, but 0 * NaN is NaN).
    """
    norm = torch.linalg.vector_norm(z, dim=-1)
    valid = norm > tol
    inv = torch.where(valid, norm.reciprocal(), torch.zeros_like(norm))
    return inv, valid


def _unit_sum(z: Tensor, inv: Tensor) -> Tensor:
    """Sum over tokens of z_i / ||z_i|| for z (B, P, d): a batched mat-vec, no normalised (B, P, d) copy."""
    return torch.einsum("bpd,bp->bd", z, inv)


def _mean_pairwise_cos(z: Tensor, inv: Tensor, valid: Tensor) -> Tensor:
    """Mean over ordered pairs i != j of cos(z_i, z_j), for tokens z (B, P, d) with inverse norms ``inv``.

    Uses ||sum_i n_i||^2 = sum_i ||n_i||^2 + sum_{i != j} n_i . n_j with n_i = z_i / ||z_i||, and
    sum_i ||n_i||^2 is the number of non-zero tokens, so no P x P matrix is formed.
    """
    acc = _acc_dtype(z.device)
    batch, p = z.shape[0], z.shape[1]
    if p < 2:
        return torch.full((batch,), math.nan, dtype=acc, device=z.device)
    sq = _unit_sum(z, inv).to(acc).pow(2).sum(dim=-1)
    return (sq - valid.sum(dim=1).to(acc)) / (p * (p - 1))


def _one_minus_cos(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """``1 - cos(a_t, b_t)`` over the last dim, (B, T, d) -> (B, T) in ``acc``, accurate however close a_t and b_t are.

    ``1 - cos`` taken as written keeps no digit when the vectors nearly coincide: a float32 cosine is
    off by ~1e-7, while ``1 - cos`` of a token that the attention sub-layer barely turned is 1e-5 to
    1e-9 (smaller still under the large shared offset of a trained residual stream), and two devices
    that sum in different orders would disagree on it entirely. With ``w = b - a`` (the difference of
    two exact inputs, so correct to one rounding of itself) Lagrange's identity
    ``|a|^2 |b|^2 - (a.b)^2 = |a|^2 |w_perp|^2``, ``w_perp = w - (a.w / |a|^2) a``, gives::

        1 - cos = |a| |w_perp|^2 / (|b| (|a| |b| + a.b))

    with no difference of nearly equal numbers where ``cos > 1/2``. Where ``cos <= 1/2``,
    ``1 - cos >= 1/2`` as written loses nothing (and the form above would, were ``|b| << |a|``). The
    residual stream is the case the form is for: ``b = a + update`` with a small update, however large
    ``a``'s offset. Per-token dot products run in the inputs' dtype, the formula in ``acc``. A zero
    vector has cosine 0 (``1 - cos = 1``); NaN propagates. Memory: one (B, T, d) temporary (two under
    autograd).
    """
    # Seven passes over (B, T, d) against the naive form's three: ~2x its time, small next to the softmax
    # (ViT-S/16, batch 32, CPU: 3.2 ms against 1.4 ms a block). einsum lowers to a batched matmul, so the
    # dot products need no (B, T, d) product temporary.
    w = b - a
    na = torch.linalg.vector_norm(a, dim=-1)
    aa = na * na
    aw = torch.einsum("btd,btd->bt", a, w)
    coef = aw / torch.where(aa > 0, aa, torch.ones_like(aa))
    # In place unless autograd saved w (for the a.w product above): one (B, T, d) temporary, not two.
    w_perp = (torch.addcmul if w.requires_grad else torch.Tensor.addcmul_)(w, a, coef.unsqueeze(-1), value=-1.0)
    perp2 = torch.einsum("btd,btd->bt", w_perp, w_perp).to(acc)
    na = na.to(acc)
    nb = torch.linalg.vector_norm(b, dim=-1).to(acc)
    # Taken directly, not as |a|^2 + a.w, which loses digits when |b| << |a|.
    ab = torch.einsum("btd,btd->bt", a, b).to(acc)
    nanb = na * nb
    valid = nanb > 0
    cos = ab / torch.where(valid, nanb, torch.full_like(nanb, math.inf))  # 0 for a zero vector, NaN for NaN
    close = valid & (cos > 0.5)
    stable = na * perp2 / torch.where(close, nb * (nanb + ab), torch.ones_like(nanb))
    return torch.where(close, stable, 1.0 - cos)


def token_similarity(patches: Tensor) -> Tensor:
    """Mean pairwise cosine similarity of the patch tokens of each image.

    Our definition (the paper's exact formula was not public)::

        token_sim = 1 / (P (P - 1)) * sum_{i != j} cos(z_i, z_j)
                  = (||sum_i n_i||^2 - P) / (P (P - 1)),   n_i = z_i / ||z_i||

    computed with the second form in O(P d) time and memory. A token with zero norm has cosine
    0 with every other token (it still counts in the P (P - 1) pairs). ``P == 1`` gives NaN.

    Args:
        patches: Patch tokens, shape (B, P, d), any floating dtype and device.

    Returns:
        Tensor in the reduction dtype (float64 by default, see :func:`reduction_dtype`) of shape (B,) on
        the input's device, values in [-1/(P-1), 1].
    """
    _check_tensor("patches", patches, 3, "(B, P, d)")
    z = patches.to(_compute_dtype(patches))
    inv, valid = _inv_norm(z)
    return _mean_pairwise_cos(z, inv, valid)


def token_similarity_centered(patches: Tensor) -> Tensor:
    """Mean pairwise cosine similarity of the patch tokens after subtracting each image's mean patch token.

    Our definition::

        token_sim_centered = token_sim(z_1 - zbar, ..., z_P - zbar),   zbar = (1/P) sum_i z_i

    Degenerate case: a centred token whose norm is below ``64 * eps(dtype) * RMS_i ||z_i||`` is
    treated as the zero vector (cosine 0 with everything). So an image whose patches are all
    equal gives exactly 0 — "no structure left after removing the mean" — instead of the cosine
    of rounding noise. Note that centred tokens sum to zero, so for P tokens in general position
    the value is typically near -1/(P-1), not 0.

    Args:
        patches: Patch tokens, shape (B, P, d), any floating dtype and device.

    Returns:
        Tensor in the reduction dtype (float64 by default, see :func:`reduction_dtype`) of shape (B,) on
        the input's device; NaN when ``P == 1``.
    """
    _check_tensor("patches", patches, 3, "(B, P, d)")
    dtype = _compute_dtype(patches)
    z = patches.to(dtype)
    centred = z - z.mean(dim=1, keepdim=True)
    rms = torch.linalg.vector_norm(z, dim=(1, 2), keepdim=True) / math.sqrt(max(z.shape[1], 1))
    tol = _CENTRED_RTOL_EPS * torch.finfo(dtype).eps * rms
    inv, valid = _inv_norm(centred, tol.squeeze(-1))
    return _mean_pairwise_cos(centred, inv, valid)


def cls_patch_similarity(cls: Tensor, patches: Tensor) -> Tensor:
    """Mean cosine similarity between the CLS token and each patch token of an image.

    Our definition::

        cls_patch_sim = (1/P) sum_i cos(c, z_i) = n_c . (1/P) sum_i n_i

    computed in O(P d). Zero-norm tokens have cosine 0; ``P == 0`` gives NaN.

    Args:
        cls: CLS (or other prefix) token, shape (B, d).
        patches: Patch tokens, shape (B, P, d).

    Returns:
        Tensor in the reduction dtype (float64 by default, see :func:`reduction_dtype`) of shape (B,) on
        the input's device, values in [-1, 1].
    """
    _check_tensor("cls", cls, 2, "(B, d)")
    _check_tensor("patches", patches, 3, "(B, P, d)")
    if cls.shape[0] != patches.shape[0] or cls.shape[1] != patches.shape[2]:
        raise _MetricInputError(
            f"cls of shape {tuple(cls.shape)} does not match patches of shape {tuple(patches.shape)}; "
            "expected (B, d) and (B, P, d)."
        )
    dtype = _compute_dtype(cls, patches)
    acc = _acc_dtype(patches.device)
    c = cls.to(dtype)
    z = patches.to(dtype)
    p = z.shape[1]
    if p == 0:
        return torch.full((z.shape[0],), math.nan, dtype=acc, device=z.device)
    inv_c, _ = _inv_norm(c)
    inv_z, _ = _inv_norm(z)
    n_c = (c * inv_c.unsqueeze(-1)).to(acc)
    return (n_c * _unit_sum(z, inv_z).to(acc)).sum(dim=-1) / p


def attention_row_entropy(attn: Tensor) -> Tensor:
    """Shannon entropy (nats, 0 log 0 = 0) of every attention row, per head: (B, H, T, S) -> (B, H, T).

    The one log pass over the attention that the entropy-based metrics share (``attention_entropy``,
    ``isi_attention`` and ``attention_graph``'s consensus accept it precomputed), in the compute
    dtype (float32 for bf16/fp16 inputs). Memory: one temporary of the size of ``attn``.
    """
    _check_tensor("attn", attn, 4, "(B, H, T, S)")
    dtype = _compute_dtype(attn)
    # p * log(max(p, tiny)) is exactly 0 where p == 0, and the in-place chain keeps it to a single
    # B x H x T x S temporary (autograd still works: clamp_min's backward needs only its input).
    tiny = torch.finfo(dtype).tiny
    plogp = attn.to(dtype).clamp_min_(tiny) if attn.dtype != dtype else attn.clamp_min(tiny)
    plogp = plogp.log_().mul_(attn)
    return plogp.sum(dim=-1).neg_()


def softmax_and_entropy_(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over the last dim and the Shannon entropy (nats) of every row, from logits; overwrites ``scores``.

    With ``m = max_s x_s``, ``Z = sum_s exp(x_s - m)`` and ``p_s = exp(x_s - m) / Z``, the log of every
    probability is ``x_s - m - log Z``, so::

        H = -sum_s p_s log p_s = log Z - sum_s p_s (x_s - m)

    One exp pass serves the probabilities and the entropy, with no log over the B·H·T·S block
    (the log is the costly part of :func:`attention_row_entropy`). Both terms are of the order of
    ``log S`` because the row maximum is subtracted first, so large logits cause no cancellation.
    A ``-inf`` logit (a masked key) gets probability 0 and contributes 0 to the entropy.

    Args:
        scores: Attention logits (..., S), e.g. (B, H, T, S) = ``q kᵀ · scale``. Overwritten when it
            is already float32/float64 (bf16/fp16 logits are upcast to a float32 copy first).

    Returns:
        ``(probs, row_entropy)``: probabilities of the shape of ``scores`` and entropies of shape
        ``scores.shape[:-1]``, both in the compute dtype (float32, or float64 for float64 logits).
    """
    if not isinstance(scores, Tensor) or scores.ndim < 1 or not scores.is_floating_point():
        raise _MetricInputError(f"scores must be a floating-point torch.Tensor of shape (..., S); got "
                                f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}.")
    dtype = _compute_dtype(scores)
    x = scores if scores.dtype == dtype else scores.to(dtype)
    shifted = x.sub_(x.amax(dim=-1, keepdim=True)).clamp_min_(torch.finfo(dtype).min)  # -inf -> finite: 0 * x = 0
    probs = shifted.exp()
    z = probs.sum(dim=-1, keepdim=True)
    probs.div_(z)
    entropy = z.log_().squeeze_(-1).sub_(shifted.mul_(probs).sum(dim=-1))
    return probs, entropy


def attention_entropy(attn: Tensor, row_entropy: Tensor | None = None) -> Tensor:
    """Normalised Shannon entropy of every attention row, averaged over heads.

    For query row ``t`` of head ``h`` with probabilities ``p_{h,t,1..S}`` (our normalisation of the
    attention entropy of Zhai et al. 2023, arXiv 2303.06296)::

        e_t = (1/H) sum_h ( -sum_s p_{h,t,s} log p_{h,t,s} ) / log S,   0 log 0 = 0

    so a one-hot row gives 0 and a uniform row gives 1. Rows are assumed row-stochastic (softmax
    output); this is not checked, to keep the metric cheap. ``S == 1`` gives 0 (a single key
    leaves no choice).

    Args:
        attn: Attention probabilities, shape (B, H, T, S).
        row_entropy: :func:`attention_row_entropy` of ``attn`` when already computed (saves the log pass).

    Returns:
        Tensor in the reduction dtype (float64 by default, see :func:`reduction_dtype`) of shape (B, T) on
        the input's device, values in [0, 1].
    """
    _check_tensor("attn", attn, 4, "(B, H, T, S)")
    acc = _acc_dtype(attn.device)
    s = attn.shape[-1]
    per_head = (attention_row_entropy(attn) if row_entropy is None else row_entropy).to(acc)  # (B, H, T)
    ent = per_head.mean(dim=1)
    if s <= 1:
        return torch.zeros_like(ent)
    return ent / math.log(s)


def isi_attention(x_in: Tensor, x_mid: Tensor, attn: Tensor, row_entropy: Tensor | None = None) -> dict[str, Tensor]:
    """Information Scrambling Index, attention form, per image (design §4).

    Our concrete form of the ISI of arXiv 2511.21635, for block ``l`` and every token ``i``
    (prefix tokens included)::

        s_i = 1 - cos(x_in_i, x_mid_i)            how much the attention sub-layer changed token i
        e_i = attention_entropy(attn)_i           how widely token i read, in [0, 1]
        isi_attn     = (1/T) sum_i s_i e_i
        attn_delta   = (1/T) sum_i s_i
        attn_entropy = (1/T) sum_i e_i

    ``s_i`` is computed from ``x_mid_i - x_in_i``, not as 1 minus a rounded cosine, so it keeps its
    relative precision however little the attention changed the token (1e-9 and below under the
    large shared offset of a trained residual stream; see ``_one_minus_cos``). A zero-norm token has
    cosine 0 (so ``s_i = 1``). ``s_i`` is clamped to [0, 2] because rounding can push the cosine a
    few ulps past +-1.

    Args:
        x_in: Block input (residual stream before attention), shape (B, T, d).
        x_mid: Residual stream after the attention sub-layer, shape (B, T, d).
        attn: Attention probabilities of the block, shape (B, H, T, S) (S == T for global attention).
        row_entropy: :func:`attention_row_entropy` of ``attn`` when already computed.

    Returns:
        Dict with tensors of shape (B,) in the reduction dtype (float64 by default, see
        :func:`reduction_dtype`) under ``"isi_attn"``, ``"attn_delta"`` and ``"attn_entropy"``.
    """
    _check_tensor("x_in", x_in, 3, "(B, T, d)")
    _check_tensor("x_mid", x_mid, 3, "(B, T, d)")
    _check_tensor("attn", attn, 4, "(B, H, T, S)")
    if x_in.shape != x_mid.shape:
        raise _MetricInputError(
            f"x_in of shape {tuple(x_in.shape)} and x_mid of shape {tuple(x_mid.shape)} must have the same shape."
        )
    if attn.shape[0] != x_in.shape[0] or attn.shape[2] != x_in.shape[1]:
        raise _MetricInputError(
            f"attn of shape {tuple(attn.shape)} does not match x_in of shape {tuple(x_in.shape)}; "
            "expected (B, H, T, S) and (B, T, d)."
        )
    dtype = _compute_dtype(x_in, x_mid)
    acc = _acc_dtype(x_in.device)
    s = _one_minus_cos(x_in.to(dtype), x_mid.to(dtype), acc).clamp_(0.0, 2.0)
    e = attention_entropy(attn, row_entropy)
    return {
        "isi_attn": (s * e).mean(dim=-1),
        "attn_delta": s.mean(dim=-1),
        "attn_entropy": e.mean(dim=-1),
    }
