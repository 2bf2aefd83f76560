"""Linear evaluation on frozen features: the encoder in eval mode (BatchNorm statistics
frozen; the authors' linear evaluation left BN in train mode, defect 9), a logistic
regression on its pooled features, the regularisation chosen by patient-grouped
cross-validation on the training part only (never on the test part).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)


def fit_linear_probe(features: np.ndarray, labels: Sequence, groups: Sequence,
                     seed: int = 0, folds: int = 4) -> Pipeline:
    """Standardise + L2 logistic regression; C picked by log-loss under StratifiedGroupKFold over
    ``groups`` (patients) within the training data, then refitted on all of it."""
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(f"a linear probe needs images of at least 2 patients, got {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
    y = np.asarray(labels)
    # Folds whose training or validation side holds one class cannot score a C value.
    cv = [(tr, va) for tr, va in splitter.split(features, y, groups)
          if len(set(y[tr])) == 2 and len(set(y[va])) == 2]
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000,
                                                              random_state=seed))
    if not cv:
        log.warning("linear probe: too few patients per class to choose C by cross-validation; "
                    "using C=1")
        return pipe.fit(features, y)
    grid = {"logisticregression__C": np.logspace(-4, 1, 8).tolist()}
    search = GridSearchCV(pipe, grid, cv=cv, scoring="neg_log_loss", refit=True)
    return search.fit(features, y).best_estimator_


def fit_fixed_probe(features: np.ndarray, labels: Sequence, c: float = 1.0,
                    seed: int = 0) -> Pipeline:
    """Standardise + L2 logistic regression with a FIXED ``c`` (no selection).

    For a handful of training patients: with 11 of them (breakhis-dev at 100X) a
    patient-grouped inner CV picks C from noise. Scored by log-loss it chose C <= 1e-3 in
    every fold (a probe that predicts the class prior, 52 % PLA for ImageNet features where
    a fixed C gives 65 %); scored by accuracy it jumped between 1e-3 and 10 from fold to
    fold. Fixed C values from 0.01 to 1 gave the same accuracy to within 2 points.
    """
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        raise ValueError("a linear probe needs training images of two classes")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000,
                                                              random_state=seed))
    return pipe.fit(features, y)
