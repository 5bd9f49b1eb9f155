"""Information Scrambling Index, reconstruction form (``isi_rec``), from streaming statistics.

"Mechanisms of Non-Monotonic Scaling in Vision Transformers" (arXiv 2511.21635) defines an
Information Scrambling Index: how far a layer has spread a patch's content over other tokens.
design §4 makes it concrete as a pair of ridge regressions that try to recover each patch's
pre-position-embedding patch embedding ``e_p`` from layer ``l``:

- **self-only**: from token ``p`` alone, ``R_in z_p -> R_out e_p``, one map shared by every
  position (each (image, patch) pair is a sample);
- **all-to-all**: from every token of the layer at once (prefix tokens included),
  ``[R_in t_1 ... R_in t_T] -> [R_out e_1 ... R_out e_P]`` (one sample per image);

``isi_rec = R2_all - R2_self`` on a held-out split: about 0 when every patch's content is still
in its own token, positive when other tokens carry it. ``R_in`` (d -> k_in) and ``R_out``
(d -> k) are fixed random orthonormal projections drawn from the seed (:func:`draw_projections`),
so the all-to-all problem has ``T k_in`` inputs and ``P k`` outputs.

Our definition, exactly (every choice below is ours where the paper leaves one open):

- Ridge objective per model, scikit-learn's ``Ridge`` units (alpha not divided by ``n``)::

      min_W  sum_i ||v_i - W^T ((x_i - mu_x) / s)||^2 + alpha ||W||_F^2

  with ``x_i`` the inputs, ``v_i = y_i - mu_y`` the centred targets, ``mu_x``/``mu_y`` and the
  scale ``s`` from the **train** split. Inputs are **standardised** (population std; a constant
  input gets weight 0): the tokens' scale changes by orders of magnitude over depth and between
  prefix and patch tokens, and standardising makes one alpha grid fit every layer and puts the
  penalty on equal footing across token positions. Targets are not scaled: a shared scale does
  not change the fit, and R2 below is scale-free.
- **Intercepts are per position and unpenalised in both models.** For the all-to-all model this
  is the ordinary intercept (every output is one position's target). For the self-only model
  we centre inputs and targets on their train mean *at that position* (position fixed effects:
  ``mu_x``, ``mu_y`` depend on ``p``) and standardise by the pooled within-position std; the map
  ``W`` is still shared. Reason: with a single shared intercept, a per-position offset that has
  nothing to do with mixing (the position embedding added to every token) would count as
  "information only the all-to-all model can use", and ``isi_rec`` would be positive for a
  layer that mixes nothing. With per-position intercepts both models also share one R2
  denominator (below), so ``isi_rec = (SSE_self - SSE_all) / SST`` exactly.
- **R2** on the test split, pooled over every target dimension (scikit-learn's ``r2_score``
  with ``multioutput="variance_weighted"`` on the ``(n_test, P k)`` target matrix)::

      R2 = 1 - sum SSE / sum SST,   SST about the test split's own mean of each (position, dim)

- **alpha** per model is the grid value with the smallest pooled validation SSE (ties go to the
  larger alpha); the test split is never used to choose it.

Streaming: every state is an additive float64 sum per split (train/val/test): the image count,
``sum x``, ``sum y``, ``sum y**2`` per target, the all-to-all Gram ``X^T X`` and cross-moment
``X^T Y``. The self-only statistics are *not* accumulated: with per-position centring they are
sums of the all-to-all statistics' diagonal blocks (token ``prefix + p`` with target ``p``).
Held-out SSE for any weights follows from a split's statistics,
``SSE = tr(W^T U W) - 2 tr(W^T C) + sum ||v||^2`` with ``U``, ``C`` the split's moments about the
train centre, and one eigendecomposition of the train Gram serves every alpha: in its
eigenbasis the SSE of every alpha costs ``O((T k_in)^2)`` once a split is rotated.

Small splits: while a split has at most ``T k_in`` images its projected rows are stored instead of
summed, in that split's own Gram and cross-moment slots (exactly ``T k_in`` rows fit, so memory is
the same at every dataset size, and a batch costs a copy instead of a (D, D) update). The held-out
splits' rows become moments at ``compute``, and a train split still stored as rows is solved
through its n x n kernel, which gives the same ridge path as the Gram's eigendecomposition at n^3
instead of (T k_in)^3 cost. :meth:`ReconstructionISI.state_dict` and ``merge`` turn stored rows
into sums for good, so the exchanged state is always the additive sums.

Cost and memory: per batch and split present, one ``(B, T k_in)^T (B, T k_in)`` and one
``(B, T k_in)^T (B, P k)`` float64 matmul. The state is ``3 ((T k_in)^2 + T k_in P k)`` float64
numbers per layer. For ViT-S/16 at 224 px (T = 197, P = 196, d = 384) the defaults give
``k_in = min(32, 1024 // 197) = 5`` and ``k = 8``: ``T k_in = 985`` inputs, ``P k = 1568``
outputs, 7.8 MB per Gram + 12.4 MB per cross-moment, **61 MB per layer** (3 splits) and
**0.8 GB for layers 0..12**, held on the tokens' device. ``compute`` costs one eigendecomposition
and two rotations of a (T k_in)² matrix per layer (about 0.3 s on two CPU cores at that size
with more than 985 train images; through the train kernel below that).

Why the input width is capped at 1024 (design §4 said 2048): the cost of ``compute`` grows as
the cube of ``T k_in`` and the state as its square, so 2048 made ``isi_rec`` cost 8x more
(measured at that width: 1.8 s of fits per layer of ViT-S on a 2-core CPU, and 2.2 GB of
state), and the all-to-all model needs many more train images than inputs to be more than an
overfit, which a width of 2048 asks of few datasets. Pass ``k_in`` (``AnalyzeConfig.isi_k_in``)
for a wider projection.

Caveats a reader of the numbers needs:

- ``isi_rec`` also rises when the layer applies *position-dependent* maps to unmixed tokens (the
  all-to-all model has per-position weights, the self-only model one shared map), and when
  neighbouring patches are correlated and token ``p``'s ``k_in``-dim projection loses what a
  neighbour's projection still holds (natural images). Read it against layer 0, where nothing
  has been mixed yet.
- The all-to-all model has ``T k_in`` inputs per image: with few training images it overfits
  (ridge limits, but does not remove, the damage) and ``isi_rec`` can be negative. Use training
  splits with many more images than ``T k_in``.

Precision: sums of raw (uncentred) products are what makes merging exact and order-free (DDP
``all_reduce``); centring them later loses about ``log10(mean^2 / var)`` of float64's 16 digits
per feature (e.g. 6 digits for a feature whose mean is 1000 standard deviations from zero).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from torch import Tensor

from vitdepth._errors import VitdepthError

from .probes import InvalidParameterError, _check_alphas

__all__ = [
    "DEFAULT_ALPHAS",
    "ReconstructionISI",
    "default_k_in",
    "draw_projections",
    "isi_reconstruction",
]

#: Ridge penalties tried for both models, scikit-learn units. Inputs are standardised, so the
#: train Gram's diagonal is the number of train samples ``n`` (images for the all-to-all model,
#: images x patches for the self-only one) and ``alpha / n`` is the relative shrinkage. The grid
#: spans 10 decades, half a decade apart, because ``n`` differs by a factor ``P`` between the two
#: models and the all-to-all model can have more inputs than train images.
DEFAULT_ALPHAS = np.logspace(-3, 7, 21)

_SPLITS = ("train", "val", "test")
_STATE_KEYS = ("n", "sum_x", "sum_y", "sum_y2", "gram", "cross")
# Largest all-to-all input width the default k_in allows (the Gram is at most this squared).
_MAX_INPUT_WIDTH = 1024


class _IsiInputError(VitdepthError, ValueError):
    """Tensors, states or split codes handed to the reconstruction ISI do not fit its configuration."""


def default_k_in(num_tokens: int, dim: int | None = None) -> int:
    """``min(32, 1024 // T)``, and at most ``dim``: the all-to-all Gram stays at most 1024 x 1024."""
    k_in = max(1, min(32, _MAX_INPUT_WIDTH // int(num_tokens)))
    return k_in if dim is None else min(k_in, int(dim))


# --------------------------------------------------------------------------------------------
# Projections.
# --------------------------------------------------------------------------------------------


def _orthonormal(dim: int, k: int, seed: int, stream: int) -> np.ndarray:
    """(dim, k) matrix with orthonormal columns: QR of a Gaussian, signs fixed by R's diagonal."""
    rng = np.random.default_rng([seed, stream])
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    sign = np.sign(np.diag(r))
    return np.ascontiguousarray(q * np.where(sign == 0, 1.0, sign))


def draw_projections(dim: int, k_in: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed projections of a seed: ``r_in`` (dim, k_in) and ``r_out`` (dim, k), orthonormal columns.

    Each comes from its own stream (``numpy.random.default_rng([seed, 0])`` and ``[seed, 1]``), so
    ``r_out`` (the targets) is the same for every ``k_in`` and token count, and every layer of a
    run uses the same pair. Features are ``tokens @ r_in`` and targets ``pre_patches @ r_out``.
    """
    return _orthonormal(dim, k_in, seed, 0), _orthonormal(dim, k, seed, 1)


def _projection_sha256(r_in: np.ndarray, r_out: np.ndarray) -> str:
    """sha256 of the little-endian float64 bytes of ``r_in`` then ``r_out`` (bitwise: this platform's LAPACK)."""
    h = hashlib.sha256()
    for r in (r_in, r_out):
        h.update(np.ascontiguousarray(r, dtype="<f8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Functional core (style rule 9): batch statistics, in-place accumulation, merge, compute.
# --------------------------------------------------------------------------------------------


def _isi_rec_empty(d_in: int, d_out: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Zero statistics (no images) for every split; a rank without data contributes these."""
    s = len(_SPLITS)
    kw = {"device": device, "dtype": dtype}
    return {
        "n": torch.zeros(s, dtype=torch.int64, device=device),
        "sum_x": torch.zeros(s, d_in, **kw),
        "sum_y": torch.zeros(s, d_out, **kw),
        "sum_y2": torch.zeros(s, d_out, **kw),
        "gram": torch.zeros(s, d_in, d_in, **kw),
        "cross": torch.zeros(s, d_in, d_out, **kw),
    }


def _split_rows(split: np.ndarray) -> dict[int, np.ndarray | None]:
    """Row indices per split code present (None: every row), computed on the host, so no device sync."""
    present = np.unique(split)
    if present.size == 1:
        return {int(present[0]): None}
    return {int(s): np.flatnonzero(split == s) for s in present}


def _project(tokens: Tensor, r: Tensor) -> Tensor:
    """Token-major projections (B, tokens * k) of (B, tokens, d) in the accumulation dtype (float64).

    Layer tokens with ``r_in`` give the inputs (B, T k_in), pre-PE patch embeddings with ``r_out`` the
    targets (B, P k).
    """
    return (tokens.to(device=r.device, dtype=r.dtype) @ r).reshape(tokens.shape[0], -1)


def _add_rows_(state: dict[str, Tensor], s: int, xs: Tensor, ys: Tensor) -> None:
    """Sum rows of split ``s`` into ``state`` in place.

    The Gram and cross-moment go straight into the accumulators with ``addmm_``: a batch's (D, D) product
    is never materialised, so each batch reads and writes the large accumulators once (they, not the
    arithmetic, bound the cost for the few dozen rows of a batch).
    """
    state["n"][s] += xs.shape[0]
    state["sum_x"][s] += xs.sum(0)
    state["sum_y"][s] += ys.sum(0)
    state["sum_y2"][s] += (ys * ys).sum(0)
    state["gram"][s].addmm_(xs.T, xs)
    state["cross"][s].addmm_(xs.T, ys)


def _isi_rec_update_(state: dict[str, Tensor], x: Tensor, targets: Tensor, split: np.ndarray,
                     held: dict[int, int]) -> None:
    """Add one batch in place: summed, or stored as rows for the splits in ``held``.

    A split in ``held`` (split code -> rows stored so far) keeps its rows in its own, still unused,
    ``gram`` and ``cross`` slots: row i's inputs in ``gram[s, i]`` and targets in ``cross[s, i]``, which
    hold exactly ``T k_in`` rows. A batch that would overflow them turns the split into sums for good
    (the stored rows are summed first, then the batch) and removes it from ``held``.

    Args:
        state: Statistics of :func:`_isi_rec_empty` on r_in's device and dtype.
        x: Projected layer tokens (B, T k_in), ``_project(tokens, r_in)``.
        targets: Projected pre-position-embedding patch embeddings (B, P k), ``_project(pre, r_out)``.
        split: Split codes (B,) in {0, 1, 2}, a host (numpy) array.
        held: split code -> number of rows stored in that split's slots.
    """
    y = targets
    capacity = state["gram"].shape[1]
    for s, rows in _split_rows(split).items():
        if rows is not None:
            idx = torch.from_numpy(rows).to(x.device)
            xs, ys = x.index_select(0, idx), y.index_select(0, idx)
        else:
            xs, ys = x, y
        if s in held and held[s] + xs.shape[0] <= capacity:
            state["gram"][s, held[s] : held[s] + xs.shape[0]] = xs
            state["cross"][s, held[s] : held[s] + xs.shape[0]] = ys
            held[s] += xs.shape[0]
            continue
        if s in held:
            _sum_stored_rows_(state, s, held.pop(s))
        _add_rows_(state, s, xs, ys)


def _stored_rows(state: dict[str, Tensor], s: int, n: int) -> tuple[Tensor, Tensor]:
    """Views of the ``n`` rows stored in split ``s``'s slots: inputs (n, T k_in) and targets (n, P k)."""
    return state["gram"][s, :n], state["cross"][s, :n]


def _sum_stored_rows_(state: dict[str, Tensor], s: int, n: int) -> None:
    """Turn the ``n`` rows stored in split ``s``'s slots into that split's sums (one (n, D) copy meanwhile)."""
    xs, ys = (t.clone() for t in _stored_rows(state, s, n))
    state["gram"][s].zero_()
    state["cross"][s].zero_()
    if n:
        _add_rows_(state, s, xs, ys)


def _isi_rec_merge(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pool two states: elementwise sums (exact and order-free up to float rounding)."""
    return {key: a[key] + b[key].to(a[key].device) for key in _STATE_KEYS}


def _centred_system(state: dict[str, Tensor], s: int, mu_x: Tensor,
                    mu_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of split ``s`` about the *train* centre: ``U = sum u u^T``, ``C = sum u v^T``, ``sum v**2`` per target.

    ``u = x - mu_x``, ``v = y - mu_y``. Held-out residuals of a model fitted on train are
    ``v - W^T (u / s)``, so these are all the SSE needs.
    """
    n = float(state["n"][s])
    sx, sy = state["sum_x"][s], state["sum_y"][s]
    # rank-one updates in place (addr_): one copy of each matrix, no (D, D) temporaries
    u = state["gram"][s].clone().addr_(sx, mu_x, alpha=-1.0).addr_(mu_x, sx, alpha=-1.0).addr_(mu_x, mu_x, alpha=n)
    c = state["cross"][s].clone().addr_(sx, mu_y, alpha=-1.0).addr_(mu_x, sy, alpha=-1.0).addr_(mu_x, mu_y, alpha=n)
    v2 = state["sum_y2"][s] - 2.0 * mu_y * sy + n * mu_y * mu_y
    return u, c, v2


def _self_blocks(u: Tensor, c: Tensor, num_tokens: int, num_patches: int, k_in: int,
                 k: int) -> tuple[Tensor, Tensor]:
    """Self-only moments from all-to-all ones: sum over p of the (token prefix+p, target p) blocks.

    The all-to-all moments are about per-(token, dim) train means, i.e. per-position means, so the
    block sums are exactly the self-only model's moments with position fixed effects.
    """
    pre = num_tokens - num_patches
    u4 = u.reshape(num_tokens, k_in, num_tokens, k_in)[pre:, :, pre:, :]
    c4 = c.reshape(num_tokens, k_in, num_patches, k)[pre:]
    return torch.diagonal(u4, dim1=0, dim2=2).sum(-1), torch.diagonal(c4, dim1=0, dim2=2).sum(-1)


def _inverse_scale(centred_sq: Tensor, raw_sq: Tensor, n: float) -> Tensor:
    """1 / population std per input; 0 for an input constant up to the rounding of raw sums.

    The variance comes from raw sums (``sum x**2 - n mean**2``), whose rounding error is of order
    ``eps * sum x**2``, not ``eps * var`` as in the two-pass variance that
    ``probes._feature_scale`` (and scikit-learn's ``StandardScaler``) test against; so the
    constant test here is ``var <= n * eps * mean(x**2)``. A weight of 0 drops the input from
    both the fit and the held-out predictions, as scikit-learn's exactly-zero centred constant
    column would.
    """
    var = torch.clamp(centred_sq / n, min=0.0)
    eps = torch.finfo(centred_sq.dtype).eps
    constant = var <= n * eps * (raw_sq / n)
    safe = torch.where(constant, torch.ones_like(var), var)
    return torch.where(constant, torch.zeros_like(var), torch.rsqrt(safe))


@dataclass(frozen=True)
class _RidgeEig:
    """Standardised train system in its eigenbasis: ``G = V diag(lam) V^T``, ``Q = V^T C~``, ``Q Q^T``."""

    inv: Tensor
    lam: Tensor
    v: Tensor
    q: Tensor
    qqt: Tensor


def _ridge_eig_(u_tr: Tensor, c_tr: Tensor, inv: Tensor) -> _RidgeEig:
    """One eigendecomposition of the standardised train Gram; serves every alpha and split.

    Standardises ``u_tr`` and ``c_tr`` in place (they are the caller's own temporaries, never the
    state): at ViT scale each is tens of MB, and copies would raise the peak memory of ``compute``.
    """
    lam, v = torch.linalg.eigh(u_tr.mul_(inv[:, None]).mul_(inv[None, :]))
    lam = torch.clamp(lam, min=0.0)  # PSD up to rounding; a negative eigenvalue could cancel alpha
    q = v.T @ c_tr.mul_(inv[:, None])
    return _RidgeEig(inv=inv, lam=lam, v=v, q=q, qqt=q @ q.T)


def _ridge_eig_from_rows(xc: Tensor, vc: Tensor, inv: Tensor) -> _RidgeEig:
    """The same system from centred train rows ``xc`` (n, D) and targets ``vc`` (n, P k), for n < D.

    The standardised Gram ``G = X~^T X~`` (``X~ = xc * inv``) has rank at most n: its non-zero eigenpairs come
    from the n x n kernel ``K = X~ X~^T = U diag(s) U^T`` as ``V = X~^T U diag(s)^-1/2`` with eigenvalues ``s``,
    and the cross-moment in that basis is ``Q = V^T X~^T vc = diag(s)^1/2 U^T vc``. The null space of G carries
    no weight at any alpha (``Q`` is zero there), so the ridge path and every held-out SSE are those of the
    full eigendecomposition, at the cost of an n x n one.
    """
    xs = xc * inv
    s, u = torch.linalg.eigh(xs @ xs.T)
    # directions with no train variance beyond rounding carry no weight (their Q rows are ~0)
    keep = s > s.max().clamp(min=0.0) * xs.shape[0] * torch.finfo(s.dtype).eps
    s, u = s[keep], u[:, keep]
    root = s.sqrt()
    v = xs.T @ (u / root)
    q = root[:, None] * (u.T @ vc)
    return _RidgeEig(inv=inv, lam=s, v=v, q=q, qqt=q @ q.T)


def _heldout_sse_(path: _RidgeEig, u: Tensor, c: Tensor, v2: Tensor, alphas: Tensor) -> Tensor:
    """Pooled SSE of a held-out split for each alpha, from the split's moments about the train centre.

    The weights are ``W(alpha) = V diag(f) Q`` with ``f = 1 / (lam + alpha)``; a split with
    standardised moments ``U~``, ``C~`` and ``sum ||v||^2`` then has::

        SSE(alpha) = sum v**2 - 2 f . rowsum(Q * V^T C~) + f^T ((V^T U~ V) * (Q Q^T)) f

    so after one rotation of the split each alpha costs ``O(D^2)``. Standardises ``u`` and ``c`` in
    place (the caller's temporaries, as in :func:`_ridge_eig_`).
    """
    inv, v = path.inv, path.v
    h2 = (v.T @ u.mul_(inv[:, None]).mul_(inv[None, :])) @ v
    h2.mul_(path.qqt)
    h1 = (v.T @ c.mul_(inv[:, None])).mul_(path.q).sum(1)
    f = 1.0 / (path.lam[None, :] + alphas[:, None])  # (n_alpha, D)
    return v2 - 2.0 * (f @ h1) + ((f @ h2) * f).sum(1)


def _choose_alpha(sse: Tensor, alphas: np.ndarray) -> int:
    """Index of the smallest validation SSE; ties (to 1e-12 relative) go to the larger alpha."""
    sse = sse.detach().cpu().double().numpy()
    best = np.nanmin(sse)
    tied = np.flatnonzero(sse <= best + 1e-12 * abs(best))
    return int(tied[np.argmax(alphas[tied])])


def _isi_rec_compute(state: dict[str, Tensor], num_tokens: int, num_patches: int, k_in: int, k: int,
                     alphas: np.ndarray, train_rows: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
    """``isi_rec``, ``r2_self``, ``r2_all`` and the chosen alphas from the summed statistics.

    Args:
        train_rows: the projected train rows (inputs (n, T k_in), targets (n, P k)) when the train split was
            kept as rows instead of sums (its slots in ``state`` are then empty): the all-to-all ridge is
            solved through the n x n kernel (:func:`_ridge_eig_from_rows`), everything else is the same.

    Raises:
        VitdepthError: A split without images.
    """
    n = [int(v) for v in state["n"].tolist()]
    if train_rows is not None:
        n[0] = int(train_rows[0].shape[0])
    empty = [name for name, c in zip(_SPLITS, n, strict=True) if c == 0]
    if empty:
        raise _IsiInputError(
            f"isi_rec needs images in every split; {', '.join(empty)} has none (images per split: "
            f"{dict(zip(_SPLITS, n, strict=True))}). Pass split codes 0/1/2 = train/val/test to update()."
        )
    alphas = np.asarray(alphas, dtype=np.float64)
    grid = torch.as_tensor(alphas, dtype=state["gram"].dtype, device=state["gram"].device)
    pre = num_tokens - num_patches

    def self_blocks(u: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        return _self_blocks(u, c, num_tokens, num_patches, k_in, k)

    # One split's (T k_in)^2 moments at a time: formed, used by both models, dropped (peak memory of compute).
    if train_rows is None:
        mu_x = state["sum_x"][0] / n[0]
        mu_y = state["sum_y"][0] / n[0]
        raw_sq = torch.diagonal(state["gram"][0])
        u_tr, c_tr, _ = _centred_system(state, 0, mu_x, mu_y)
        self_systems = [(*self_blocks(u_tr, c_tr), None)]
        inv = _inverse_scale(torch.diagonal(u_tr), raw_sq, float(n[0]))
        path_all = _ridge_eig_(u_tr, c_tr, inv)
    else:
        x_tr, y_tr = train_rows
        mu_x, mu_y = x_tr.mean(0), y_tr.mean(0)
        xc, vc = x_tr - mu_x, y_tr - mu_y
        raw_sq = (x_tr * x_tr).sum(0)
        xp = xc.reshape(n[0], num_tokens, k_in)[:, pre:]
        vp = vc.reshape(n[0], num_patches, k)
        # self-only train moments with position fixed effects: sums over positions of per-position blocks
        self_systems = [(torch.einsum("npi,npj->ij", xp, xp), torch.einsum("npi,npj->ij", xp, vp), None)]
        path_all = _ridge_eig_from_rows(xc, vc, _inverse_scale((xc * xc).sum(0), raw_sq, float(n[0])))
    u_tr = c_tr = xc = vc = xp = vp = None
    # One test denominator for both models: SST about the test split's own per-(position, dim) means.
    sst = float((state["sum_y2"][2] - state["sum_y"][2] ** 2 / n[2]).sum())

    out, best = {}, {}
    for s in (1, 2):
        u, c, v2 = _centred_system(state, s, mu_x, mu_y)
        self_systems.append((*self_blocks(u, c), v2.sum()))
        if s == 1:
            best["all"] = _choose_alpha(_heldout_sse_(path_all, u, c, v2.sum(), grid), alphas)
        else:
            sse_test = float(_heldout_sse_(path_all, u, c, v2.sum(), grid[best["all"] : best["all"] + 1])[0])
            out["r2_all"] = 1.0 - sse_test / sst if sst > 0 else float("nan")
        u = c = None
    path_all = None

    (u_tr, c_tr, _), (u_va, c_va, v2_va), (u_te, c_te, v2_te) = self_systems
    inv = _inverse_scale(torch.diagonal(u_tr), raw_sq.reshape(num_tokens, k_in)[pre:].sum(0),
                         float(n[0] * num_patches))
    path = _ridge_eig_(u_tr, c_tr, inv)
    best["self"] = _choose_alpha(_heldout_sse_(path, u_va, c_va, v2_va, grid), alphas)
    sse_test = float(_heldout_sse_(path, u_te, c_te, v2_te, grid[best["self"] : best["self"] + 1])[0])
    out["r2_self"] = 1.0 - sse_test / sst if sst > 0 else float("nan")
    out.update({f"alpha_{name}": float(alphas[i]) for name, i in best.items()})
    return {"isi_rec": out["r2_all"] - out["r2_self"], **out}


# --------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------


def _check_int(value: object, name: str, low: int, high: int | None = None, owner: str = "ReconstructionISI") -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be an int in the range {rng}. Got {value!r} instead."
        )
    return int(value)


def _check_input(name: str, x: object, shape: tuple[int, int], layout: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise _IsiInputError(f"{name} must be a torch.Tensor of shape {layout}; got {type(x).__name__}.")
    if not x.is_floating_point():
        raise _IsiInputError(f"{name} must be a floating-point tensor; got {x.dtype}.")
    if x.ndim != 3 or tuple(x.shape[1:]) != shape:
        raise _IsiInputError(f"{name} must have shape {layout} = (B, {shape[0]}, {shape[1]}); got {tuple(x.shape)}.")
    return x


def _check_split(split: object, b: int) -> np.ndarray:
    arr = split.detach().cpu().numpy() if isinstance(split, Tensor) else np.asarray(split)
    if arr.shape != (b,) or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise _IsiInputError(
            f"split must be an integer array of shape ({b},) with codes 0/1/2 = train/val/test; "
            f"got shape {arr.shape}, dtype {arr.dtype}."
        )
    if b and (arr.min() < 0 or arr.max() > 2):
        raise _IsiInputError(f"split codes must be 0/1/2 = train/val/test; got values in [{arr.min()}, {arr.max()}].")
    return arr.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------
# Stateful shell.
# --------------------------------------------------------------------------------------------


class ReconstructionISI:
    """Streaming ``isi_rec`` for one layer: per-split sufficient statistics, ridge fits at ``compute``.

    See the module docstring for the exact definition. The object holds only sums (DDP
    ``all_reduce``-able); projections are fixed by ``seed`` and recorded by :meth:`projection_info`.

    Args:
        dim: Token width d (layer tokens and pre-PE patch embeddings).
        num_tokens: Tokens per image T at the layer, prefix tokens first, then the P patches.
        num_patches: Patches per image P (the pre-PE embeddings' count).
        k: Target projection width (per patch).
        k_in: Input projection width (per token); default ``min(32, 1024 // T, d)``.
        seed: Seed of the projections (non-negative int).
        alphas: Ridge penalties to try (scikit-learn units); default :data:`DEFAULT_ALPHAS`.
        dtype: Projection and accumulation dtype. float64 (the default) is the supported choice;
            float32 only where the device has no float64 (MPS), at the cost of most digits of R2.

    Examples:
        >>> import torch
        >>> from vitdepth.metrics.isi_rec import ReconstructionISI
        >>> g = torch.Generator().manual_seed(0)
        >>> pre = torch.randn(300, 4, 16, generator=g)
        >>> tokens = torch.cat([torch.randn(300, 1, 16, generator=g), 2 * pre], dim=1)  # CLS + unmixed patches
        >>> isi = ReconstructionISI(16, num_tokens=5, num_patches=4, k=4, k_in=16)
        >>> isi.update(tokens, pre, torch.arange(300) % 3)
        >>> out = isi.compute()
        >>> round(out["r2_self"], 3), abs(out["isi_rec"]) < 1e-3
        (1.0, True)
    """

    def __init__(self, dim: int, num_tokens: int, num_patches: int, k: int = 8, k_in: int | None = None,
                 seed: int = 0, alphas=None, dtype: torch.dtype = torch.float64):
        self.dim = _check_int(dim, "dim", 1)
        self.num_tokens = _check_int(num_tokens, "num_tokens", 1)
        self.num_patches = _check_int(num_patches, "num_patches", 1, self.num_tokens)
        self.k = _check_int(k, "k", 1, self.dim)
        self.k_in = default_k_in(self.num_tokens, self.dim) if k_in is None else _check_int(k_in, "k_in", 1, self.dim)
        self.seed = _check_int(seed, "seed", 0)
        self.alphas = _check_alphas(DEFAULT_ALPHAS if alphas is None else alphas, "ReconstructionISI")
        if dtype not in (torch.float64, torch.float32):
            raise InvalidParameterError(
                "The 'dtype' parameter of ReconstructionISI must be torch.float64 or torch.float32. "
                f"Got {dtype!r} instead."
            )
        self.dtype = dtype
        self.r_in, self.r_out = draw_projections(self.dim, self.k_in, self.k, self.seed)
        self._sha256 = _projection_sha256(self.r_in, self.r_out)
        self._proj: tuple[Tensor, Tensor] | None = None  # projections on the state's device
        self._device: torch.device | None = None  # of the first update
        self._state: dict[str, Tensor] | None = None  # the sums, allocated when a split first needs them
        # Rows (inputs, targets) of a split are stored instead of summed while it has at most ``input_width``
        # of them, in the split's own Gram and cross-moment slots (exactly that many rows fit), so memory is
        # the same at every dataset size; storing costs a copy instead of a (D, D) update per batch, and a
        # train split still stored as rows is solved through its n x n kernel (an n^3 eigendecomposition
        # instead of a (T k_in)^3 one). Split code -> rows stored; a split leaves it when it becomes sums.
        self._held: dict[int, int] = {s: 0 for s in range(len(_SPLITS))}

    @property
    def input_width(self) -> int:
        """All-to-all input width ``T k_in``."""
        return self.num_tokens * self.k_in

    @property
    def output_width(self) -> int:
        """All-to-all output width ``P k``."""
        return self.num_patches * self.k

    def projection_info(self) -> dict:
        """What run.json records to repeat the fits: seed, widths, shapes, alphas, sha256 of the projections."""
        return {
            "seed": self.seed,
            "k": self.k,
            "k_in": self.k_in,
            "dim": self.dim,
            "num_tokens": self.num_tokens,
            "num_patches": self.num_patches,
            "r_in_shape": list(self.r_in.shape),
            "r_out_shape": list(self.r_out.shape),
            "method": "QR of numpy default_rng([seed, 0]) / ([seed, 1]) Gaussians, signs fixed by diag(R)",
            "alphas": [float(a) for a in self.alphas],
            "sha256": self._sha256,
        }

    # -- state ------------------------------------------------------------------------------

    def _check_device(self, device: torch.device) -> None:
        if self._device is None:
            if device.type == "mps" and self.dtype == torch.float64:
                raise _IsiInputError(
                    "ReconstructionISI accumulates in float64, which MPS lacks; pass tokens on the CPU "
                    "or construct it with dtype=torch.float32."
                )
            self._device = device
        elif self._device != device:
            raise _IsiInputError(
                f"ReconstructionISI state is on {self._device} but the tokens are on {device}; "
                f"call .to({str(device)!r}) first or pass tokens on {self._device}."
            )
        if self._proj is None or self._proj[0].device != device:
            self._proj = (torch.as_tensor(self.r_in, dtype=self.dtype, device=device),
                          torch.as_tensor(self.r_out, dtype=self.dtype, device=device))

    def _ensure_state(self) -> dict[str, Tensor]:
        if self._state is None:
            self._state = _isi_rec_empty(self.input_width, self.output_width, self._device or "cpu", self.dtype)
        # A state made inside torch.inference_mode cannot be updated in place outside it.
        if not torch.is_inference_mode_enabled() and self._state["gram"].is_inference():
            self._state = {key: v.clone() for key, v in self._state.items()}
        return self._state

    def to(self, device: torch.device | str) -> ReconstructionISI:
        """Move the state (if any) to ``device``; returns self."""
        device = torch.device(device)
        if self._state is not None:
            self._state = {key: v.to(device) for key, v in self._state.items()}
        if self._device is not None:
            self._device = device
        self._proj = None
        return self

    def reset(self) -> None:
        """Forget every image seen."""
        self._state = None
        self._device = None
        self._held = {s: 0 for s in range(len(_SPLITS))}

    def _sum_held(self, splits=None) -> None:
        """Turn stored rows of ``splits`` (default: all) into sums, for good (sums are the canonical form)."""
        for s in [s for s in (self._held if splits is None else splits) if s in self._held]:
            n = self._held.pop(s)
            if self._state is not None:
                _sum_stored_rows_(self._ensure_state(), s, n)

    def _current_state(self) -> dict[str, Tensor]:
        return self._state if self._state is not None else _isi_rec_empty(
            self.input_width, self.output_width, "cpu", self.dtype)

    def all_finite(self) -> bool:
        """Whether every statistic (and stored row) is finite: False once a NaN/Inf token was added."""
        return all(bool(torch.isfinite(t).all()) for t in self._current_state().values())

    def state_dict(self) -> dict[str, Tensor]:
        """The sums, one tensor per statistic with a leading split axis of 3 (zeros before any update).

        Held rows are summed into the state first, for good (see :meth:`compute`).
        """
        self._sum_held()
        return dict(self._current_state())

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict` (e.g. after an ``all_reduce`` of every tensor)."""
        ref = _isi_rec_empty(self.input_width, self.output_width, "meta", self.dtype)
        if not isinstance(state, dict) or set(state) != set(ref):
            raise _IsiInputError(f"ReconstructionISI state must have keys {sorted(ref)}; got {sorted(state)}.")
        for key, r in ref.items():
            if tuple(state[key].shape) != tuple(r.shape):
                raise _IsiInputError(
                    f"ReconstructionISI state {key!r} must have shape {tuple(r.shape)} for T={self.num_tokens}, "
                    f"P={self.num_patches}, k_in={self.k_in}, k={self.k}; got {tuple(state[key].shape)}."
                )
        state = {key: torch.as_tensor(state[key]) for key in ref}
        device = state["gram"].device
        self._state = {key: state[key].to(device=device, dtype=r.dtype).clone() for key, r in ref.items()}
        self._held = {}
        self._device = device
        self._proj = None

    def merge(self, other: ReconstructionISI) -> ReconstructionISI:
        """Add ``other``'s images to this one (disjoint shards of the same run); returns self."""
        if not isinstance(other, ReconstructionISI):
            raise _IsiInputError(f"can only merge another ReconstructionISI; got {type(other).__name__}.")
        mine, theirs = self.projection_info(), other.projection_info()
        if mine != theirs:
            diff = sorted(key for key in mine if mine[key] != theirs[key])
            raise _IsiInputError(f"cannot merge ReconstructionISI states that differ in {diff}; use the same "
                                 f"dim, token counts, k, k_in, seed and alphas.")
        self._sum_held()
        other._sum_held()
        if other._state is not None:
            self._device = self._device or other._device
            self._state = (dict(other._state) if self._state is None
                           else _isi_rec_merge(self._state, other._state))
        return self

    # -- streaming and result ---------------------------------------------------------------

    @torch.no_grad()
    def targets(self, pre_patches: Tensor) -> Tensor:
        """The projected targets (B, P k) of pre-PE patch embeddings (B, P, d), float64 on their device.

        Every layer of a run regresses onto the same targets, so a caller updating many layers with
        the same batch can project them once and pass them to :meth:`update` (``targets=``).
        """
        pre_patches = _check_input("pre_patches", pre_patches, (self.num_patches, self.dim), "(B, P, d)")
        self._check_device(pre_patches.device)
        return _project(pre_patches, self._proj[1])

    @torch.no_grad()
    def update(self, tokens: Tensor, pre_patches: Tensor, split, *, targets: Tensor | None = None) -> None:
        """Add one batch.

        Args:
            tokens: Layer tokens (B, T, d), prefix tokens first; any float dtype and device.
            pre_patches: Pre-position-embedding patch embeddings (B, P, d), same device.
            split: Split code per image (B,), 0/1/2 = train/val/test (numpy array or tensor;
                read on the host, so keep it on the CPU to avoid a device sync).
            targets: ``self.targets(pre_patches)`` when already computed (e.g. by another layer's
                instance with the same projections); saves projecting them again.
        """
        tokens = _check_input("tokens", tokens, (self.num_tokens, self.dim), "(B, T, d)")
        pre_patches = _check_input("pre_patches", pre_patches, (self.num_patches, self.dim), "(B, P, d)")
        if pre_patches.shape[0] != tokens.shape[0] or pre_patches.device != tokens.device:
            raise _IsiInputError(
                f"tokens {tuple(tokens.shape)} on {tokens.device} and pre_patches {tuple(pre_patches.shape)} on "
                f"{pre_patches.device} must hold the same images on the same device."
            )
        codes = _check_split(split, tokens.shape[0])
        if codes.size == 0:
            return
        self._check_device(tokens.device)
        if targets is None:
            targets = _project(pre_patches, self._proj[1])
        elif tuple(targets.shape) != (tokens.shape[0], self.output_width):
            raise _IsiInputError(f"targets must have shape (B, P k) = ({tokens.shape[0]}, {self.output_width}); "
                                 f"got {tuple(targets.shape)}. Make them with targets(pre_patches).")
        self.update_projected(_project(tokens, self._proj[0]), targets, codes)

    @torch.no_grad()
    def inputs(self, tokens: Tensor) -> Tensor:
        """The projected inputs (B, T k_in) of layer tokens (B, T, d), in the accumulation dtype on their device.

        With :meth:`update_projected`, this splits :meth:`update` into a pure part and the state change, so a
        caller can compute a whole batch first and change the state only once it all succeeded (the analysis
        pass retries a batch that ran out of memory in halves).
        """
        tokens = _check_input("tokens", tokens, (self.num_tokens, self.dim), "(B, T, d)")
        self._check_device(tokens.device)
        return _project(tokens, self._proj[0])

    @torch.no_grad()
    def update_projected(self, inputs: Tensor, targets: Tensor, split) -> None:
        """Add one batch given as :meth:`inputs` and :meth:`targets` (the same batch as :meth:`update`)."""
        codes = _check_split(split, inputs.shape[0])
        if codes.size == 0:
            return
        self._check_device(inputs.device)
        if tuple(inputs.shape) != (inputs.shape[0], self.input_width) or \
                tuple(targets.shape) != (inputs.shape[0], self.output_width):
            raise _IsiInputError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must be "
                                 f"(B, {self.input_width}) and (B, {self.output_width}); make them with inputs() "
                                 "and targets()")
        _isi_rec_update_(self._ensure_state(), inputs.to(self.dtype), targets.to(self.dtype), codes, self._held)

    def snapshot(self) -> dict[str, np.ndarray]:
        """The exact state as host arrays, stored rows and their counts included (for checkpoints).

        Unlike :meth:`state_dict`, this does not turn stored rows into sums, so a run restored with
        :meth:`restore` continues bit for bit as if it had never stopped.
        """
        state = self._current_state()
        held = np.array([self._held.get(s, -1) for s in range(len(_SPLITS))], dtype=np.int64)
        return {**{key: v.detach().cpu().numpy() for key, v in state.items()}, "held": held}

    def restore(self, snap: dict[str, np.ndarray], device: torch.device | str = "cpu") -> None:
        """Restore a :meth:`snapshot` onto ``device``."""
        held = snap["held"]
        self.load_state_dict({key: torch.from_numpy(np.asarray(snap[key])) for key in _STATE_KEYS})
        self.to(device)
        self._device = torch.device(device)
        self._held = {s: int(h) for s, h in enumerate(held) if h >= 0}

    def compute(self) -> dict[str, float]:
        """``isi_rec``, ``r2_self``, ``r2_all``, ``alpha_self``, ``alpha_all`` (see the module docstring).

        With at most ``input_width`` train images the all-to-all ridge is solved through the train kernel
        (exactly the same fit, computed in the n-dimensional span of the train rows); otherwise through the
        eigendecomposition of the train Gram.
        """
        with torch.no_grad():
            self._sum_held([1, 2])  # held-out splits only enter through their moments (n D^2 to form)
            n_train = self._held.get(0, 0)
            train = _stored_rows(self._state, 0, n_train) if n_train and self._state is not None else None
            return _isi_rec_compute(self._current_state(), self.num_tokens, self.num_patches, self.k_in, self.k,
                                    self.alphas, train_rows=train)

    def __repr__(self) -> str:
        return (f"ReconstructionISI(dim={self.dim}, num_tokens={self.num_tokens}, num_patches={self.num_patches}, "
                f"k={self.k}, k_in={self.k_in}, seed={self.seed})")


def isi_reconstruction(tokens: Tensor, pre_patches: Tensor, split, *, k: int = 8, k_in: int | None = None,
                       seed: int = 0, alphas=None) -> dict[str, float]:
    """One-shot :class:`ReconstructionISI` on tensors already in memory (same definition and defaults).

    Args:
        tokens: Layer tokens (N, T, d), prefix tokens first.
        pre_patches: Pre-position-embedding patch embeddings (N, P, d).
        split: Split code per image (N,), 0/1/2 = train/val/test.
        k, k_in, seed, alphas: As for :class:`ReconstructionISI`.
    """
    for name, x in (("tokens", tokens), ("pre_patches", pre_patches)):
        if not isinstance(x, Tensor) or x.ndim != 3:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise _IsiInputError(f"{name} must be a 3-D torch.Tensor (images, tokens, d); got {got}.")
    isi = ReconstructionISI(tokens.shape[2], tokens.shape[1], pre_patches.shape[1], k=k, k_in=k_in, seed=seed,
                            alphas=alphas)
    isi.update(tokens, pre_patches, split)
    return isi.compute()
