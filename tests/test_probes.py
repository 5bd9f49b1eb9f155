"""RidgeProbe and fit_ridge_probe: parity with scikit-learn, streaming, alpha path, validation-only selection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from vitdepth._errors import VitdepthError
from vitdepth.metrics.probes import DEFAULT_ALPHAS, RidgeProbe, RidgeSolution, fit_ridge_probe, select_ridge_probe


def _features(n: int = 600, seed: int = 0, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=n, n_features=24, n_informative=10, n_classes=n_classes, n_clusters_per_class=1, random_state=seed
    )
    # ViT-like quirks: a constant feature and a feature with a large offset and scale.
    x = np.column_stack([x, np.full(n, 3.0), 500.0 + 40.0 * x[:, 0]])
    return x, y


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    return x + rng.normal(scale=2.0, size=x.shape), y  # noisy pixels; some pixels are constant 0 + noise


def _one_hot(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return (y[:, None] == classes[None, :]).astype(np.float64)


def _chunks(x: np.ndarray, y: np.ndarray, sizes: list[int]):
    start = 0
    for size in sizes:
        yield x[start : start + size], y[start : start + size]
        start += size
    assert start == len(y)


# --------------------------------------------------------------------------------------------
# Parity with scikit-learn.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [_features, _digits])
@pytest.mark.parametrize("alpha", [0.1, 10.0, 1000.0])
def test_matches_sklearn_ridge_on_standardized_features(data, alpha):
    x, y = data()
    probe = RidgeProbe(alpha=alpha).fit(x, y)
    scaler = StandardScaler().fit(x)
    np.testing.assert_allclose(probe.mean_, scaler.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(probe.scale_, scaler.scale_, rtol=1e-10)
    z = (x - probe.mean_) / probe.scale_

    ridge = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(z, _one_hot(y, probe.classes_))
    # The probe's weights live in the original space; map them back to the standardized space.
    coef_std = probe.coef_ * probe.scale_
    intercept_std = probe.intercept_ + probe.coef_ @ probe.mean_
    np.testing.assert_allclose(coef_std, ridge.coef_, rtol=1e-6, atol=1e-9 * np.abs(ridge.coef_).max())
    np.testing.assert_allclose(intercept_std, ridge.intercept_, rtol=1e-6, atol=1e-9)

    clf = RidgeClassifier(alpha=alpha).fit(z, y)
    agree = np.mean(clf.predict(z) == probe.predict(x))
    assert agree >= 0.99
    assert abs(clf.score(z, y) - probe.score(x, y)) <= 0.01
    # RidgeClassifier regresses on +-1 targets = 2 * one-hot - 1, so its scores are 2 s - 1.
    np.testing.assert_allclose(clf.decision_function(z), 2 * (x @ probe.coef_.T + probe.intercept_) - 1, atol=1e-6)


def test_binary_decision_function_equals_ridge_classifier():
    x, y = _features(n=300, n_classes=2)
    probe = RidgeProbe(alpha=3.0).fit(x, y)
    z = (x - probe.mean_) / probe.scale_
    clf = RidgeClassifier(alpha=3.0).fit(z, y)
    dec = probe.decision_function(x)
    assert dec.shape == (300,)
    np.testing.assert_allclose(dec, clf.decision_function(z), atol=1e-8)
    np.testing.assert_array_equal(probe.predict(x), probe.classes_[(dec > 0).astype(int)])
    assert probe.coef_.shape == (2, x.shape[1])  # class-wise weights kept for neural-collapse NC3


def test_multiclass_shapes_and_string_labels():
    x, y = _features()
    labels = np.array(["cat", "dog", "eel", "fox"])[y]
    probe = RidgeProbe().fit(x, labels)
    assert probe.classes_.tolist() == ["cat", "dog", "eel", "fox"]
    assert probe.decision_function(x).shape == (600, 4)
    assert probe.coef_.shape == (4, x.shape[1]) and probe.intercept_.shape == (4,)
    assert probe.n_samples_seen_ == 600 and probe.n_features_in_ == x.shape[1]
    assert set(probe.predict(x)) <= set(probe.classes_)
    assert probe.score(x, labels) > 0.7


def test_without_standardization_matches_ridge_on_raw_features():
    x, y = _features()
    probe = RidgeProbe(alpha=5.0, standardize=False).fit(x, y)
    np.testing.assert_array_equal(probe.scale_, np.ones(x.shape[1]))
    ridge = Ridge(alpha=5.0, solver="cholesky").fit(x, _one_hot(y, probe.classes_))
    np.testing.assert_allclose(probe.coef_, ridge.coef_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(probe.intercept_, ridge.intercept_, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Streaming and the alpha path.
# --------------------------------------------------------------------------------------------


def test_partial_fit_over_uneven_chunks_equals_fit():
    x, y = _features()
    full = RidgeProbe(alpha=2.0).fit(x, y)
    probe = RidgeProbe(alpha=2.0)
    for i, (xc, yc) in enumerate(_chunks(x, y, [101, 7, 492])):
        probe.partial_fit(xc, yc, classes=np.unique(y) if i == 0 else None)
    assert probe.n_samples_seen_ == 600
    np.testing.assert_allclose(probe.coef_, full.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(probe.intercept_, full.intercept_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(probe.mean_, full.mean_, rtol=1e-12)
    np.testing.assert_allclose(probe.scale_, full.scale_, rtol=1e-12)


def test_partial_fit_accepts_float16_and_equals_fit_on_the_same_values():
    x, y = _features()
    x16 = x.astype(np.float16)
    full = RidgeProbe(alpha=2.0).fit(x16.astype(np.float64), y)
    probe = RidgeProbe(alpha=2.0)
    for xc, yc in _chunks(x16, y, [300, 300]):
        probe.partial_fit(xc, yc, classes=np.arange(4))
    np.testing.assert_allclose(probe.coef_, full.coef_, rtol=1e-9, atol=1e-12)


def test_partial_fit_class_contract():
    x, y = _features()
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        RidgeProbe().partial_fit(x, y)
    probe = RidgeProbe().partial_fit(x[:50], y[:50], classes=[0, 1, 2, 3, 4])  # class 4 never seen: fine
    assert probe.classes_.tolist() == [0, 1, 2, 3, 4]
    assert 4 not in set(probe.predict(x))
    with pytest.raises(ValueError, match="not the same as on the first call"):
        probe.partial_fit(x[50:], y[50:], classes=[0, 1, 2])
    with pytest.raises(VitdepthError, match=r"labels \[7\] that are not in classes"):
        probe.partial_fit(x[:3], np.array([0, 7, 1]))
    with pytest.raises(ValueError, match="X has 25 features, but RidgeProbe is expecting 26 features"):
        probe.partial_fit(x[:5, :-1], y[:5])


def test_solve_path_equals_separate_fits():
    x, y = _digits()
    alphas = [1e-2, 1.0, 37.0, 1e4]
    probe = RidgeProbe(alpha=1.0).fit(x, y)
    path = probe.solve_path(alphas)
    assert len(path) == len(alphas)
    for alpha, (coef, intercept) in zip(alphas, path, strict=True):
        ref = RidgeProbe(alpha=alpha).fit(x, y)
        np.testing.assert_allclose(coef, ref.coef_, rtol=1e-7, atol=1e-10 * np.abs(ref.coef_).max())
        np.testing.assert_allclose(intercept, ref.intercept_, rtol=1e-7, atol=1e-8)
    # Different alphas give genuinely different solutions (the path is not constant).
    assert not np.allclose(path[0][0], path[-1][0])


# --------------------------------------------------------------------------------------------
# fit_ridge_probe: alpha chosen on validation only.
# --------------------------------------------------------------------------------------------


def _overfit_regime(seed: int = 0):
    """n_train < d, so a tiny alpha memorises the training set and a larger one generalises."""
    x, y = make_classification(
        n_samples=1200, n_features=150, n_informative=6, n_redundant=0, flip_y=0.05, class_sep=0.8,
        n_classes=3, random_state=seed,
    )  # fmt: skip
    return (x[:100], y[:100]), (x[100:600], y[100:600]), (x[600:], y[600:])


def test_fit_ridge_probe_picks_the_validation_argmax_not_the_test_one():
    (xtr, ytr), _, (xte, yte) = _overfit_regime()
    alphas = DEFAULT_ALPHAS
    # Validation = the training images themselves: it rewards memorisation (every alpha that still
    # interpolates scores 100%), whereas fresh test images prefer more shrinkage. A probe that
    # peeked at the test split would pick a different alpha.
    probe = fit_ridge_probe(_chunks(xtr, ytr, [40, 60]), _chunks(xtr, ytr, [100]), classes=[0, 1, 2], alphas=alphas)

    val_acc = np.array([RidgeProbe(alpha=a).fit(xtr, ytr).score(xtr, ytr) for a in alphas])
    test_acc = np.array([RidgeProbe(alpha=a).fit(xtr, ytr).score(xte, yte) for a in alphas])
    np.testing.assert_allclose([probe.val_scores_[float(a)] for a in alphas], val_acc, atol=1e-12)
    val_best = alphas[np.flatnonzero(val_acc == val_acc.max()).max()]  # ties -> larger alpha
    test_best = alphas[np.flatnonzero(test_acc == test_acc.max()).max()]
    assert probe.alpha_ == probe.alpha == val_best
    assert test_best != val_best  # the construction really separates the two choices
    assert test_acc.max() > test_acc[alphas == probe.alpha_][0]

    # The returned probe is a plain fit at the chosen alpha.
    ref = RidgeProbe(alpha=probe.alpha_).fit(xtr, ytr)
    np.testing.assert_allclose(probe.coef_, ref.coef_, rtol=1e-7, atol=1e-10 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(probe.intercept_, ref.intercept_, rtol=1e-7, atol=1e-9)


def test_fit_ridge_probe_depends_on_validation_data_and_not_on_test_data():
    (xtr, ytr), (xva, yva), (xte, yte) = _overfit_regime()

    def run():
        return fit_ridge_probe([(xtr, ytr)], [(xva[:250], yva[:250]), (xva[250:], yva[250:])], classes=[0, 1, 2])

    first = run()
    # Changing only the test split (here: shuffling and corrupting its labels) cannot move alpha_.
    rng = np.random.default_rng(0)
    xte, yte = xte[rng.permutation(len(yte))], rng.integers(0, 3, len(yte))
    assert run().alpha_ == first.alpha_
    # A fresh validation split prefers shrinkage, unlike validating on the training images.
    memorising = fit_ridge_probe([(xtr, ytr)], [(xtr, ytr)], classes=[0, 1, 2])
    assert first.alpha_ > memorising.alpha_


def test_fit_ridge_probe_ties_go_to_the_larger_alpha():
    # Well-separated classes: every alpha gets the same (perfect) validation accuracy.
    x, y = make_classification(n_samples=200, n_features=5, n_informative=2, n_redundant=0, class_sep=6.0,
                               flip_y=0.0, random_state=1)  # fmt: skip
    alphas = [0.01, 0.1, 1.0]
    probe = fit_ridge_probe([(x[:100], y[:100])], [(x[100:], y[100:])], classes=[0, 1], alphas=alphas)
    assert len(set(probe.val_scores_.values())) == 1
    assert probe.alpha_ == 1.0


def test_fit_ridge_probe_streams_from_a_float16_memmap(tmp_path):
    x, y = _digits()
    mm = np.lib.format.open_memmap(tmp_path / "feats.npy", mode="w+", dtype=np.float16, shape=x.shape)
    mm[:] = x
    mm.flush()
    feats = np.load(tmp_path / "feats.npy", mmap_mode="r")
    ntr = 1200

    def train():
        for s in range(0, ntr, 256):
            yield feats[s : min(s + 256, ntr)], y[s : min(s + 256, ntr)]

    def val():
        for s in range(ntr, len(y), 100):
            yield feats[s : s + 100], y[s : s + 100]

    probe = fit_ridge_probe(train(), val(), classes=np.arange(10))
    assert probe.n_samples_seen_ == ntr
    assert probe.alpha_ in set(DEFAULT_ALPHAS.tolist())
    x16 = np.asarray(feats, dtype=np.float64)
    ref = RidgeProbe(alpha=probe.alpha_).fit(x16[:ntr], y[:ntr])
    np.testing.assert_allclose(probe.coef_, ref.coef_, rtol=1e-7, atol=1e-10 * np.abs(ref.coef_).max())
    assert probe.val_scores_[probe.alpha_] == pytest.approx(ref.score(x16[ntr:], y[ntr:]))
    assert probe.val_scores_[probe.alpha_] > 0.8


def test_select_ridge_probe_is_fit_ridge_probe_without_the_estimator():
    (xtr, ytr), (xva, yva), (xte, _) = _overfit_regime()
    solution = select_ridge_probe(_chunks(xtr, ytr, [40, 60]), [(xva, yva)], classes=[0, 1, 2])
    probe = fit_ridge_probe(_chunks(xtr, ytr, [40, 60]), [(xva, yva)], classes=[0, 1, 2])
    assert isinstance(solution, RidgeSolution) and not isinstance(solution, RidgeProbe)
    assert solution.alpha == probe.alpha_ and solution.val_scores == probe.val_scores_
    assert solution.n_samples_seen == probe.n_samples_seen_ == 100
    for name in ("coef", "intercept", "mean", "scale", "classes"):
        np.testing.assert_array_equal(getattr(solution, name), getattr(probe, name + "_"))
    np.testing.assert_array_equal(solution.predict(xte), probe.predict(xte))
    # the estimator carries the statistics on: one more chunk equals a fit on everything at that alpha
    probe.partial_fit(xva, yva)
    ref = RidgeProbe(alpha=solution.alpha).fit(np.vstack([xtr, xva]), np.concatenate([ytr, yva]))
    np.testing.assert_allclose(probe.coef_, ref.coef_, rtol=1e-7, atol=1e-10 * np.abs(ref.coef_).max())


def test_select_ridge_probe_checks_its_chunks():
    x, y = _features()
    with pytest.raises(VitdepthError, match="2-D array"):
        select_ridge_probe([(x[:, 0], y)], [(x, y)], classes=[0, 1, 2, 3])
    with pytest.raises(VitdepthError, match="the training chunks had"):
        select_ridge_probe([(x, y)], [(x[:, :-1], y)], classes=[0, 1, 2, 3])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(VitdepthError, match="NaN or infinity"):
        select_ridge_probe([(bad, y)], [(x, y)], classes=[0, 1, 2, 3])
    with pytest.raises(VitdepthError, match="one label per row"):
        select_ridge_probe([(x, y[:-1])], [(x, y)], classes=[0, 1, 2, 3])


def test_fit_ridge_probe_errors():
    x, y = _features()
    with pytest.raises(VitdepthError, match="train_chunks yielded no data"):
        fit_ridge_probe([], [(x, y)], classes=[0, 1, 2, 3])
    with pytest.raises(VitdepthError, match="val_chunks yielded no data"):
        fit_ridge_probe([(x, y)], [], classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"'alphas' parameter of fit_ridge_probe must be a float in the range"):
        fit_ridge_probe([(x, y)], [(x, y)], classes=[0, 1, 2, 3], alphas=[1.0, 0.0])
    with pytest.raises(VitdepthError, match=r"labels \[9\] that are not in classes"):
        fit_ridge_probe([(x, y)], [(x, np.full(len(y), 9))], classes=[0, 1, 2, 3])


# --------------------------------------------------------------------------------------------
# scikit-learn contract.
# --------------------------------------------------------------------------------------------


def test_not_fitted_errors():
    x, _ = _features()
    probe = RidgeProbe()
    for method in (probe.predict, probe.decision_function):
        with pytest.raises(NotFittedError):
            method(x)
    with pytest.raises(NotFittedError):
        probe.solve_path([1.0])


@pytest.mark.parametrize("bad", [-1, 0, 0.0, float("inf"), "1", None, True])
def test_bad_alpha_message(bad):
    x, y = _features()
    with pytest.raises(ValueError) as info:
        RidgeProbe(alpha=bad).fit(x, y)
    assert str(info.value) == (
        f"The 'alpha' parameter of RidgeProbe must be a float in the range (0, inf). Got {bad!r} instead."
    )
    assert isinstance(info.value, VitdepthError)


def test_bad_alpha_message_exact_text():
    with pytest.raises(ValueError, match=r"^The 'alpha' parameter of RidgeProbe must be a float in the range "
                                         r"\(0, inf\)\. Got -1 instead\.$"):  # fmt: skip
        RidgeProbe(alpha=-1).fit(np.eye(3), [0, 1, 1])


def test_clone_and_refit_drop_learned_state():
    x, y = _features()
    probe = fit_ridge_probe([(x[:400], y[:400])], [(x[400:], y[400:])], classes=[0, 1, 2, 3])
    cloned = clone(probe)
    assert cloned.get_params() == {"alpha": probe.alpha_, "standardize": True}
    assert not hasattr(cloned, "coef_")
    probe.fit(x, y)  # a refit forgets fit_ridge_probe's selection attributes
    assert not hasattr(probe, "alpha_") and not hasattr(probe, "val_scores_")
    assert probe.n_samples_seen_ == 600


# All of scikit-learn's common estimator checks. Two are skipped by scikit-learn itself here:
# check_array_api_input (needs SCIPY_ARRAY_API=1 and an array-API library) and
# check_classifier_data_not_an_array's pandas branch (pandas is not a test dependency).
@parametrize_with_checks([RidgeProbe()])
def test_sklearn_common_checks(estimator, check):
    check(estimator)
