"""Fusion: the logistic combiner against a Newton-method fit written here, and its calibration."""

import numpy as np
import pytest

from imgsim.errors import ConfigError
from imgsim.fusion import FusionConfig, FusionModel, pair_features


def synthetic_pairs(n, seed):
    """Pairs whose same-scene probability follows a known logistic model of the features."""
    rng = np.random.default_rng(seed)
    distance = rng.uniform(0, 2, n)
    inliers = rng.poisson(rng.uniform(0, 40, n))
    ratio = rng.uniform(0, 1, n)
    x = pair_features(distance, inliers, ratio)
    true_logit = 2.0 - 3.0 * x[:, 0] + 0.8 * x[:, 1] + 0.5 * x[:, 2]
    p = 1 / (1 + np.exp(-true_logit))
    return x, (rng.uniform(size=n) < p).astype(int), p


def newton_logistic(z, y, C, iters=50):
    """L2-penalised logistic regression, sklearn's objective 0.5||w||^2 + C * sum(log-loss),
    intercept unpenalised; Newton's method."""
    a = np.column_stack([z, np.ones(len(z))])
    w = np.zeros(a.shape[1])
    penalty = np.diag([1.0] * z.shape[1] + [0.0])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-a @ w))
        grad = penalty @ w + C * a.T @ (p - y)
        hess = penalty + C * (a.T * (p * (1 - p))) @ a
        w -= np.linalg.solve(hess, grad)
    return w[:-1], w[-1]


def test_fit_equals_independent_newton_solution():
    x, y, _ = synthetic_pairs(400, 0)
    model = FusionModel(FusionConfig(C=0.7)).fit(x, y)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    coef, intercept = newton_logistic(z, y, C=0.7)
    np.testing.assert_allclose(model.coef, coef, atol=1e-3)
    assert model.intercept == pytest.approx(intercept, abs=1e-3)
    want = 1 / (1 + np.exp(-(z @ coef + intercept)))
    np.testing.assert_allclose(model.predict_proba(x), want, atol=1e-3)


def test_probabilities_are_calibrated_on_held_out_pairs():
    x, y, _ = synthetic_pairs(4000, 1)
    model = FusionModel().fit(x, y)
    x_test, _, p_true = synthetic_pairs(4000, 2)
    p = model.predict_proba(x_test)
    assert np.mean(np.abs(p - p_true)) < 0.03
    # Reliability: in each probability decile, the mean prediction is close to the true rate.
    bins = np.digitize(p, np.linspace(0, 1, 11)[1:-1])
    for b in np.unique(bins):
        assert abs(p[bins == b].mean() - p_true[bins == b].mean()) < 0.05


def test_round_trip_and_validation():
    x, y, _ = synthetic_pairs(200, 3)
    model = FusionModel().fit(x, y)
    again = FusionModel.from_dict(model.to_dict())
    np.testing.assert_array_equal(again.predict_proba(x), model.predict_proba(x))
    assert model.to_dict()["features"] == ["distance", "log_inliers", "inlier_ratio"]
    with pytest.raises(ValueError, match="needs positive and negative pairs"):
        FusionModel().fit(x, np.ones(len(x)))
    with pytest.raises(ValueError, match="is not fitted"):
        FusionModel().predict_proba(x)
    with pytest.raises(ConfigError, match="fusion C must be a finite number > 0, got 0"):
        FusionConfig(C=0)
    with pytest.raises(ValueError, match="inlier ratios in"):
        pair_features([0.1], [3], [1.5])
    np.testing.assert_allclose(pair_features([0.5], [np.e - 1], [0.25]), [[0.5, 1.0, 0.25]])
