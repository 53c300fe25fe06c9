"""Every user mistake raises the right FisherkitError subclass with a message that says what is wrong."""

import math
import re
import warnings

import numpy as np
import pytest

import fisherkit as fk
from fisherkit.errors import FisherkitError, NonFiniteError, ShapeError, SupportError
from fisherkit.stats import families as F


@pytest.mark.parametrize(
    "family, data, match",
    [
        (F.Poisson(), [3, -1, 4], r"value -1.0 at index 1"),
        (F.Poisson(), [3, 1.5], r"value 1.5 at index 1"),
        (F.Bernoulli(), [0, 1, 2], r"value 2.0 at index 2.*\{0, 1\}"),
        (F.Binomial(10), [3, 12], r"value 12.0 at index 1.*exceed n=10"),
        (F.Geometric(), [1, 0], r"value 0.0 at index 1"),
        (F.Exponential(), [1.0, -2.0], r"value -2.0 at index 1"),
        (F.Beta(), [0.5, 1.0], r"value 1.0 at index 1"),
        (F.Categorical(3), [0, 3], r"value 3.0 at index 1"),
        (F.Multinomial(4, 3), [[1, 2, 1], [1, 1, 1]], r"index 1.*summing to n=4"),
    ],
    ids=lambda v: v.name if hasattr(v, "name") else None,
)
def test_data_outside_the_support(family, data, match):
    with pytest.raises(SupportError, match=match):
        fk.stats.fit(family, data)


def test_non_finite_and_empty_data():
    with pytest.raises(NonFiniteError, match="index 2"):
        fk.stats.fit(F.Normal(), [1.0, 2.0, np.nan])
    with pytest.raises(NonFiniteError, match="index 0"):
        fk.stats.fit(F.Poisson(), [np.inf])
    with pytest.raises(FisherkitError, match="empty"):
        fk.stats.fit(F.Poisson(), [])
    with pytest.raises(FisherkitError, match="numbers"):
        fk.stats.fit(F.Poisson(), ["a", "b"])
    with pytest.raises(ShapeError):
        fk.stats.fit(F.Poisson(), np.ones((3, 2)))
    with pytest.raises(ShapeError, match="shape"):
        fk.stats.fit(F.Multinomial(4, 3), [[1, 3]])


def test_bad_parameters_and_options():
    with pytest.raises(FisherkitError, match="outside"):
        F.Bernoulli().fisher_information(1.5)
    with pytest.raises(ShapeError, match="2 parameter"):
        F.Normal().fisher_information([1.0])
    with pytest.raises(NonFiniteError):
        F.Poisson().fisher_information(np.nan)
    with pytest.raises(FisherkitError, match="sum to more than 1"):
        F.Categorical(3).fisher_information([0.7, 0.6])
    with pytest.raises(FisherkitError, match="positive integer"):
        F.Binomial(0)
    with pytest.raises(FisherkitError, match="cov_type"):
        fk.stats.fit(F.Poisson(), [1, 2], cov_type="robust")
    with pytest.raises(FisherkitError, match="alpha"):
        fk.stats.fit(F.Poisson(), [1, 2]).conf_int(alpha=1.5)
    with pytest.raises(FisherkitError, match="method"):
        fk.stats.fit(F.Poisson(), [1, 2]).conf_int(method="score")


def test_degenerate_samples():
    with pytest.raises(FisherkitError, match="unbounded"):
        fk.stats.fit(F.Normal(), [2.0, 2.0, 2.0])  # σ̂ = 0
    with pytest.raises(FisherkitError, match="does not exist"):
        fk.stats.fit(F.Beta(), [0.3, 0.3, 0.3])  # a, b → ∞


def test_boundary_mle_is_reported_not_hidden():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fk.stats.fit(F.Bernoulli(), [1, 1, 1, 1])
    assert any("boundary" in str(w.message) and "diverges" in str(w.message) for w in caught)
    assert np.isnan(res.se).all() and np.isnan(res.cov).all()
    with pytest.raises(FisherkitError, match="profile"):
        res.conf_int(method="wald")
    lo, hi = res.conf_int(method="profile")[0]
    assert hi == 1.0 and 0 < lo < 1


