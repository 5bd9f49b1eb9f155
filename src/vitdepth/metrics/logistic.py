"""Softmax-regression probes for many heads at once (``--probe logistic``, design §4 "Probes").

The optional logistic probe of the per-layer accuracy curve in "Mechanisms of Non-Monotonic
Scaling in Vision Transformers" (arXiv 2511.21635): a linear softmax classifier per (layer,
token set) "head" on the cached pooled features (linear probes: Alain & Bengio 2016,
arXiv 1610.01644). As fast linear-evaluation code does, every head and every weight decay of a
small grid is trained at once: one stacked weight tensor ``(K heads, d, G decays, C)``, one
batched matmul per function evaluation, full-batch L-BFGS with a fixed iteration budget.

Objective, per head ``h`` and weight decay ``wd`` (intercept unpenalised)::

    min_{W, b}  (1/N) sum_i CE(softmax(W^T z_i + b), y_i) + (wd / 2) ||W||_F^2,
    z_i = (x_i - mean_h) / scale_h

with ``mean_h`` and the population std ``scale_h`` from that head's train features (a constant
feature gets scale 1, as in scikit-learn's ``StandardScaler`` and :class:`~vitdepth.metrics.probes.RidgeProbe`).
This is scikit-learn's ``LogisticRegression(C=1 / (wd * N))`` (multinomial, L2, unpenalised
intercept) on the standardised features, whose objective ``C sum_i CE + ||W||^2 / 2`` is ours
times ``C N``. The decay is chosen per head on the validation split (accuracy; ties go to the
larger decay, the simpler model); the test split is never seen here.

Solver: L-BFGS (history 10) whose every step is per problem — each (head, decay) pair has its
own curvature pairs, step length (Armijo backtracking) and stopping test — so the problems are
independent: adding or removing a head changes no other head's iterates beyond float rounding.
Problems stop when their gradient's largest entry falls below ``tol`` or at ``max_iter``
iterations. The solver starts from zero weights and uses no randomness, so results are
deterministic for given inputs; ``seed`` is accepted (and recorded by callers) but does not
change them.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vitdepth._errors import VitdepthError

from .probes import InvalidParameterError, _check_alpha, _encode_labels

__all__ = ["DEFAULT_WDS", "LogisticProbes", "fit_logistic_probes"]

#: Weight decays tried per head, in the units of the objective above (mean cross-entropy +
#: ``wd/2 ||W||^2`` on standardised features). ``C = 1 / (wd N)`` in scikit-learn's units: with
#: N = 5,000 train images the grid is C = 20 ... 0.002; scikit-learn's default C = 1 is
#: ``wd = 1/N``. Pooled ViT features have d = 192..1024 against a few thousand train images, so
#: the grid leans towards strong regularisation; weaker decays are also the slowest to fit.
#: ``val_scores_`` shows when the best decay sits at an end of the grid.
DEFAULT_WDS = np.logspace(-5, -1, 5)

_HISTORY = 10  # L-BFGS curvature pairs kept per problem
_MAX_LINE_SEARCH = 25  # step halvings before a problem is declared stalled
_ARMIJO_C1 = 1e-4


class _LogisticInputError(VitdepthError, ValueError):
    """Features or labels handed to the logistic probes do not fit together."""


# --------------------------------------------------------------------------------------------
# Functional core: the batched objective and a per-problem L-BFGS (style rule 9).
# --------------------------------------------------------------------------------------------


class _Params(NamedTuple):
    """Weights of every (head, decay) problem: ``w`` (K, d, G, C), ``b`` (K, G, C)."""

    w: Tensor
    b: Tensor


def _dot(x: _Params, y: _Params) -> Tensor:
    """Per-problem inner product, (K, G)."""
    return (x.w * y.w).sum((1, 3)) + (x.b * y.b).sum(-1)


def _axpy(t: Tensor, x: _Params, y: _Params) -> _Params:
    """``y + t x`` with a per-problem scalar ``t`` (K, G)."""
    return _Params(y.w + t[:, None, :, None] * x.w, y.b + t[..., None] * x.b)


def _where(mask: Tensor, x: _Params, y: _Params) -> _Params:
    """Per problem: ``x`` where ``mask`` (K, G), else ``y``."""
    return _Params(torch.where(mask[:, None, :, None], x.w, y.w), torch.where(mask[..., None], x.b, y.b))


def _logits(z: Tensor, p: _Params) -> Tensor:
    """(K, N, G, C): one (N, d) x (d, G C) matmul per head serves every decay."""
    k, n, d = z.shape
    g, c = p.b.shape[1:]
    return torch.baddbmm(p.b.reshape(k, 1, g * c), z, p.w.reshape(k, d, g * c)).view(k, n, g, c)


def _loss_grad(z: Tensor, y: Tensor, wds: Tensor, p: _Params) -> tuple[Tensor, _Params]:
    """Objective (K, G) and its gradient for every problem.

    Args:
        z: Standardised features (K, N, d).
        y: Train class indices (N,), int64, on z's device.
        wds: Weight decays (G,).
        p: Current weights.
    """
    k, n, d = z.shape
    g, c = p.b.shape[1:]
    logits = _logits(z, p)
    idx = y.view(1, n, 1, 1).expand(k, n, g, 1)
    m = logits.amax(-1, keepdim=True)
    e = torch.exp(logits - m)
    total = e.sum(-1, keepdim=True)
    true = logits.gather(-1, idx)
    loss = (total.log() + m - true).squeeze(-1).mean(1) + 0.5 * wds * (p.w * p.w).sum((1, 3))
    resid = e.div_(total).scatter_add_(-1, idx, torch.full_like(true, -1.0))  # N * dCE/dlogits
    resid = resid.view(k, n, g * c)
    gw = torch.bmm(z.transpose(1, 2), resid).view(k, d, g, c).div_(n).add_(wds[None, None, :, None] * p.w)
    return loss, _Params(gw, resid.sum(1).view(k, g, c).div_(n))


def _take(p: _Params, rows: Tensor | None) -> _Params:
    return p if rows is None else _Params(p.w[rows], p.b[rows])


def _put(p: _Params, rows: Tensor | None, value: _Params) -> None:
    if rows is None:
        p.w.copy_(value.w)
        p.b.copy_(value.b)
    else:
        p.w[rows], p.b[rows] = value.w, value.b


def _line_search(z: Tensor, y: Tensor, wds: Tensor, p: _Params, loss: Tensor, gd: Tensor, direction: _Params,
                 t: Tensor, accepted: Tensor) -> tuple[_Params, Tensor, _Params, Tensor]:
    """Backtracking Armijo search per problem; only heads with a pending problem are evaluated.

    Returns:
        (new weights, new loss, new gradient, accepted mask); problems not accepted keep ``p``.
    """
    new_p = _Params(p.w.clone(), p.b.clone())
    new_grad = _Params(torch.empty_like(p.w), torch.empty_like(p.b))
    new_loss = loss.clone()
    accepted = accepted.clone()
    pending = ~accepted.all(1)
    # Heads whose every problem has stopped are not evaluated at all (the budget is set by stragglers).
    rows = None if bool(pending.all()) else torch.nonzero(pending).squeeze(1)
    for _ in range(_MAX_LINE_SEARCH):
        sel = slice(None) if rows is None else rows
        acc, ts = accepted[sel], t[sel]
        trial = _axpy(torch.where(acc, torch.zeros_like(ts), ts), _take(direction, rows), _take(p, rows))
        t_loss, t_grad = _loss_grad(z if rows is None else z[rows], y, wds, trial)
        ok = ~acc & torch.isfinite(t_loss) & (t_loss <= loss[sel] + _ARMIJO_C1 * ts * gd[sel])
        _put(new_p, rows, _where(ok, trial, _take(new_p, rows)))
        _put(new_grad, rows, _where(ok, t_grad, _take(new_grad, rows)))
        new_loss[sel] = torch.where(ok, t_loss, new_loss[sel])
        accepted[sel] = acc | ok
        if bool(accepted.all()):
            break
        t = torch.where(accepted, t, 0.5 * t)
        rows = torch.nonzero(~accepted.all(1)).squeeze(1)
    return new_p, new_loss, new_grad, accepted


def _lbfgs(z: Tensor, y: Tensor, num_classes: int, wds: Tensor, max_iter: int,
           tol: float) -> tuple[_Params, Tensor, Tensor]:
    """Minimise every problem's objective from zero weights with a per-problem L-BFGS.

    Returns:
        (weights, iterations per problem (K, G), converged mask (K, G)).
    """
    k, _, d = z.shape
    g, c = wds.shape[0], num_classes
    p = _Params(z.new_zeros(k, d, g, c), z.new_zeros(k, g, c))
    loss, grad = _loss_grad(z, y, wds, p)
    history: list[tuple[_Params, _Params, Tensor]] = []  # (s, y, rho), oldest first; rho = 0 marks a skipped pair
    gamma = z.new_ones(k, g)  # initial inverse-Hessian scale s.y / y.y of the newest accepted pair
    has_pair = torch.zeros(k, g, dtype=torch.bool, device=z.device)
    active = torch.ones(k, g, dtype=torch.bool, device=z.device)
    converged = torch.zeros(k, g, dtype=torch.bool, device=z.device)
    n_iter = torch.zeros(k, g, dtype=torch.int64, device=z.device)
    # Results of every head; the loop below works on the heads that still have a running problem ("live"),
    # dropping finished heads once they are half of what it carries: the two-loop recursion costs as much
    # as the function evaluations, and most heads finish long before the slowest one.
    out_p = _Params(torch.empty_like(p.w), torch.empty_like(p.b))
    out_iter, out_conv = torch.empty_like(n_iter), torch.empty_like(converged)
    live = torch.arange(k, device=z.device)

    def store(heads: Tensor) -> None:
        out_p.w[live[heads]], out_p.b[live[heads]] = p.w[heads], p.b[heads]
        out_iter[live[heads]], out_conv[live[heads]] = n_iter[heads], converged[heads]

    for _ in range(max_iter):
        gmax = torch.maximum(grad.w.abs().amax((1, 3)), grad.b.abs().amax(-1))
        converged |= active & (gmax <= tol)
        active &= ~converged
        running = active.any(1)
        n_running = int(running.sum())
        if n_running == 0:
            break
        if n_running <= len(live) // 2:
            store(torch.nonzero(~running).squeeze(1))
            keep = torch.nonzero(running).squeeze(1)
            live, z = live[keep], z[keep]
            p, grad, loss = _take(p, keep), _take(grad, keep), loss[keep]
            history = [(_take(s_, keep), _take(y_, keep), rho[keep]) for s_, y_, rho in history]
            gamma, has_pair, active = gamma[keep], has_pair[keep], active[keep]
            converged, n_iter = converged[keep], n_iter[keep]
        # Two-loop recursion, vectorised over problems.
        q, coeffs = grad, []
        for s, yv, rho in reversed(history):
            a = rho * _dot(s, q)
            q = _axpy(-a, yv, q)
            coeffs.append(a)
        r = _Params(q.w * gamma[:, None, :, None], q.b * gamma[..., None])
        for (s, yv, rho), a in zip(history, reversed(coeffs), strict=True):
            r = _axpy(a - rho * _dot(yv, r), s, r)
        direction = _Params(-r.w, -r.b)
        gd = _dot(grad, direction)
        uphill = ~(gd < 0)
        direction = _where(uphill, _Params(-grad.w, -grad.b), direction)
        gd = torch.where(uphill, -_dot(grad, grad), gd)
        # First step of a problem without curvature information: as torch.optim.LBFGS, 1/|g|_1.
        g1 = grad.w.abs().sum((1, 3)) + grad.b.abs().sum(-1)
        t = torch.where(has_pair & ~uphill, torch.ones_like(g1), torch.clamp(1.0 / g1, max=1.0))
        new_p, new_loss, new_grad, accepted = _line_search(z, y, wds, p, loss, gd, direction, t, ~active)
        stepped = active & accepted
        active &= accepted  # no decrease found: the problem has stalled at float precision
        n_iter += stepped.to(torch.int64)
        s = _Params(new_p.w - p.w, new_p.b - p.b)
        yv = _Params(new_grad.w - grad.w, new_grad.b - grad.b)
        yv = _where(stepped, yv, _Params(torch.zeros_like(yv.w), torch.zeros_like(yv.b)))
        new_grad = _where(stepped, new_grad, grad)
        sy, yy = _dot(s, yv), _dot(yv, yv)
        valid = stepped & (sy > 1e-10 * yy) & (yy > 0)
        history.append((s, yv, torch.where(valid, 1.0 / torch.where(valid, sy, 1.0), 0.0)))
        if len(history) > _HISTORY:
            history.pop(0)
        gamma = torch.where(valid, sy / torch.where(valid, yy, 1.0), gamma)
        has_pair |= valid
        p, loss, grad = new_p, new_loss, new_grad
    store(torch.arange(len(live), device=z.device))
    return out_p, out_iter, out_conv


def _standardise(x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-head train mean and population std in float64, (K, d) each; 1 for constant features.

    Constant test of scikit-learn's ``StandardScaler`` (``_is_constant_feature``), the same rule
    as :func:`vitdepth.metrics.probes._feature_scale`, vectorised over heads.
    """
    k, n, _ = x.shape
    means, scales = [], []
    for h in range(k):  # one head at a time: a float64 copy of all heads could be large
        xh = x[h].to(torch.float64)
        var, mean = torch.var_mean(xh, dim=0, correction=0)
        eps = torch.finfo(torch.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        means.append(mean.cpu().numpy())
        scales.append(torch.where(constant, torch.ones_like(var), var.sqrt()).cpu().numpy())
    return np.stack(means), np.stack(scales)


# --------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------


def _as_features(name: str, x: object, device) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor) or x.ndim != 3:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise _LogisticInputError(f"{name} must be a tensor of shape (heads, samples, d); got {got}.")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise _LogisticInputError(f"{name} must hold real numbers; got {x.dtype}.")
    return x if device is None else x.to(device)


