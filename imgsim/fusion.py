"""One calibrated same-scene probability from the embedding and SIFT evidence.

A logistic regression (scikit-learn) on standardised pair features

* ``distance``: Euclidean distance between the two embeddings,
* ``log_inliers``: ``log1p`` of the SIFT inliers after geometric verification,
* ``inlier_ratio``: inliers / ratio-test matches,

fitted on validation pairs and applied unchanged to test pairs. Logistic
regression is fitted by maximum likelihood, so its output is a probability
(checked by the calibration figures in the report).
"""

from dataclasses import dataclass

import numpy as np

from imgsim.config import DictConfig, check_range

FEATURES = ("distance", "log_inliers", "inlier_ratio")


def pair_features(distances, inliers, inlier_ratios):
    """Stack the fusion features of ``n`` pairs into an (n, 3) float64 array."""
    distances = np.asarray(distances, np.float64)
    inliers = np.asarray(inliers, np.float64)
    ratios = np.asarray(inlier_ratios, np.float64)
    if not (distances.shape == inliers.shape == ratios.shape) or distances.ndim != 1:
        raise ValueError("distances, inliers and inlier_ratios must be 1-D arrays of one length")
    if np.any(inliers < 0) or np.any((ratios < 0) | (ratios > 1)):
        raise ValueError("inliers must be >= 0 and inlier ratios in [0, 1]")
    return np.column_stack([distances, np.log1p(inliers), ratios])


@dataclass
class FusionConfig(DictConfig):
    """Regularisation strength ``C`` of the logistic regression (sklearn's convention)."""

    C: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_range("fusion C", self.C, 0, low_open=True)


class FusionModel:
    """Logistic regression on :data:`FEATURES`, with standardisation.

    Use :meth:`fit` on validation pairs, then :meth:`predict_proba` on any
    pairs. :meth:`to_dict` / :meth:`from_dict` store it as plain numbers.
    """

    def __init__(self, config=None):
        self.config = config or FusionConfig()
        self.mean = self.scale = self.coef = None
        self.intercept = 0.0

    def fit(self, features, labels):
        """Fit on an (n, 3) feature array and 0/1 labels (both classes needed)."""
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(features, np.float64)
        y = np.asarray(labels)
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(x) != len(y):
            raise ValueError(f"features must be (n, {len(FEATURES)}) with one label per row")
        if len(np.unique(y)) != 2:
            raise ValueError("fusion needs positive and negative pairs to fit")
        self.mean = x.mean(axis=0)
        self.scale = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        model = LogisticRegression(C=self.config.C).fit((x - self.mean) / self.scale, y)
        self.coef, self.intercept = model.coef_[0], float(model.intercept_[0])
        return self

    def decision_function(self, features):
        if self.coef is None:
            raise ValueError("FusionModel is not fitted")
        x = (np.asarray(features, np.float64) - self.mean) / self.scale
        return x @ self.coef + self.intercept

    def predict_proba(self, features):
        """Same-scene probability of each pair, shape (n,)."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(features)))

    def to_dict(self):
        return {"features": list(FEATURES), "C": self.config.C, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d):
        model = cls(FusionConfig(C=d["C"]))
        model.mean, model.scale = np.array(d["mean"]), np.array(d["scale"])
        model.coef, model.intercept = np.array(d["coef"]), float(d["intercept"])
        return model
