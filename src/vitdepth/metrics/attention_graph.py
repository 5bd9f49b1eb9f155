"""Per-image attention-graph statistics of one block (design §4, "Attention statistics").

A block's attention probabilities ``A`` (B, H, T, T) read as a weighted directed graph over its
tokens: row ``q`` is the distribution over keys that query ``q`` reads. The metrics below
summarise that graph per image; they are the attention-side signals that "Mechanisms of
Non-Monotonic Scaling in Vision Transformers" (arXiv 2511.21635) tracks across depth (CLS
centralisation and attention consensus). The paper's exact formulas for CCC and ACI were not
public: the formulas below are our definitions.

Token layout: ``[prefix tokens ..., patches row-major over grid (h, w)]`` with the CLS token
first among the prefix tokens when there is one, ``T = num_prefix + h * w``. Only *patch* queries
enter the averages (the prefix tokens have no place in the grid, and mixing the CLS row in would
make CCC partly measure ``cls_self``).

- ``cls_centrality`` (CCC, our definition) — attention mass patch queries give the CLS key::

      CCC = (1 / (H P)) sum_h sum_{q in patches} A[h, q, 0]

- ``cls_self`` — ``(1/H) sum_h A[h, 0, 0]``.
- ``attn_consensus`` (ACI, our definition) — how much the patch queries of a head read the same
  keys: with ``Abar_h = (1/P) sum_{q in patches} A[h, q, :]`` (a distribution over all T keys)::

      ACI = 1 - (1 / (H P)) sum_h sum_{q in patches} JS(A[h, q, :] || Abar_h) / ln 2
      JS(P || Q) = H((P + Q) / 2) - (H(P) + H(Q)) / 2,   natural log, 0 log 0 = 0

  ``JS / ln 2`` lies in [0, 1], so ACI does too: 1 when every patch reads the same tokens, low
  when patches read disjoint tokens.
- ``attn_distance`` — the mean attention distance of Dosovitskiy et al. 2021 ("An Image is Worth
  16x16 Words", arXiv 2010.11929, Fig. 7), in patch units::

      d_{h,q} = sum_{k in patches} A[h, q, k] ||pos(q) - pos(k)||_2 / sum_{k in patches} A[h, q, k]
      attn_distance = mean over heads and patch queries of d_{h,q}

  with ``pos = (row, col)`` on the grid. Prefix keys have no position, so they are left out and
  the patch mass is renormalised (the CLS or register "sinks" would otherwise pull the distance
  towards 0 for a reason that has nothing to do with locality). A query that gives exactly zero
  mass to the patches has no distance and is left out of the average (NaN if every query of the
  image is like that; softmax attention never is).

Precision and cost: bf16/fp16 inputs are upcast to float32, float64 stays float64; per-row sums
run in that dtype and everything from the per-row values on runs in the reduction dtype of
:func:`vitdepth.metrics.functional.reduction_dtype` (float64 by default, float32 on MPS; the
streaming pass uses float32 on CUDA).
This runs in the model's forward on every block, so it is vectorised: at most two B x H x P x T
temporaries (the entropies of the rows and of their mixtures with the mean row, one log pass
each), and the distance is one batched mat-vec against a (P, P) distance matrix that is built
once per grid, device and dtype.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from vitdepth._errors import VitdepthError
from vitdepth.metrics.functional import _acc_dtype, _check_tensor, _compute_dtype

__all__ = ["attention_graph"]


class _AttentionGraphInputError(VitdepthError, ValueError):
    """Attention handed to :func:`attention_graph` does not fit the declared token layout."""


@functools.lru_cache(maxsize=16)
def _distances(grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``D[q, k]``, (P, P), cached per grid, device and dtype: the Euclidean distance between the (row, col)
    positions of patches q and k of a row-major grid (computed in float64, then cast)."""
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    pos = torch.stack([rows, cols], dim=1)
    # Explicit differences, not torch.cdist: its matmul path leaves ~1e-8 on the diagonal.
    return torch.linalg.vector_norm(pos[:, None, :] - pos[None, :, :], dim=-1).to(device=device, dtype=dtype)


def _row_entropy(p: Tensor) -> Tensor:
    """Shannon entropy (nats) of every row over the last dim, 0 log 0 = 0; one temporary the size of ``p``.

    Same trick as :func:`vitdepth.metrics.functional.attention_entropy`: ``p * log(max(p, tiny))``
    is exactly 0 where ``p == 0`` and stays autograd-correct.
    """
    tiny = torch.finfo(p.dtype).tiny
    return p.clamp_min(tiny).log_().mul_(p).sum(dim=-1).neg_()


