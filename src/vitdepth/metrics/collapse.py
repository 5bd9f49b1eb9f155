"""Neural-collapse geometry of one layer's features, from streaming sufficient statistics.

Neural collapse (Papyan, Han & Donoho 2020, "Prevalence of neural collapse during the terminal
phase of deep learning training", PNAS 117(40), arXiv 2008.08186) describes the geometry a
classifier's features settle into: the samples of a class shrink onto their class mean (NC1),
the centred class means form a simplex equiangular tight frame (NC2), the classifier weights
line up with them (NC3), and the classifier acts as a nearest-class-centre rule (NC4). design §4
measures it per layer and token set on the cached test features.

Functional core (style rule 9): :func:`collapse_update` maps one chunk to additive float64
statistics, :func:`collapse_merge` adds two of them, :func:`collapse_compute` derives the
metrics, :func:`nc4_disagreement` counts one chunk's disagreements, and
:func:`neural_collapse` is the one-shot form. Notation: ``x_i`` (d-dim) with labels ``y_i``,
``n_c`` samples and mean ``mu_c`` in class ``c``, ``N = sum_c n_c``, and ``C`` the number of
classes *present* (``n_c > 0``)::

    mu_G      = (1/C) sum_c mu_c                                   (mean of the class means)
    Sigma_W   = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T
              = (1/N) (sum_i x_i x_i^T - sum_c n_c mu_c mu_c^T)    (what is computed: it streams)
    Sigma_B   = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T
    nc1       = Tr(Sigma_W Sigma_B^+) / C
    nc2_norm  = std_c ||mu_c - mu_G|| / mean_c ||mu_c - mu_G||     (population std, ddof = 0)
    nc2_angle = mean_{c != c'} | cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C - 1) |
    nc3       = || W / ||W||_F - M / ||M||_F ||_F                 (W: probe weights, M: rows mu_c - mu_G)
    nc4       = fraction of samples where argmin_c ||x - mu_c|| differs from the probe's prediction

Conventions (ours where the paper's balanced setting leaves a choice):

- **Centring by the mean of the class means**, not the sample-weighted global mean. The two
  agree for balanced classes (the paper's setting). On an imbalanced or partial test split the
  mean of class means is the centroid of the class-mean simplex: a simplex ETF is defined by
  centred means that sum to zero, so only this centring gives ``nc2 = 0`` for an exact ETF
  whatever the class frequencies, and it matches ``Sigma_B``'s equal ``1/C`` class weights.
  ``Sigma_W`` pools samples (``1/N``), as in the paper's ``Ave_{i,c}``; it does not depend on
  ``mu_G``.
- **Classes absent from the data are left out**: NC is measured over the classes present, and
  ``C`` above is their number; the rows of ``W`` for absent classes are dropped before ``nc3``
  and absent classes never count as a nearest centre in ``nc4``. Fewer than two classes present
  gives NaN for every metric; so does ``nc1`` when all class means coincide (``Sigma_B = 0``).
- **Pseudo-inverse** ``Sigma_B^+``: ``Sigma_B`` has rank at most ``C - 1`` (the centred means sum
  to zero), so as in the authors' code (top ``C - 1`` eigenpairs) at most ``min(C - 1, d)``
  eigen-directions are inverted, and of those only eigenvalues above ``rtol * lambda_max`` with
  ``rtol = max(C, d) * eps(float64)`` by default (the numerical-rank tolerance of
  ``scipy.linalg.pinv`` and ``numpy.linalg.matrix_rank``): directions that are zero up to
  float64 rounding are dropped, and nothing is regularised beyond that.
- A centred class mean of norm 0 has cosine 0 with every other one in ``nc2_angle``.

Precision: statistics are float64 whatever the input dtype (fp16/fp32 features from the cache).
``Sigma_W`` from the raw second moment loses about ``log10(||mu_c||^2 / sigma_W^2)`` of float64's
16 digits to cancellation — ~6 for a feature whose mean is 1000 within-class standard deviations
from zero, which still leaves 10. That is the price of exact, order-free merging by addition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from vitdepth._errors import VitdepthError

__all__ = [
    "CollapseStats",
    "collapse_compute",
    "collapse_merge",
    "collapse_update",
    "nc4_disagreement",
    "neural_collapse",
]

# Rows of X per block in the nearest-centre search: bounds the (rows, C) float64 distance block
# to ~32 MB at C = 1000.
_NC4_BLOCK = 4096


class _CollapseInputError(VitdepthError, ValueError):
    """Features, labels or statistics handed to a neural-collapse function do not fit together."""


@dataclass(frozen=True, eq=False)
class CollapseStats:
    """Additive sufficient statistics of (features, labels) for neural collapse, all sums.

    Merging is elementwise addition (:func:`collapse_merge`), so the result does not depend on
    how the data were chunked or in which order chunks arrive; a rank or shard with no data
    contributes :meth:`empty`.

    Attributes:
        class_counts: Samples per class ``n_c``, int64, (C,) with C = ``num_classes``.
        class_sums: Per-class feature sums ``sum_{i: y_i = c} x_i``, float64, (C, d).
        gram_sum: Total second moment ``sum_i x_i x_i^T`` (uncentred), float64, (d, d).
    """

    class_counts: np.ndarray
    class_sums: np.ndarray
    gram_sum: np.ndarray

    @classmethod
    def empty(cls, num_classes: int, dim: int) -> CollapseStats:
        """Zero statistics (no samples) for ``num_classes`` classes and ``dim`` features."""
        _check_num_classes(num_classes)
        return cls(
            class_counts=np.zeros(num_classes, dtype=np.int64),
            class_sums=np.zeros((num_classes, dim)),
            gram_sum=np.zeros((dim, dim)),
        )

    @property
    def num_classes(self) -> int:
        """Declared number of classes C (present or not)."""
        return int(self.class_counts.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.class_sums.shape[1])

    @property
    def n(self) -> int:
        """Total number of samples N."""
        return int(self.class_counts.sum())

    def class_means(self) -> np.ndarray:
        """Class means ``mu_c``, float64 (C, d); rows of absent classes are NaN."""
        counts = self.class_counts[:, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, self.class_sums / np.where(counts > 0, counts, 1.0), np.nan)


# --------------------------------------------------------------------------------------------
# Validation (one-line errors that name the argument, the expected form and what was given).
# --------------------------------------------------------------------------------------------


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise _CollapseInputError(f"num_classes must be an int >= 1; got {num_classes!r}.")
    return int(num_classes)


def _check_features(name: str, x: object) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise _CollapseInputError(f"{name} must be a numpy array of shape (n, d); got {type(x).__name__}.")
    if x.ndim != 2:
        raise _CollapseInputError(f"{name} must have shape (n, d); got shape {x.shape}.")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _CollapseInputError(f"{name} must hold real numbers; got dtype {x.dtype}.")
    return x


def _check_labels(name: str, y: object, n: int, num_classes: int) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        got = f"shape {y.shape}, dtype {y.dtype}" if isinstance(y, np.ndarray) else type(y).__name__
        raise _CollapseInputError(f"{name} must be a 1-D integer numpy array of class indices; got {got}.")
    if y.shape[0] != n:
        raise _CollapseInputError(f"{name} of shape {y.shape} does not match X with {n} rows; expected ({n},).")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise _CollapseInputError(
            f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}; got values in "
            f"[{y.min()}, {y.max()}]."
        )
    return y


# --------------------------------------------------------------------------------------------
# Functional core.
# --------------------------------------------------------------------------------------------


def collapse_update(X: np.ndarray, y: np.ndarray, num_classes: int) -> CollapseStats:
    """Statistics of one chunk of features.

    Args:
        X: Features, (n, d), any real dtype (fp16/fp32 from the cache); accumulated in float64.
        y: Class indices in ``[0, num_classes)``, integer (n,).
        num_classes: Declared number of classes C; classes without samples are allowed.

    Returns:
        The chunk's :class:`CollapseStats`.
    """
    num_classes = _check_num_classes(num_classes)
    X = _check_features("X", X)
    n = X.shape[0]
    y = _check_labels("y", y, n, num_classes)
    x = X.astype(np.float64, copy=False)
    # Sparse one-hot (C, n): per-class sums in O(n d) whatever the number of classes.
    onehot = sp.csr_matrix((np.ones(n), (y, np.arange(n))), shape=(num_classes, n))
    return CollapseStats(
        class_counts=np.bincount(y, minlength=num_classes).astype(np.int64),
        class_sums=np.ascontiguousarray(onehot @ x),
        gram_sum=x.T @ x,
    )


def collapse_merge(a: CollapseStats, b: CollapseStats) -> CollapseStats:
    """Pool two statistics: elementwise sums (exact and order-free up to float64 rounding)."""
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, CollapseStats):
            raise _CollapseInputError(f"{name} must be a CollapseStats; got {type(s).__name__}.")
    if (a.num_classes, a.dim) != (b.num_classes, b.dim):
        raise _CollapseInputError(
            f"cannot merge CollapseStats with (num_classes, d) = {(a.num_classes, a.dim)} and "
            f"{(b.num_classes, b.dim)}; both must come from the same layer and label set."
        )
    return CollapseStats(
        class_counts=a.class_counts + b.class_counts,
        class_sums=a.class_sums + b.class_sums,
        gram_sum=a.gram_sum + b.gram_sum,
    )


def _pinv_trace(sigma_w: np.ndarray, sigma_b: np.ndarray, max_rank: int, rtol: float) -> float:
    """``Tr(Sigma_W Sigma_B^+)`` with ``Sigma_B^+`` over at most ``max_rank`` eigenvalues > ``rtol * lambda_max``."""
    lam, vec = np.linalg.eigh(sigma_b)  # ascending
    lam, vec = lam[::-1][:max_rank], vec[:, ::-1][:, :max_rank]
    if lam.size == 0 or lam[0] <= 0:
        return float("nan")
    keep = lam > rtol * lam[0]
    lam, vec = lam[keep], vec[:, keep]
    # Tr(Sigma_W V diag(1/lam) V^T) = sum_k v_k^T Sigma_W v_k / lam_k
    return float(np.sum(np.sum(vec * (sigma_w @ vec), axis=0) / lam))


def collapse_compute(
    stats: CollapseStats, probe_coef: np.ndarray | None = None, *, rtol: float | None = None
) -> dict[str, float]:
    """Neural-collapse metrics from pooled statistics (formulas and conventions in the module docstring).

    Args:
        stats: Pooled :class:`CollapseStats`.
        probe_coef: Linear probe weights W, (num_classes, d) (scikit-learn's ``coef_`` layout,
            in the same feature space as the statistics). ``nc3`` is returned only when given.
        rtol: Relative eigenvalue cut-off of ``Sigma_B^+``; default ``max(C, d) * eps(float64)``.

    Returns:
        ``{"nc1", "nc2_norm", "nc2_angle"}`` plus ``"nc3"`` when ``probe_coef`` is given, as floats;
        NaN when fewer than two classes are present.
    """
    if not isinstance(stats, CollapseStats):
        raise _CollapseInputError(f"stats must be a CollapseStats; got {type(stats).__name__}.")
    if probe_coef is not None:
        probe_coef = _check_features("probe_coef", probe_coef)
        if probe_coef.shape != (stats.num_classes, stats.dim):
            raise _CollapseInputError(
                f"probe_coef of shape {probe_coef.shape} does not match the statistics; expected "
                f"(num_classes, d) = {(stats.num_classes, stats.dim)}."
            )
    if rtol is not None and not (isinstance(rtol, (int, float)) and 0 <= rtol < 1):
        raise _CollapseInputError(f"rtol must be a float in [0, 1); got {rtol!r}.")

    present = stats.class_counts > 0
    c = int(present.sum())
    d = stats.dim
    nan = float("nan")
    out = {"nc1": nan, "nc2_norm": nan, "nc2_angle": nan}
    if probe_coef is not None:
        out["nc3"] = nan
    if c < 2:
        return out

    counts = stats.class_counts[present].astype(np.float64)
    sums = stats.class_sums[present]
    n = counts.sum()
    means = sums / counts[:, None]
    centred = means - means.mean(axis=0)  # rows mu_c - mu_G, mu_G = mean of the class means

    # sum_c n_c mu_c mu_c^T = sum_c S_c S_c^T / n_c; symmetrise away the rounding asymmetry.
    sigma_w = (stats.gram_sum - sums.T @ means) / n
    sigma_w = 0.5 * (sigma_w + sigma_w.T)
    sigma_b = centred.T @ centred / c
    tol = max(c, d) * np.finfo(np.float64).eps if rtol is None else float(rtol)
    out["nc1"] = _pinv_trace(sigma_w, sigma_b, max_rank=min(c - 1, d), rtol=tol) / c

    norms = np.linalg.norm(centred, axis=1)
    mean_norm = norms.mean()
    out["nc2_norm"] = float(norms.std() / mean_norm) if mean_norm > 0 else nan
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    unit = centred * inv[:, None]
    cos = unit @ unit.T
    off_diag = ~np.eye(c, dtype=bool)
    out["nc2_angle"] = float(np.abs(cos[off_diag] + 1.0 / (c - 1)).mean())

    if probe_coef is not None:
        w = probe_coef[present].astype(np.float64)
        w_norm, m_norm = np.linalg.norm(w), np.linalg.norm(centred)
        if w_norm > 0 and m_norm > 0:
            out["nc3"] = float(np.linalg.norm(w / w_norm - centred / m_norm))
    return out


def nc4_disagreement(X: np.ndarray, class_means: np.ndarray, probe_pred: np.ndarray) -> tuple[int, int]:
    """Count samples where the nearest class centre and the probe disagree (additive over chunks).

    Nearest centre: ``argmin_c ||x - mu_c||_2`` in float64, ties to the lowest class index; rows
    of ``class_means`` that contain NaN (absent classes, see :meth:`CollapseStats.class_means`)
    are never the nearest. ``nc4 = sum(count) / sum(n)`` over chunks.

    Args:
        X: Features, (n, d), any real dtype.
        class_means: Class means, (C, d), NaN rows for absent classes.
        probe_pred: The probe's predicted class indices in ``[0, C)``, integer (n,).

    Returns:
        ``(count, n)``: number of disagreements and number of samples.
    """
    X = _check_features("X", X)
    class_means = _check_features("class_means", class_means)
    if class_means.shape[1] != X.shape[1]:
        raise _CollapseInputError(
            f"class_means of shape {class_means.shape} does not match X of shape {X.shape}; expected (C, d) and (n, d)."
        )
    n = X.shape[0]
    probe_pred = _check_labels("probe_pred", probe_pred, n, class_means.shape[0])
    valid = ~np.isnan(class_means).any(axis=1)
    if not valid.any():
        raise _CollapseInputError("class_means has no class without NaN; at least one class mean is needed.")
    mu = class_means[valid].astype(np.float64)
    labels = np.flatnonzero(valid)
    # Distances are translation invariant: shift by the centroid so that ||mu||^2 - 2 x.mu does
    # not cancel against a large shared offset.
    shift = mu.mean(axis=0)
    mu = mu - shift
    mu_sq = np.einsum("cd,cd->c", mu, mu)
    count = 0
    for lo in range(0, n, _NC4_BLOCK):
        x = X[lo : lo + _NC4_BLOCK].astype(np.float64) - shift
        nearest = labels[np.argmin(mu_sq[None, :] - 2.0 * (x @ mu.T), axis=1)]
        count += int(np.count_nonzero(nearest != probe_pred[lo : lo + _NC4_BLOCK]))
    return count, n


def neural_collapse(
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    probe_coef: np.ndarray | None = None,
    probe_pred: np.ndarray | None = None,
    *,
    rtol: float | None = None,
) -> dict[str, float]:
    """One-shot neural-collapse metrics of a feature matrix.

    Args:
        X: Features, (n, d).
        y: Class indices in ``[0, num_classes)``, integer (n,).
        num_classes: Declared number of classes.
        probe_coef: Probe weights (num_classes, d); adds ``"nc3"``.
        probe_pred: Probe predictions on ``X``, integer (n,); adds ``"nc4"`` (a fraction).
        rtol: Eigenvalue cut-off of ``Sigma_B^+`` (see :func:`collapse_compute`).

    Returns:
        ``nc1``, ``nc2_norm``, ``nc2_angle`` and, when their inputs are given, ``nc3`` and ``nc4``.
    """
    stats = collapse_update(X, y, num_classes)
    out = collapse_compute(stats, probe_coef, rtol=rtol)
    if probe_pred is not None:
        if stats.n == 0:  # no samples, no class means: nothing to disagree about
            _check_labels("probe_pred", probe_pred, 0, stats.num_classes)
            out["nc4"] = float("nan")
        else:
            count, n = nc4_disagreement(X, stats.class_means(), probe_pred)
            out["nc4"] = count / n
    return out
