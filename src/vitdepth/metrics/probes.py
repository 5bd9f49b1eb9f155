"""Closed-form linear probes on pooled features (design §4, "Probes").

A linear probe measures how linearly decodable the class is from one layer's pooled tokens
(Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes",
arXiv 1610.01644), the per-layer accuracy curve of "Mechanisms of Non-Monotonic Scaling in
Vision Transformers" (arXiv 2511.21635).

The default probe is ridge regression on standardized features with one-hot targets, the
objective of scikit-learn's ``Ridge``/``RidgeClassifier`` with ``fit_intercept=True``::

    min_{W, b}  sum_i ||y_i - W^T z_i - b||^2 + alpha ||W||_F^2,   z_i = (x_i - mean) / scale

(the intercept is not penalised; ``alpha`` is in scikit-learn's units, i.e. *not* divided by the
number of samples). Everything is computed from float64 sufficient statistics (count, mean,
centred Gram, centred cross-moment with the one-hot targets, class counts), merged chunk by
chunk with the pairwise update of Chan, Golub & LeVeque (1979), so a split streams from an
fp16 memmap without being loaded. One eigendecomposition of the standardized Gram serves every
``alpha`` of a grid (design §4).

Deviation from a raw ``n, sum x, X^T X, X^T Y`` accumulator: the Gram is kept centred (Chan
merge) because pooled ViT features can have large constant offsets (massive activations), where
``X^T X - n mean mean^T`` cancels catastrophically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np

from vitdepth._errors import VitdepthError

if TYPE_CHECKING:
    from ._ridge_estimator import RidgeProbe

__all__ = [
    "DEFAULT_ALPHAS", "InvalidParameterError", "RidgeProbe", "RidgeSolution", "fit_ridge_probe", "select_ridge_probe",
]  # fmt: skip

#: Ridge penalties tried by :func:`select_ridge_probe`, in scikit-learn's units (the ``alpha`` of
#: ``Ridge``/``RidgeCV``, not scaled by the number of samples). With standardized features the
#: Gram's diagonal is ``n``, so ``alpha / n`` is the relative shrinkage: 1e-6..1e2 at n = 1,000
#: and 1e-8..1 at n = 100,000. Overfitting shrinks as n grows, so the absolute grid tracks the
#: useful range; ``val_scores_`` shows when the optimum sits at an end of the grid.
DEFAULT_ALPHAS = np.logspace(-3, 5, 17)


class InvalidParameterError(VitdepthError, ValueError, TypeError):
    """A probe hyper-parameter is out of its range (scikit-learn's ``InvalidParameterError`` contract)."""


class _ProbeInputError(VitdepthError, ValueError):
    """Labels or chunks handed to a probe do not fit the declared classes or each other."""


# --------------------------------------------------------------------------------------------
# Functional core: sufficient statistics and solves (style rule 9).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RidgeStats:
    """Additive sufficient statistics of (features, one-hot labels), all float64.

    Attributes:
        n: Number of samples.
        mean: Feature means, (d,).
        m2_sum: Centred Gram sum_i (x_i - mean)(x_i - mean)^T, (d, d).
        cross_sum: Centred cross-moment sum_i (x_i - mean) y_i^T with one-hot y, (d, C).
        class_counts: Samples per class, (C,).
    """

    n: int
    mean: np.ndarray
    m2_sum: np.ndarray
    cross_sum: np.ndarray
    class_counts: np.ndarray


def _ridge_update(x: np.ndarray, y_idx: np.ndarray, n_classes: int) -> _RidgeStats:
    """Statistics of one chunk; ``x`` is float64 (n, d), ``y_idx`` class indices in [0, n_classes)."""
    import scipy.sparse as sp  # on first use: importing this module stays cheap

    n = x.shape[0]
    mean = x.mean(axis=0)
    xc = x - mean
    # Sparse one-hot: per-class sums of centred rows in O(n d), whatever the number of classes.
    onehot = sp.csr_matrix((np.ones(n), (y_idx, np.arange(n))), shape=(n_classes, n))
    cross = np.asarray(onehot @ xc).T
    return _RidgeStats(
        n=n,
        mean=mean,
        m2_sum=xc.T @ xc,
        cross_sum=np.ascontiguousarray(cross),
        class_counts=np.bincount(y_idx, minlength=n_classes).astype(np.int64),
    )


def _ridge_merge(a: _RidgeStats | None, b: _RidgeStats) -> _RidgeStats:
    """Pool two statistics with the pairwise (Chan et al. 1979) update; ``a`` may be None."""
    if a is None:
        return b
    n = a.n + b.n
    delta = b.mean - a.mean
    w = a.n * b.n / n
    ybar_delta = b.class_counts / b.n - a.class_counts / a.n
    return _RidgeStats(
        n=n,
        mean=a.mean + delta * (b.n / n),
        m2_sum=a.m2_sum + b.m2_sum + w * np.outer(delta, delta),
        cross_sum=a.cross_sum + b.cross_sum + w * np.outer(delta, ybar_delta),
        class_counts=a.class_counts + b.class_counts,
    )


def _feature_scale(stats: _RidgeStats, standardize: bool) -> np.ndarray:
    """Population std per feature; 1 for (numerically) constant features or without standardization."""
    if not standardize:
        return np.ones_like(stats.mean)
    var = np.clip(np.diag(stats.m2_sum) / stats.n, 0.0, None)
    # Same test as sklearn's StandardScaler (_is_constant_feature): a variance within the
    # rounding error of the mean is a constant feature, whose noise must not be blown up to 1.
    eps = np.finfo(np.float64).eps
    constant = var <= stats.n * eps * var + (stats.n * stats.mean * eps) ** 2
    return np.where(constant, 1.0, np.sqrt(var))


def _standardized_system(stats: _RidgeStats, standardize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (scale, Gram of standardized centred features, their cross-moment with the targets)."""
    scale = _feature_scale(stats, standardize)
    gram = stats.m2_sum / np.outer(scale, scale)
    cross = stats.cross_sum / scale[:, None]
    return scale, gram, cross


def _to_original_space(stats: _RidgeStats, scale: np.ndarray, w_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold standardization into the weights: z = (x - mean)/scale, so W^T z + b = (W/scale)^T x + b'."""
    w = w_std / scale[:, None]
    intercept = stats.class_counts / stats.n - stats.mean @ w
    return np.ascontiguousarray(w.T), intercept


def _ridge_solve(stats: _RidgeStats, alpha: float, standardize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge solution at one alpha; returns (coef (C, d), intercept (C,), scale (d,))."""
    scale, gram, cross = _standardized_system(stats, standardize)
    gram[np.diag_indices_from(gram)] += alpha
    w_std = np.linalg.solve(gram, cross)
    coef, intercept = _to_original_space(stats, scale, w_std)
    return coef, intercept, scale


@dataclass(frozen=True)
class _RidgePath:
    """Eigendecomposition of the standardized Gram, G = V diag(lam) V^T, and Q = V^T cross."""

    scale: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    q: np.ndarray

    def weights_eig(self, alpha: float) -> np.ndarray:
        """Standardized-space weights in the eigenbasis, (G + alpha I)^-1 cross = V @ weights_eig."""
        return self.q / (self.eigvals + alpha)[:, None]


def _ridge_path(stats: _RidgeStats, standardize: bool) -> _RidgePath:
    scale, gram, cross = _standardized_system(stats, standardize)
    eigvals, eigvecs = np.linalg.eigh(gram)
    # The Gram is PSD; rounding can leave tiny negative eigenvalues that alpha might cancel.
    eigvals = np.clip(eigvals, 0.0, None)
    return _RidgePath(scale=scale, eigvals=eigvals, eigvecs=eigvecs, q=eigvecs.T @ cross)


# --------------------------------------------------------------------------------------------
# Validation helpers.
# --------------------------------------------------------------------------------------------


def _check_alpha(alpha: object, owner: str, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not (0.0 < float(alpha) < np.inf):
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be a float in the range (0, inf). Got {alpha!r} instead."
        )
    return float(alpha)


def _check_alphas(alphas: object, owner: str) -> np.ndarray:
    try:
        arr = None if isinstance(alphas, str) else np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.size == 0:
        raise InvalidParameterError(
            f"The 'alphas' parameter of {owner} must be a non-empty 1-D sequence of floats in the range (0, inf). "
            f"Got {alphas!r} instead."
        )
    for a in arr:
        _check_alpha(float(a), owner, "alphas")
    return arr


def _encode_labels(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Map labels to indices into the sorted ``classes``; a label outside ``classes`` is an error."""
    idx = np.searchsorted(classes, y)
    idx_clipped = np.clip(idx, 0, len(classes) - 1)
    bad = (idx >= len(classes)) | (classes[idx_clipped] != y)
    if np.any(bad):
        unknown = np.unique(np.asarray(y)[bad])[:5]
        raise _ProbeInputError(
            f"y contains labels {unknown.tolist()} that are not in classes {classes[:10].tolist()}"
            f"{' ...' if len(classes) > 10 else ''}; pass every label in `classes`."
        )
    return idx_clipped


# --------------------------------------------------------------------------------------------
# Streaming fit with validation-chosen alpha.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RidgeSolution:
    """A ridge probe chosen by validation, as plain arrays (what :func:`select_ridge_probe` returns).

    The analysis needs only the solution and ``predict``; keeping scikit-learn's estimator out of that path saves
    the second scikit-learn takes to import in every ``vitdepth analyze``. :func:`fit_ridge_probe` wraps the same
    solution in a :class:`RidgeProbe` for the scikit-learn API.

    Attributes:
        classes: Sorted class labels, (C,).
        coef: Weights in the original feature space, (C, d) (standardization folded in).
        intercept: Intercepts in the original feature space, (C,).
        mean: Training feature means, (d,).
        scale: Training feature population std (1 for constant features or without standardization), (d,).
        alpha: The chosen ridge penalty (scikit-learn units).
        val_scores: Validation accuracy per alpha tried.
        n_samples_seen: Number of training samples.
    """

    classes: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    alpha: float
    val_scores: dict
    n_samples_seen: int

    def predict(self, x) -> np.ndarray:
        """Arg-max class of the ridge scores (ties go to the first class), (n,); as ``RidgeProbe.predict``."""
        scores = _chunk_features(x, self.coef.shape[1], "predict") @ self.coef.T + self.intercept
        return self.classes[np.argmax(scores, axis=1)]


def _chunk_features(x, n_features: int | None, where: str) -> np.ndarray:
    """One chunk of features as float64 (n, d), checked as scikit-learn's ``validate_data`` would check it."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise _ProbeInputError(f"{where}: features must be a 2-D array (n_samples, n_features), got shape {x.shape}.")
    if n_features is not None and x.shape[1] != n_features:
        raise _ProbeInputError(f"{where}: a chunk has {x.shape[1]} features, the training chunks had {n_features}; "
                               "pass features of one layer and token set.")
    if not np.isfinite(x).all():
        raise _ProbeInputError(f"{where}: features contain NaN or infinity; drop or repair those rows first.")
    return x


def _chunk_labels(y, x: np.ndarray, where: str) -> np.ndarray:
    """One chunk's labels as a flat array, one per row of its features ``x``."""
    y = np.asarray(y).ravel()
    if len(y) != x.shape[0]:
        raise _ProbeInputError(f"{where}: a chunk has X of shape {x.shape} but y of shape {y.shape}; "
                               "pass one label per row.")
    return y


def _select_ridge(train_chunks, val_chunks, classes, alphas, standardize: bool,
                  owner: str) -> tuple[RidgeSolution, _RidgeStats]:
    """The work of :func:`select_ridge_probe`; also returns the training statistics (a ``RidgeProbe`` keeps them).

    ``owner`` is the public function named in errors.
    """
    alphas = _check_alphas(alphas, owner)
    classes = np.unique(np.asarray(classes))
    if classes.size == 0:
        raise _ProbeInputError(f"{owner} got no classes; pass every label that can appear in `classes`.")
    if not isinstance(standardize, (bool, np.bool_)):
        raise InvalidParameterError(f"The 'standardize' parameter of {owner} must be an instance of 'bool'. "
                                    f"Got {standardize!r} instead.")
    stats, n_features = None, None
    for X, y in train_chunks:
        X = _chunk_features(X, n_features, f"{owner}: train_chunks")
        n_features = X.shape[1]
        y_idx = _encode_labels(_chunk_labels(y, X, f"{owner}: train_chunks"), classes)
        stats = _ridge_merge(stats, _ridge_update(X, y_idx, len(classes)))
    if stats is None:
        raise _ProbeInputError(f"{owner}: train_chunks yielded no data; pass at least one (X, y) chunk.")

    path = _ridge_path(stats, bool(standardize))
    ybar = stats.class_counts / stats.n
    weights = [path.weights_eig(float(a)) for a in alphas]
    correct = np.zeros(len(alphas), dtype=np.int64)
    n_val = 0
    for X, y in val_chunks:
        X = _chunk_features(X, n_features, f"{owner}: val_chunks")
        y_idx = _encode_labels(_chunk_labels(y, X, f"{owner}: val_chunks"), classes)
        # Project once onto the eigenbasis; each alpha is then one (n, d) x (d, C) product.
        proj = ((X - stats.mean) / path.scale) @ path.eigvecs
        for k, w in enumerate(weights):
            correct[k] += int(np.count_nonzero(np.argmax(proj @ w + ybar, axis=1) == y_idx))
        n_val += X.shape[0]
    if n_val == 0:
        raise _ProbeInputError(f"{owner}: val_chunks yielded no data; pass at least one (X, y) chunk.")

    best_count = correct.max()
    # Ties go to the larger alpha: the most regularised of the equally accurate probes.
    best = int(np.flatnonzero(correct == best_count)[np.argmax(alphas[correct == best_count])])
    coef, intercept = _to_original_space(stats, path.scale, path.eigvecs @ weights[best])
    val_scores = {float(a): float(c) / n_val for a, c in zip(alphas, correct, strict=True)}
    solution = RidgeSolution(classes=classes, coef=coef, intercept=intercept, mean=stats.mean.copy(), scale=path.scale,
                             alpha=float(alphas[best]), val_scores=val_scores, n_samples_seen=int(stats.n))
    return solution, stats


def select_ridge_probe(
    train_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    val_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    classes,
    alphas=DEFAULT_ALPHAS,
    *,
    standardize: bool = True,
) -> RidgeSolution:
    """Fit a ridge probe, choosing alpha on a validation split, streaming both splits once.

    Train statistics are accumulated chunk by chunk (float64), the standardized Gram is
    eigendecomposed once, and every alpha is scored on the validation chunks only (accuracy;
    ties go to the larger alpha, the simpler model). The test split is never seen here.
    Needs no scikit-learn; :func:`fit_ridge_probe` is the same fit as a scikit-learn estimator.

    Args:
        train_chunks: Iterable of ``(X, y)`` chunks of the training split, X (n_i, d) of any
            float dtype (e.g. slices of an fp16 memmap), y (n_i,). Read once.
        val_chunks: Iterable of ``(X, y)`` chunks of the validation split. Read once.
        classes: Every label that can appear.
        alphas: Ridge penalties to try, scikit-learn units (see :data:`DEFAULT_ALPHAS`).
        standardize: Standardize features (training mean and std) before the ridge.

    Returns:
        The :class:`RidgeSolution` at the chosen alpha, with the validation accuracy of every alpha.

    Raises:
        InvalidParameterError: A bad alpha.
        VitdepthError: An empty split, a label outside ``classes``, or features that are not a finite
            2-D array of one width.
    """
    return _select_ridge(train_chunks, val_chunks, classes, alphas, standardize, "select_ridge_probe")[0]


def fit_ridge_probe(
    train_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    val_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    classes,
    alphas=DEFAULT_ALPHAS,
    *,
    standardize: bool = True,
) -> RidgeProbe:
    """:func:`select_ridge_probe` as a scikit-learn estimator (same arguments, same fit).

    Returns:
        A :class:`RidgeProbe` fitted at the chosen alpha (its ``alpha`` parameter is set to it),
        with ``alpha_`` and ``val_scores_`` (dict alpha -> validation accuracy); ``partial_fit``
        continues from the training statistics.
    """
    from ._ridge_estimator import RidgeProbe  # scikit-learn loads here, not on import

    solution, stats = _select_ridge(train_chunks, val_chunks, classes, alphas, standardize, "fit_ridge_probe")
    return RidgeProbe._from_solution(solution, stats, standardize)


def __getattr__(name: str):
    # RidgeProbe subclasses scikit-learn's BaseEstimator: it (and scikit-learn) load on first use (PEP 562).
    if name == "RidgeProbe":
        from ._ridge_estimator import RidgeProbe

        return RidgeProbe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
