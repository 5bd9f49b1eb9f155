"""The scikit-learn estimator of :mod:`vitdepth.metrics.probes`: :class:`RidgeProbe`.

It lives apart so that ``import vitdepth.metrics.probes`` (the functional core, :func:`fit_ridge_probe` and the
validation helpers other metrics share) does not load scikit-learn; ``vitdepth.metrics.probes.RidgeProbe`` loads
this module on first use, and that is the name to import.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .probes import (
    InvalidParameterError,
    _check_alpha,
    _check_alphas,
    _encode_labels,
    _ProbeInputError,
    _ridge_merge,
    _ridge_path,
    _ridge_solve,
    _ridge_update,
    _to_original_space,
)

try:
    from sklearn.utils.validation import validate_data as sk_validate_data
except ImportError:  # scikit-learn < 1.6 has it as a private method instead

    def sk_validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)


__all__ = ["RidgeProbe"]


# Everything fit() may leave behind; a refit drops them all so no attribute of an earlier fit
# (e.g. fit_ridge_probe's alpha_) survives next to the new solution.
_LEARNED_ATTRIBUTES = (
    "classes_",
    "coef_",
    "intercept_",
    "n_samples_seen_",
    "mean_",
    "scale_",
    "alpha_",
    "val_scores_",
    "n_features_in_",
    "feature_names_in_",
    "_stats",
)


class RidgeProbe(ClassifierMixin, BaseEstimator):
    """Closed-form ridge classifier on standardized features with one-hot targets.

    Equivalent to scikit-learn's ``Ridge(alpha, fit_intercept=True)`` fitted on
    ``StandardScaler().fit_transform(X)`` with one-hot targets, predicting the arg-max class
    (so predictions equal ``RidgeClassifier``'s, whose ±1 targets are an affine map of ours).
    The estimator follows the scikit-learn contract: the constructor only stores parameters,
    learned attributes end in ``_``, ``partial_fit`` streams, and use before fitting raises
    ``NotFittedError``.

    Args:
        alpha: Ridge penalty in scikit-learn's units (not divided by the number of samples).
        standardize: Standardize features with the training mean and population std first.
            Without it features are only centred (the intercept is still unpenalised).

    Attributes:
        classes_: Sorted class labels, (C,).
        coef_: Weights in the original feature space, (C, d) (standardization folded in).
        intercept_: Intercepts in the original feature space, (C,).
        n_samples_seen_: Number of training samples accumulated.
        mean_: Training feature means, (d,).
        scale_: Training feature population std, 1 for constant features (all ones when
            ``standardize=False``), (d,).
        n_features_in_: Number of features d.
        alpha_: Only on probes returned by :func:`fit_ridge_probe`: the chosen alpha.
        val_scores_: Only on probes returned by :func:`fit_ridge_probe`: validation accuracy per alpha.

    Examples:
        >>> import numpy as np
        >>> from vitdepth.metrics.probes import RidgeProbe
        >>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]])
        >>> y = np.array([0, 1, 0, 1])
        >>> RidgeProbe(alpha=1.0).fit(X, y).predict(X).tolist()
        [0, 1, 0, 1]
    """

    def __init__(self, alpha: float = 1.0, standardize: bool = True):
        self.alpha = alpha
        self.standardize = standardize

    # -- parameters and input ---------------------------------------------------------------

    def _validate_params(self) -> None:
        _check_alpha(self.alpha, type(self).__name__)
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise InvalidParameterError(
                f"The 'standardize' parameter of {type(self).__name__} must be an instance of 'bool'. "
                f"Got {self.standardize!r} instead."
            )

    def _reset(self) -> None:
        for attr in _LEARNED_ATTRIBUTES:
            self.__dict__.pop(attr, None)

    def _accumulate(self, X, y, classes=None) -> None:
        """Validate one chunk and add its statistics; sets ``classes_`` on the first call."""
        first = not hasattr(self, "_stats")
        X, y = sk_validate_data(self, X, y, reset=first, dtype=np.float64)
        check_classification_targets(y)
        if classes is not None:
            classes = np.unique(np.asarray(classes))
            if hasattr(self, "classes_") and not np.array_equal(classes, self.classes_):
                raise _ProbeInputError(
                    f"`classes`={classes.tolist()} is not the same as on the first call to partial_fit "
                    f"({self.classes_.tolist()}); pass the same classes every time or omit them."
                )
            self.classes_ = classes
        elif not hasattr(self, "classes_"):
            raise _ProbeInputError("classes must be passed on the first call to partial_fit.")
        y_idx = _encode_labels(y, self.classes_)
        self._stats = _ridge_merge(getattr(self, "_stats", None), _ridge_update(X, y_idx, len(self.classes_)))

    def _set_solution(self, coef: np.ndarray, intercept: np.ndarray, scale: np.ndarray) -> None:
        self.coef_ = coef
        self.intercept_ = intercept
        self.scale_ = scale
        self.mean_ = self._stats.mean.copy()
        self.n_samples_seen_ = int(self._stats.n)

    @classmethod
    def _from_solution(cls, solution, stats, standardize: bool) -> RidgeProbe:
        """The estimator :func:`~vitdepth.metrics.probes.fit_ridge_probe` returns, around a ``RidgeSolution``."""
        probe = cls(alpha=solution.alpha, standardize=standardize)
        probe._validate_params()
        probe.classes_ = solution.classes
        probe.n_features_in_ = solution.coef.shape[1]
        probe._stats = stats
        probe._set_solution(solution.coef, solution.intercept, solution.scale)
        probe.alpha_ = solution.alpha
        probe.val_scores_ = dict(solution.val_scores)
        return probe

    def _solve(self) -> None:
        coef, intercept, scale = _ridge_solve(self._stats, float(self.alpha), bool(self.standardize))
        self._set_solution(coef, intercept, scale)

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X, y) -> RidgeProbe:
        """Fit on all of ``X`` (n, d) and labels ``y`` (n,); the classes are ``np.unique(y)``."""
        self._validate_params()
        self._reset()
        X, y = sk_validate_data(self, X, y, reset=True, dtype=np.float64)
        check_classification_targets(y)
        self._accumulate(X, y, classes=np.unique(y))
        self._solve()
        return self

    def partial_fit(self, X, y, classes=None) -> RidgeProbe:
        """Add one chunk to the sufficient statistics and re-solve at ``alpha``.

        Args:
            X: Features (n, d); any float dtype (float16 memmaps included), converted to float64.
            y: Labels (n,), each in ``classes``.
            classes: All labels that can ever appear; required on the first call (as in
                scikit-learn's ``SGDClassifier.partial_fit``), optional afterwards.

        Returns:
            self
        """
        self._validate_params()
        self._accumulate(X, y, classes=classes)
        self._solve()
        return self

    def solve_path(self, alphas) -> list[tuple[np.ndarray, np.ndarray]]:
        """Solutions for every alpha from one eigendecomposition of the standardized Gram.

        Reuses the accumulated statistics, so the data is not read again. Each solution equals
        ``fit`` at that alpha up to rounding.

        Args:
            alphas: Ridge penalties (scikit-learn units), each > 0.

        Returns:
            ``[(coef (C, d), intercept (C,)), ...]`` in the order of ``alphas``, in the original
            feature space.
        """
        check_is_fitted(self)
        alphas = _check_alphas(alphas, f"{type(self).__name__}.solve_path")
        path = _ridge_path(self._stats, bool(self.standardize))
        out = []
        for a in alphas:
            w_std = path.eigvecs @ path.weights_eig(float(a))
            out.append(_to_original_space(self._stats, path.scale, w_std))
        return out

    # -- prediction -------------------------------------------------------------------------

    def decision_function(self, X) -> np.ndarray:
        """Ridge scores per class, (n, C); for two classes, score(classes_[1]) - score(classes_[0]), (n,).

        The binary form follows scikit-learn's classifier contract (positive means ``classes_[1]``)
        and equals ``RidgeClassifier.decision_function``.
        """
        check_is_fitted(self)
        X = sk_validate_data(self, X, reset=False, dtype=np.float64)
        scores = X @ self.coef_.T + self.intercept_
        if scores.shape[1] == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict(self, X) -> np.ndarray:
        """Arg-max class of the ridge scores (ties go to the first class), (n,)."""
        check_is_fitted(self)
        X = sk_validate_data(self, X, reset=False, dtype=np.float64)
        scores = X @ self.coef_.T + self.intercept_
        return self.classes_[np.argmax(scores, axis=1)]