def _check_layout(attn: object, num_prefix: object, grid: object, has_cls: object) -> tuple[int, int, int]:
    _check_tensor("attn", attn, 4, "(B, H, T, T)")
    if isinstance(num_prefix, bool) or not isinstance(num_prefix, int) or num_prefix < 0:
        raise _AttentionGraphInputError(f"num_prefix must be an int >= 0; got {num_prefix!r}.")
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
    ):
        raise _AttentionGraphInputError(f"grid must be a pair of positive ints (h, w); got {grid!r}.")
    if not isinstance(has_cls, bool):
        raise _AttentionGraphInputError(f"has_cls must be a bool; got {has_cls!r}.")
    if has_cls and num_prefix < 1:
        raise _AttentionGraphInputError("has_cls=True needs num_prefix >= 1 (the CLS token is prefix token 0).")
    h, w = int(grid[0]), int(grid[1])
    t = num_prefix + h * w
    if attn.shape[2] != t or attn.shape[3] != t:
        raise _AttentionGraphInputError(
            f"attn of shape {tuple(attn.shape)} does not match num_prefix={num_prefix} and grid={(h, w)}; "
            f"expected (B, H, {t}, {t})."
        )
    return h, w, t


def attention_graph(attn: Tensor, num_prefix: int, grid: tuple[int, int], has_cls: bool,
                    row_entropy: Tensor | None = None) -> dict[str, Tensor]:
    """Attention-graph statistics of one block, one value per image (formulas in the module docstring).

    Args:
        attn: Softmax attention probabilities of one block, shape (B, H, T, T), rows = queries,
            columns = keys, tokens ordered ``[prefix ..., patches row-major]``. Rows are assumed
            row-stochastic; this is not checked, to keep the metric cheap.
        num_prefix: Number of prefix tokens (CLS and registers) before the patches.
        grid: Patch grid ``(h, w)``; ``T == num_prefix + h * w``.
        has_cls: Whether prefix token 0 is a CLS token. Without one, ``cls_centrality`` and
            ``cls_self`` are not returned.
        row_entropy: per-head row entropies (B, H, T) in nats of ``attn``
            (:func:`vitdepth.metrics.functional.attention_row_entropy`), when the caller already computed them
            for ``isi_attention``; saves one log pass over the patch rows.

    Returns:
        Dict of tensors of shape (B,) in the reduction dtype (float64 by default, see
        :func:`vitdepth.metrics.functional.reduction_dtype`) on the input's device: ``"cls_centrality"`` and
        ``"cls_self"`` (only when ``has_cls``), ``"attn_consensus"`` in [0, 1] and
        ``"attn_distance"`` in patch units.
    """
    h, w, _ = _check_layout(attn, num_prefix, grid, has_cls)
    dtype = _compute_dtype(attn)
    acc = _acc_dtype(attn.device)

    # Patch-query rows over all keys, (B, H, P, T): a view when attn is already float32/64,
    # else our own float32 copy (which we may then overwrite in place).
    a = attn[:, :, num_prefix:, :]
    # Overwriting our own copy is safe unless autograd needs it (it is saved by the entropy's mul_).
    owned = a.dtype != dtype and not a.requires_grad
    a = a.to(dtype)

    out: dict[str, Tensor] = {}
    if has_cls:
        out["cls_centrality"] = a[..., 0].to(acc).mean(dim=(1, 2))
        out["cls_self"] = attn[:, :, 0, 0].to(acc).mean(dim=1)

    # Distance: per patch query q, the attention-weighted distance to the patch keys and the patch mass for the
    # renormalisation. An elementwise product with the (P, P) distance matrix summed over keys: a mat-vec per
    # query, which batched matmul runs 3x slower than this on CPU (N = 1 output column).
    patch_keys = a[..., num_prefix:]  # (B, H, P, P)
    num = (patch_keys * _distances((h, w), a.device, dtype)).sum(dim=-1).to(acc)  # (B, H, P)
    den = patch_keys.sum(dim=-1).to(acc)
    has_mass = den != 0  # NaN mass stays "valid", so NaN inputs propagate
    per_query = torch.where(has_mass, num / torch.where(has_mass, den, torch.ones_like(den)), torch.zeros_like(num))
    n_valid = has_mass.sum(dim=(1, 2)).to(acc)
    out_dist = per_query.sum(dim=(1, 2)) / n_valid
    # out_dist is NaN (0/0) when no query of the image has patch mass, as documented.

    # Consensus: mean_q JS(A_q || Abar) = mean_q H(M_q) - (mean_q H(A_q) + H(Abar)) / 2.
    abar = a.mean(dim=2, keepdim=True)  # (B, H, 1, T)
    if row_entropy is None:
        h_rows = _row_entropy(a).to(acc).mean(dim=2)  # (B, H); first B x H x P x T temporary
    else:
        h_rows = row_entropy[:, :, num_prefix:].to(acc).mean(dim=2)
    h_mean = _row_entropy(abar.squeeze(2)).to(acc)  # (B, H)
    mix = a.add_(abar) if owned else a + abar  # second temporary (or reuse of our copy)
    mix.mul_(0.5)
    h_mix = _row_entropy(mix).to(acc).mean(dim=2)  # (B, H)
    js = (h_mix - 0.5 * (h_rows + h_mean)) / math.log(2.0)
    # JS >= 0 exactly; rounding in the entropy differences can leave a few ulps either side.
    out["attn_consensus"] = (1.0 - js.mean(dim=1)).clamp_(0.0, 1.0)
    out["attn_distance"] = out_dist
    return out
