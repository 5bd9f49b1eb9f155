"""Multi-head softmax probes: parity with scikit-learn, validation-only selection, head independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vitdepth._errors import VitdepthError
from vitdepth.metrics.logistic import DEFAULT_WDS, LogisticProbes, fit_logistic_probes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The solver runs hundreds of small batched ops; on a loaded 2-core runner, two intra-op
    # threads made them 20-40x slower than one (OpenMP fork/join with a preempted thread).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digits_heads():
    """Noisy digit pixels as four heads with different scales, offsets, noise and a constant feature."""
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    x = x + rng.normal(scale=2.0, size=x.shape)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    const = x.copy()
    const[:, 5] = 7.0
    heads = [x, 3.0 * x + 100.0, x + rng.normal(scale=4.0, size=x.shape), const]
    return np.stack(heads), y, (slice(0, 1000), slice(1000, 1400), slice(1400, None))


def _classification_heads():
    x, y = make_classification(n_samples=1500, n_features=32, n_informative=12, n_classes=5, n_clusters_per_class=2,
                               flip_y=0.05, random_state=1)
    rng = np.random.default_rng(1)
    heads = [x, 10.0 * x - 50.0, x * rng.uniform(0.1, 20.0, size=32), x + rng.normal(scale=1.0, size=x.shape)]
    return np.stack(heads), y, (slice(0, 800), slice(800, 1100), slice(1100, None))


def _fit(xs, y, splits, **kw):
    tr, va, _ = splits
    return fit_logistic_probes(torch.tensor(xs[:, tr], dtype=torch.float32), torch.from_numpy(y[tr]),
                               torch.tensor(xs[:, va], dtype=torch.float32), torch.from_numpy(y[va]), **kw)


def _objective(z, y, coef, intercept, wd):
    """Mean cross-entropy + wd/2 ||W||^2 in float64 (the documented objective)."""
    logits = z @ coef.T + intercept
    logits = logits - logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits).sum(1))
    true = logits[np.arange(len(y)), np.searchsorted(np.unique(y), y)]
    return float(np.mean(lse - true) + 0.5 * wd * np.sum(coef**2))


@pytest.mark.parametrize("data", [_digits_heads, _classification_heads])
def test_matches_sklearn_logistic_regression_per_head(data):
    xs, y, (tr, va, te) = data()
    xs = xs.astype(np.float32).astype(np.float64)  # the values the probes train on
    probes = _fit(xs, y, (tr, va, te))
    n_train = len(y[tr])
    acc = probes.score(torch.tensor(xs[:, te], dtype=torch.float32), y[te])
    assert probes.coef_.shape == (len(xs), 5 if data is _classification_heads else 10, xs.shape[2])
    for h in range(len(xs)):
        scaler = StandardScaler().fit(xs[h, tr])
        np.testing.assert_allclose(probes.mean_[h], scaler.mean_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(probes.scale_[h], scaler.scale_, rtol=1e-9)
        wd = probes.weight_decay_[h]
        z = scaler.transform(xs[h])
        sk = LogisticRegression(C=1.0 / (wd * n_train), max_iter=5000).fit(z[tr], y[tr])
        assert abs(acc[h] - sk.score(z[te], y[te])) <= 0.02, (h, wd)
        # Same objective, same optimum: ours (standardised-space weights) is no worse than scikit-learn's.
        w_std = probes.coef_[h] * probes.scale_[h]
        b_std = probes.intercept_[h] + probes.coef_[h] @ probes.mean_[h]
        ours = _objective(z[tr], y[tr], w_std, b_std, wd)
        theirs = _objective(z[tr], y[tr], sk.coef_, sk.intercept_, wd)
        assert ours <= theirs + 1e-4 * abs(theirs), (h, ours, theirs)
        assert probes.converged_[h, list(probes.weight_decays_).index(wd)]
    # The coefficients live in the original feature space: predictions from coef_/intercept_ agree.
    raw = np.einsum("knd,kcd->knc", xs[:, te], probes.coef_) + probes.intercept_[:, None]
    assert np.mean(probes.classes_[raw.argmax(-1)] == probes.predict(torch.tensor(xs[:, te]))) > 0.995


def test_weight_decay_is_chosen_on_validation_accuracy():
    xs, y, splits = _digits_heads()
    tr, va, te = splits
    probes = _fit(xs, y, splits)
    wds = probes.weight_decays_
    np.testing.assert_array_equal(wds, DEFAULT_WDS)
    for h in range(len(xs)):
        scores = probes.val_scores_[h]
        tied = np.flatnonzero(scores == scores.max())
        assert probes.weight_decay_[h] == wds[tied].max()  # best accuracy, ties to the larger decay
        assert probes.val_accuracy_[h] == scores.max()
    # val_scores_ are the validation accuracies of each decay's fit: refit one decay at a time.
    x_val = torch.tensor(xs[:, va], dtype=torch.float32)
    for j, wd in enumerate(wds[::2]):
        single = _fit(xs, y, splits, weight_decays=[wd])
        np.testing.assert_allclose(single.score(x_val, y[va]), probes.val_scores_[:, 2 * j], atol=1.5 / 400)
    # Validating on the training split itself favours weak decays; the real validation split does not.
    on_train = _fit(xs, y, (tr, tr, te))
    np.testing.assert_array_equal(on_train.n_iter_, probes.n_iter_)  # the fits themselves see only train
    assert np.all(on_train.weight_decay_ <= probes.weight_decay_)
    assert np.any(on_train.weight_decay_ < probes.weight_decay_)


def test_heads_are_independent():
    xs, y, splits = _digits_heads()
    te = splits[2]
    full = _fit(xs, y, splits)
    alone = _fit(xs[[2]], y, splits)
    reordered = _fit(xs[[3, 2, 0]], y, splits)
    one_at_a_time = _fit(xs, y, splits, max_elements=1)  # forces one head per batch
    x_test = torch.tensor(xs[:, te], dtype=torch.float32)
    for other, heads in ((alone, [2]), (reordered, [3, 2, 0]), (one_at_a_time, [0, 1, 2, 3])):
        h = heads.index(2)
        assert other.weight_decay_[h] == full.weight_decay_[2]
        np.testing.assert_allclose(other.coef_[h], full.coef_[2], rtol=1e-3, atol=1e-4 * np.abs(full.coef_[2]).max())
        assert np.mean(other.predict(x_test[heads])[h] == full.predict(x_test)[2]) >= 0.995


def test_deterministic_and_seed_free():
    xs, y, splits = _classification_heads()
    a = _fit(xs, y, splits, seed=0)
    b = _fit(xs, y, splits, seed=0)
    c = _fit(xs, y, splits, seed=7)
    for other in (b, c):
        np.testing.assert_array_equal(other.coef_, a.coef_)
        np.testing.assert_array_equal(other.intercept_, a.intercept_)
        np.testing.assert_array_equal(other.weight_decay_, a.weight_decay_)


def test_inputs_numpy_fp16_and_label_values():
    xs, y, (tr, va, te) = _classification_heads()
    labels = np.array([3, 7, 9, 11, 20])[y]  # non-contiguous label values
    x16 = xs.astype(np.float16)
    probes = fit_logistic_probes(x16[:, tr], labels[tr], torch.from_numpy(x16[:, va]), torch.from_numpy(labels[va]))
    assert isinstance(probes, LogisticProbes)
    assert probes.classes_.tolist() == [3, 7, 9, 11, 20]
    pred = probes.predict(x16[:, te])
    assert pred.shape == (4, len(labels[te])) and set(np.unique(pred)) <= {3, 7, 9, 11, 20}
    assert np.all(probes.score(x16[:, te], labels[te]) > 0.35)  # chance is 0.2
    assert probes.decision_function(torch.from_numpy(x16[:, te])).shape == (4, len(labels[te]), 5)


def test_errors_name_the_problem():
    xs, y, (tr, va, _) = _classification_heads()
    x = torch.tensor(xs, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"The 'weight_decays' parameter of fit_logistic_probes must be a float"):
        fit_logistic_probes(x[:, tr], y[tr], x[:, va], y[va], weight_decays=[1e-3, 0.0])
    with pytest.raises(ValueError, match="'max_iter' parameter"):
        fit_logistic_probes(x[:, tr], y[tr], x[:, va], y[va], max_iter=0)
    with pytest.raises(VitdepthError, match=r"val_X must have shape \(4, n_val, 32\)"):
        fit_logistic_probes(x[:, tr], y[tr], x[:3, va], y[va])
    with pytest.raises(VitdepthError, match=r"train_y must have shape \(800,\)"):
        fit_logistic_probes(x[:, tr], y[:10], x[:, va], y[va])
    with pytest.raises(VitdepthError, match="at least two classes"):
        fit_logistic_probes(x[:, tr], np.zeros(800, dtype=int), x[:, va], y[va])
    with pytest.raises(VitdepthError, match=r"shape \(heads, samples, d\)"):
        fit_logistic_probes(x[0, tr], y[tr], x[:, va], y[va])
    probes = fit_logistic_probes(x[:, tr], y[tr], x[:, va], y[va], max_iter=5)
    with pytest.raises(VitdepthError, match=r"X must have shape \(heads, samples, d\) = \(4, n, 32\)"):
        probes.predict(x[:2, va])