def _as_labels(name: str, y: object, n: int) -> np.ndarray:
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise _LogisticInputError(f"{name} must have shape ({n},) to match the features; got {arr.shape}.")
    return arr


def _check_wds(wds: object) -> np.ndarray:
    try:
        arr = None if isinstance(wds, str) else np.atleast_1d(np.asarray(wds, dtype=np.float64))
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.size == 0:
        raise InvalidParameterError(
            "The 'weight_decays' parameter of fit_logistic_probes must be a non-empty 1-D sequence of floats "
            f"in the range (0, inf). Got {wds!r} instead."
        )
    for w in arr:
        _check_alpha(float(w), "fit_logistic_probes", "weight_decays")
    return arr


# --------------------------------------------------------------------------------------------
# Result object and the fitting function.
# --------------------------------------------------------------------------------------------


class LogisticProbes:
    """Fitted softmax probes, one per head, at each head's validation-chosen weight decay.

    Built by :func:`fit_logistic_probes`. Learned attributes end in ``_`` (scikit-learn style);
    arrays are float64 numpy.

    Attributes:
        classes_: Sorted class labels seen in training, (C,).
        coef_: Weights in the original feature space, (K, C, d) (standardisation folded in).
        intercept_: Intercepts in the original feature space, (K, C).
        weight_decay_: Chosen weight decay per head, (K,).
        val_accuracy_: Validation accuracy at the chosen decay, (K,).
        val_scores_: Validation accuracy per head and decay, (K, G).
        weight_decays_: The grid, (G,).
        mean_: Train feature means per head, (K, d).
        scale_: Train feature population std per head (1 for constant features), (K, d).
        n_iter_: L-BFGS iterations per head and decay, (K, G).
        converged_: Whether the gradient test was met (else the budget or float precision ran out), (K, G).
    """

    def __init__(self, classes, w_std, b_std, mean, scale, wds, val_scores, n_iter, converged):
        self.classes_ = classes
        self.mean_, self.scale_ = mean, scale
        self.weight_decays_ = wds
        self.val_scores_ = val_scores
        self.n_iter_, self.converged_ = n_iter, converged
        best = [_choose(val_scores[h], wds) for h in range(len(val_scores))]
        rows = np.arange(len(best))
        self.weight_decay_ = wds[best]
        self.val_accuracy_ = val_scores[rows, best]
        self._w_std = w_std[rows, :, best]  # (K, d, C), standardised space
        self._b_std = b_std[rows, best]  # (K, C)
        self.coef_ = np.ascontiguousarray((self._w_std / scale[:, :, None]).transpose(0, 2, 1))
        self.intercept_ = self._b_std - np.einsum("kd,kcd->kc", mean, self.coef_)

    def decision_function(self, X) -> Tensor:
        """Class scores (K, n, C) for features (K, n, d), float32 on X's device."""
        x = _as_features("X", X, None)
        k, _, d = x.shape
        if (k, d) != self.mean_.shape:
            raise _LogisticInputError(
                f"X must have shape (heads, samples, d) = ({self.mean_.shape[0]}, n, {self.mean_.shape[1]}); "
                f"got {tuple(x.shape)}."
            )
        dev = x.device

        def t(a):
            return torch.as_tensor(a, dtype=torch.float32, device=dev)

        # Standardise first, as in training: folding a large mean into the intercept loses float32 digits.
        z = (x.to(torch.float32) - t(self.mean_)[:, None]) / t(self.scale_)[:, None]
        return z @ t(self._w_std) + t(self._b_std)[:, None]

    def predict(self, X) -> np.ndarray:
        """Predicted labels (K, n) for features (K, n, d)."""
        return self.classes_[self.decision_function(X).argmax(-1).cpu().numpy()]

    def score(self, X, y) -> np.ndarray:
        """Accuracy per head, (K,), for features (K, n, d) and labels (n,)."""
        pred = self.predict(X)
        return (pred == _as_labels("y", y, pred.shape[1])[None]).mean(1)