def test_custom_family_mistakes():
    with pytest.raises(FisherkitError, match="bounds"):
        fk.stats.Family.from_logpdf(lambda x, a: x, ["a", "b"], bounds=[(0, 1)])
    with pytest.raises(FisherkitError, match="function"):
        fk.stats.Family.from_logpdf("not a function", ["a"])
    fam = fk.stats.Family.from_logpdf(lambda x, a: -(x - a) ** 2 / 2 - 0.5 * math.log(2 * math.pi), ["a"])
    with pytest.raises(FisherkitError, match="no sampler"):
        fam.sample([0.0], 10)


# ------------------------------------------------------------------------------ GLMs

def test_glm_shape_and_value_errors():
    X = np.random.default_rng(0).normal(size=(10, 2))
    y = np.r_[np.zeros(5), np.ones(5)]
    with pytest.raises(ShapeError, match="10 rows but y has 9"):
        fk.stats.LogisticRegression().fit(X, y[:9])
    with pytest.raises(FisherkitError, match="empty"):
        fk.stats.LogisticRegression().fit(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(SupportError, match=r"y\[3\] = 2"):
        fk.stats.LogisticRegression().fit(X, np.r_[0, 1, 0, 2, 1, 0, 1, 0, 1, 0])
    with pytest.raises(SupportError, match=r"y\[1\] = -1"):
        fk.stats.PoissonRegression().fit(X, np.r_[0, -1, 2, 3, 1, 0, 1, 0, 1, 0])
    Xn = X.copy()
    Xn[4, 1] = np.nan
    with pytest.raises(NonFiniteError, match="row 4, column x1"):
        fk.stats.LogisticRegression().fit(Xn, y)
    with pytest.raises(NonFiniteError, match="index 0"):
        fk.stats.PoissonRegression().fit(X, np.r_[np.inf, np.ones(9)])
    with pytest.raises(FisherkitError, match="not fitted"):
        fk.stats.LogisticRegression().bse


def test_rank_deficient_design_names_the_columns():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    X = np.column_stack([X, X[:, 0] - 2 * X[:, 2]])
    y = rng.binomial(1, 0.5, 30)
    with pytest.raises(FisherkitError, match=r"rank 4 < 5.*age, weight, bmi"):
        fk.stats.LogisticRegression(feature_names=["age", "height", "weight", "bmi"]).fit(X, y)
    with pytest.raises(FisherkitError, match=r"const, x0"):  # a constant column duplicates the intercept
        fk.stats.PoissonRegression().fit(np.column_stack([np.ones(30), X[:, 1]]), rng.poisson(2, 30))


def test_perfect_separation_is_detected_not_reported_as_infinite():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    with pytest.raises(fk.stats.SeparationError, match="complete.*dose") as err:
        fk.stats.LogisticRegression(feature_names=["dose"]).fit(x, [0, 0, 0, 1, 1, 1])
    assert "infinite" in str(err.value) and isinstance(err.value, FisherkitError)
    with pytest.raises(fk.stats.SeparationError, match="quasi-complete"):
        fk.stats.LogisticRegression().fit(np.array([1.0, 2, 3, 3, 4, 5]), [0, 0, 0, 1, 1, 1])
    with pytest.raises(fk.stats.SeparationError, match="every y is 1"):
        fk.stats.LogisticRegression().fit(x, np.ones(6))
    with pytest.raises(fk.stats.SeparationError, match="Poisson MLE does not exist"):
        fk.stats.PoissonRegression().fit(x, np.zeros(6))
    # not separated: overlapping classes fit normally
    m = fk.stats.LogisticRegression().fit(x, [0, 1, 0, 1, 0, 1])
    assert m.converged and np.isfinite(m.bse).all()


@pytest.mark.parametrize("bad", [0, -5, 2.5, float("nan"), float("inf"), True, "100", None])
def test_mc_samples_must_be_a_positive_integer_checked_before_any_work(bad):
    """Issue 18: mc_samples=0 was a bare ZeroDivisionError, -5 numpy's "negative dimensions", 2.5
    was accepted. Now a FisherkitError naming the option, raised before anything is sampled."""
    drawn = []
    fam = fk.stats.Family.from_logpdf(
        lambda x, mu: -0.5 * (x - mu) ** 2 - 0.5 * math.log(2 * math.pi), ["mu"],
        sampler=lambda t, n, rng: drawn.append(n) or rng.normal(t[0], 1.0, n))
    with pytest.raises(FisherkitError, match=r"mc_samples must be a positive integer.*got"):
        fk.stats.fisher_information(fam, [0.0], method="mc", mc_samples=bad)
    with pytest.raises(FisherkitError, match=r"mc_samples must be a positive integer"):
        fk.stats.fisher_information(F.Poisson(), [2.0], method="mc", mc_samples=bad)
    assert drawn == []


def test_mc_samples_accepts_integral_numbers():
    # 1e5 written as a float and numpy integers are whole numbers: accepted, same draws as the int
    a = fk.stats.fisher_information(F.Poisson(), [2.0], method="mc", mc_samples=1e4, seed=3)
    b = fk.stats.fisher_information(F.Poisson(), [2.0], method="mc", mc_samples=np.int64(10_000), seed=3)
    c = fk.stats.fisher_information(F.Poisson(), [2.0], method="mc", mc_samples=10_000, seed=3)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)
    assert c[0, 0] == pytest.approx(0.5, rel=0.05)  # 1/λ; MC sd of the estimate ≈ 1 % at 10,000 draws


