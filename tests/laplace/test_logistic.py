"""Consistency with the classical side: the Laplace posterior of a logistic regression with a
vanishing prior, at the MLE, has covariance (XᵀWX)⁻¹ — fisherkit.stats.LogisticRegression's and
statsmodels' ``cov_params()``.
"""

import numpy as np
import pytest
import torch

import fisherkit as fk
from fisherkit.laplace import Laplace


@pytest.mark.parametrize("structure", ["dense", "block"])  # exact structures for one layer (KFAC is not: E[g²aaᵀ] ≠ E[g²]E[aaᵀ])
def test_vanishing_prior_laplace_equals_glm_covariance(structure):
    sm = pytest.importorskip("statsmodels.api")
    split = fk.datasets.load("breast_cancer", seed=0, dtype=torch.float64)
    X, y = split.X_train[:, :5], split.y_train.double()
    glm = fk.stats.LogisticRegression().fit(X.numpy(), y.numpy())
    ref_sm = sm.Logit(y.numpy(), sm.add_constant(X.numpy())).fit(disp=0, tol=1e-12, maxiter=100)
    model = torch.nn.Linear(5, 1).double()
    with torch.no_grad():  # parameters in our order: weight (5), bias (1); GLM order: intercept, slopes
        model.weight.copy_(torch.as_tensor(glm.params[1:])[None])
        model.bias.copy_(torch.as_tensor(glm.params[:1]))
    la = Laplace(model, "bernoulli", structure=structure, prior_precision=1e-10).fit((X, y[:, None]))
    cov = torch.linalg.inv(la.precision_matrix()).numpy()
    order = [5, 0, 1, 2, 3, 4]  # ours → GLM order
    cov = cov[np.ix_(order, order)]
    np.testing.assert_allclose(cov, glm.cov_params(), rtol=1e-6)
    np.testing.assert_allclose(cov, ref_sm.cov_params(), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(la.posterior_variance().numpy()[order]), glm.bse, rtol=1e-6)