def _choose(scores: np.ndarray, wds: np.ndarray) -> int:
    """Best validation accuracy; ties go to the larger weight decay."""
    tied = np.flatnonzero(scores == scores.max())
    return int(tied[np.argmax(wds[tied])])


def fit_logistic_probes(train_X, train_y, val_X, val_y, weight_decays=DEFAULT_WDS, max_iter: int = 300,
                        seed: int = 0, *, tol: float = 1e-4, device=None, dtype: torch.dtype = torch.float32,
                        max_elements: int = 2**27) -> LogisticProbes:
    """Train a softmax probe for every head and weight decay at once; choose the decay per head on validation.

    Args:
        train_X: Train features (K, N, d), heads stacked (e.g. every layer x token set), any float
            dtype (fp16 from the cache is fine), tensor or numpy.
        train_y: Train labels (N,), shared by every head.
        val_X: Validation features (K, N_val, d).
        val_y: Validation labels (N_val,); a label not seen in training counts as a miss.
        weight_decays: Decays to try, objective units (see :data:`DEFAULT_WDS`).
        max_iter: L-BFGS iteration budget per problem.
        seed: Accepted for API symmetry and recorded by callers; the solver is deterministic and
            does not use it.
        tol: A problem stops when its gradient's largest entry is at most this.
        device: Where to train (default: train_X's device).
        dtype: Training dtype; float32 (the default) is accurate enough for accuracy and twice as fast.
        max_elements: Bound on heads x N x G x C per batch of heads (logits and their gradient are
            held for one batch at a time); heads are trained in batches under it, with identical
            results since the problems are independent.

    Returns:
        A :class:`LogisticProbes`.

    Raises:
        InvalidParameterError: A bad weight decay or budget.
        VitdepthError: Mismatched shapes, or fewer than two classes in training.

    Examples:
        >>> import torch
        >>> from vitdepth.metrics.logistic import fit_logistic_probes
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> x = torch.randn(2, 200, 3, generator=g) + 3 * y[None, :, None]  # two heads
        >>> probes = fit_logistic_probes(x[:, :100], y[:100], x[:, 100:], y[100:])
        >>> probes.coef_.shape, probes.score(x[:, 100:], y[100:]).round(2).tolist()
        ((2, 2, 3), [0.99, 1.0])
    """
    wds = _check_wds(weight_decays)
    for name, value, low in (("max_iter", max_iter, 1), ("max_elements", max_elements, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise InvalidParameterError(
                f"The '{name}' parameter of fit_logistic_probes must be an int in the range [{low}, inf). "
                f"Got {value!r} instead."
            )
    if isinstance(tol, bool) or not isinstance(tol, Real) or not tol >= 0:
        raise InvalidParameterError(
            f"The 'tol' parameter of fit_logistic_probes must be a float in the range [0, inf). Got {tol!r} instead."
        )
    xtr = _as_features("train_X", train_X, device)
    xva = _as_features("val_X", val_X, xtr.device)
    k, n, d = xtr.shape
    if xva.shape[0] != k or xva.shape[2] != d:
        raise _LogisticInputError(f"val_X must have shape ({k}, n_val, {d}) to match train_X {tuple(xtr.shape)}; "
                                  f"got {tuple(xva.shape)}.")
    ytr = _as_labels("train_y", train_y, n)
    yva = _as_labels("val_y", val_y, xva.shape[1])
    classes = np.unique(ytr)
    if classes.size < 2 or xva.shape[1] == 0:
        raise _LogisticInputError(
            f"fit_logistic_probes needs at least two classes in train_y and one validation sample; got "
            f"{classes.size} class(es) and {xva.shape[1]} validation samples."
        )
    c = classes.size
    ytr_idx = torch.from_numpy(_encode_labels(ytr, classes)).to(xtr.device)
    pos = np.clip(np.searchsorted(classes, yva), 0, c - 1)
    yva_idx = torch.from_numpy(np.where(classes[pos] == yva, pos, -1)).to(xtr.device)  # -1: never predicted

    mean, scale = _standardise(xtr)
    wds_t = torch.as_tensor(wds, dtype=dtype, device=xtr.device)
    g = wds.size
    per_batch = max(1, max_elements // max(1, n * g * c))
    w_std = np.empty((k, d, g, c))
    b_std = np.empty((k, g, c))
    val_scores = np.empty((k, g))
    n_iter = np.empty((k, g), dtype=np.int64)
    converged = np.empty((k, g), dtype=bool)
    with torch.no_grad():
        for start in range(0, k, per_batch):
            sl = slice(start, min(k, start + per_batch))
            mu = torch.as_tensor(mean[sl], dtype=dtype, device=xtr.device)[:, None]
            sd = torch.as_tensor(scale[sl], dtype=dtype, device=xtr.device)[:, None]
            z = (xtr[sl].to(dtype) - mu) / sd
            p, it, conv = _lbfgs(z, ytr_idx, c, wds_t, int(max_iter), float(tol))
            pred = _logits((xva[sl].to(dtype) - mu) / sd, p).argmax(-1)  # (k, N_val, G)
            val_scores[sl] = (pred == yva_idx[None, :, None]).to(torch.float64).mean(1).cpu().numpy()
            w_std[sl] = p.w.to(torch.float64).cpu().numpy()
            b_std[sl] = p.b.to(torch.float64).cpu().numpy()
            n_iter[sl], converged[sl] = it.cpu().numpy(), conv.cpu().numpy()
    return LogisticProbes(classes, w_std, b_std, mean, scale, wds, val_scores, n_iter, converged)