def _collinear_design(eps, seed=0, n=100):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[:, 2] = X[:, 0] + eps * rng.normal(size=n)  # "bmi" ≈ "age"
    return X, rng.binomial(1, 0.5, n)


def _scaled_condition_number(X):
    Xc = np.column_stack([np.ones(len(X)), X])
    return np.linalg.cond(Xc / np.linalg.norm(Xc, axis=0))


@pytest.mark.parametrize("eps", [3e-8, 1e-9, 1e-12])
@pytest.mark.parametrize("model", [fk.stats.LogisticRegression, fk.stats.PoissonRegression])
def test_nearly_collinear_columns_are_named_with_the_condition_number(model, eps):
    """Issue 18: two columns equal up to 1e-9 gave "Fisher scoring failed (non-finite
    coefficients)"; at 1e-12 LogisticRegression raised a raw LinAlgError and PoissonRegression
    returned NaN standard errors. The error names collinearity, the columns and the condition
    number (checked against numpy's cond of the unit-norm design)."""
    X, y = _collinear_design(eps)
    kappa = _scaled_condition_number(X)
    with pytest.raises(fk.stats.CollinearityError, match=r"nearly collinear.*age, bmi") as err:
        model(feature_names=["age", "height", "bmi"]).fit(X, y)
    assert isinstance(err.value, FisherkitError)
    assert "height" not in str(err.value)
    assert "above 1/√ε" in str(err.value)  # refused up front (κ > 6.7e7), before any Fisher scoring
    reported = float(re.search(r"condition number ([0-9.e+]+)", str(err.value)).group(1))
    assert reported == pytest.approx(kappa, rel=0.01)


def test_mildly_collinear_columns_still_fit_like_statsmodels():
    """κ ≈ 2e3 is ill-conditioned but numerically fine: no error, statsmodels' Logit agrees."""
    import statsmodels.api as sm  # a test dependency: missing means failed, not skipped

    X, y = _collinear_design(1e-3, seed=1, n=400)
    assert 1e3 < _scaled_condition_number(X) < 1e4
    m = fk.stats.LogisticRegression().fit(X, y)
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0, method="newton", tol=1e-12, maxiter=200)
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-5)
    np.testing.assert_allclose(m.bse, ref.bse, rtol=1e-5)


@pytest.mark.parametrize("eps", [1e-9, 1e-12])
@pytest.mark.parametrize("model", [fk.stats.LogisticRegression, fk.stats.PoissonRegression])
def test_collinearity_is_named_even_when_only_the_fit_reveals_it(model, eps, monkeypatch):
    """With the up-front κ check switched off, the same designs fail inside Fisher scoring or end
    with an information matrix that is not positive definite: still a CollinearityError naming the
    columns (these are the paths that raised "Fisher scoring failed", LinAlgError or gave NaN SEs)."""
    from fisherkit.stats import glm

    monkeypatch.setattr(glm, "MAX_CONDITION", math.inf)
    X, y = _collinear_design(eps)
    with pytest.raises(fk.stats.CollinearityError, match=r"nearly collinear columns age, bmi"):
        model(feature_names=["age", "height", "bmi"]).fit(X, y)
