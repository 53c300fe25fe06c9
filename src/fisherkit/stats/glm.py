"""Generalised linear models with a canonical link, fitted by Fisher scoring (IRLS).

For η = Xβ (+ offset), mean μ = g⁻¹(η) and variance function V(μ), the Fisher information of β is
I(β) = Xᵀ W X with W = diag(V(μ)) (canonical link: dμ/dη = V(μ)). Fisher scoring

    β ← β + I(β)⁻¹ Xᵀ(y − μ)   ⇔   β ← (XᵀWX)⁻¹ XᵀW z,  z = Xβ + (y − μ)/V(μ)

is iteratively reweighted least squares (IRLS); for a canonical link it coincides with Newton's
method. Covariances: ``"nonrobust"`` (XᵀWX)⁻¹ and ``"HC0"`` (XᵀWX)⁻¹ Xᵀdiag((y−μ)²)X (XᵀWX)⁻¹.

* ``LogisticRegression``: y ∈ {0, 1}, μ = σ(η), V = μ(1 − μ).
* ``PoissonRegression``: y ∈ {0, 1, 2, …}, μ = exp(η), V = μ.

A rank-deficient X raises before fitting (the dependent columns are named); so does a nearly
collinear one (``CollinearityError``, naming the columns and the condition number κ of X with
unit-norm columns) when κ > 1/√ε ≈ 6.7e7, where XᵀWX is singular in float64, or when the fit fails
or ends with an information matrix that is not positive definite. When the fit looks
degenerate (fitted means at the edge of their range, no convergence), a linear program decides
whether the MLE exists; perfect or quasi-perfect separation — a direction β along which the
likelihood keeps increasing — raises ``SeparationError`` instead of reporting infinite coefficients.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg, optimize, special, stats

from ..errors import FisherkitError, NonFiniteError, ShapeError, SupportError


class SeparationError(FisherkitError):
    """The MLE does not exist: some direction of β increases the likelihood without bound."""


class CollinearityError(FisherkitError):
    """Columns of X are nearly linearly dependent: the Fisher information XᵀWX is singular in float64."""


#: κ of the unit-norm design above which XᵀX (condition κ²) is singular to working precision
MAX_CONDITION = 1.0 / np.sqrt(np.finfo(float).eps)  # ≈ 6.7e7


def _collinearity(X: np.ndarray, names: list[str]) -> tuple[float, list[str]]:
    """Condition number κ of X with unit-norm columns, and the columns that carry the direction of
    its smallest singular value (the near-dependence)."""
    norms = np.linalg.norm(X, axis=0)
    norms[norms == 0] = 1.0
    _, s, vt = np.linalg.svd(X / norms, full_matrices=False)
    v = np.abs(vt[-1])
    involved = [n for n, w in zip(names, v) if w >= 0.1 * v.max()]
    return float(s[0] / s[-1]) if s[-1] > 0 else np.inf, involved


def _collinearity_error(kappa: float, involved: list[str], what: str) -> CollinearityError:
    return CollinearityError(
        f"nearly collinear columns {', '.join(involved)}: condition number {kappa:.3g} of the design "
        f"with unit-norm columns{what}; drop or combine one of them, or centre and rescale the columns"
    )


def _format_direction(beta: np.ndarray, names: list[str]) -> str:
    terms = [f"{b:+.3g}·{n}" for b, n in zip(beta, names) if abs(b) > 1e-7]
    return " ".join(terms) if terms else "0"


class _GLM:
    """Shared IRLS machinery; subclasses define the inverse link and variance."""

    kind = "glm"

    def __init__(self, fit_intercept: bool = True, cov_type: str = "nonrobust", max_iter: int = 100,
                 tol: float = 1e-12, feature_names=None):
        self.fit_intercept = fit_intercept
        self.cov_type = cov_type
        self.max_iter = max_iter
        self.tol = tol
        self.feature_names = feature_names

    # -- family specifics ---------------------------------------------------------------
    def _mean(self, eta):
        raise NotImplementedError

    def _loglik(self, y, eta, mu):
        raise NotImplementedError

    def _check_y(self, y):
        raise NotImplementedError

    def _check_existence(self, X, y, names):
        raise NotImplementedError

    # -- validation ---------------------------------------------------------------------
    def _prepare(self, X, y, offset):
        try:
            X = np.asarray(X, dtype=float)
            y = np.asarray(y, dtype=float)
        except (TypeError, ValueError) as e:
            raise FisherkitError(f"X and y must be numeric ({e})") from None
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise ShapeError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        y = y.ravel() if y.ndim == 2 and 1 in y.shape else y
        if y.ndim != 1:
            raise ShapeError(f"y must be 1-D, got shape {y.shape}")
        if len(X) != len(y):
            raise ShapeError(f"X has {len(X)} rows but y has {len(y)} entries; they must match")
        if len(y) == 0:
            raise FisherkitError("no observations (empty X and y)")
        names = list(self.feature_names) if self.feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
        if len(names) != X.shape[1]:
            raise ShapeError(f"{len(names)} feature_names for {X.shape[1]} columns of X")
        for arr, what in ((X, "X"), (y, "y")):
            bad = ~np.isfinite(arr)
            if bad.any():
                idx = np.argwhere(bad)[0]
                where = f"row {idx[0]}, column {names[idx[1]]}" if arr.ndim == 2 else f"index {idx[0]}"
                raise NonFiniteError(f"{what} has a non-finite value {arr[tuple(idx)]} at {where}")
        self._check_y(y)
        if offset is None:
            offset = np.zeros(len(y))
        else:
            offset = np.asarray(offset, dtype=float).ravel()
            if offset.shape != y.shape:
                raise ShapeError(f"offset has {offset.size} entries, y has {len(y)}")
            if not np.isfinite(offset).all():
                raise NonFiniteError("offset has a non-finite value")
        if self.fit_intercept:
            X = np.column_stack([np.ones(len(y)), X])
            names = ["const"] + names
        if X.shape[1] == 0:
            raise ShapeError("no columns to fit (X has no features and fit_intercept=False)")
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        tol = s.max() * max(X.shape) * np.finfo(float).eps
        if s.min() <= tol or X.shape[1] > X.shape[0]:
            null = vt[s <= tol] if X.shape[1] <= X.shape[0] else linalg.null_space(X).T
            involved = sorted({names[j] for v in null for j in np.flatnonzero(np.abs(v) > 1e-8)}, key=names.index)
            rank = int((s > tol).sum())
            raise FisherkitError(
                f"rank-deficient design matrix (rank {rank} < {X.shape[1]} columns): columns "
                f"{', '.join(involved)} are linearly dependent — drop or combine one of them"
            )
        kappa, involved = _collinearity(X, names)
        if kappa > MAX_CONDITION:
            raise _collinearity_error(
                kappa, involved, f" is above 1/√ε ≈ {MAX_CONDITION:.2g}, so the Fisher information XᵀWX "
                "is singular in float64 and no standard error would have a correct digit")
        return X, y, offset, names

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X, y, offset=None):
        """Fit by Fisher scoring; returns ``self``. ``offset`` is added to the linear predictor."""
        if self.cov_type not in ("nonrobust", "HC0"):
            raise FisherkitError(f"cov_type must be 'nonrobust' or 'HC0', got {self.cov_type!r}")
        X, y, offset, names = self._prepare(X, y, offset)
        try:
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                beta, mu, ll, it, converged = self._irls(X, y, offset)
        except np.linalg.LinAlgError:
            beta = None
        # the existence check (a linear program) runs only when the fit looks degenerate:
        # separation drives fitted means to the edge of their range and coefficients to ±∞
        if beta is None or not converged or not np.isfinite(beta).all() or self._degenerate(mu):
            self._check_existence(X, y, names)
        if beta is None or not np.isfinite(beta).all():
            kappa, involved = _collinearity(X, names)
            if kappa > 1e4:
                raise _collinearity_error(kappa, involved, " made Fisher scoring fail (non-finite coefficients)")
            raise FisherkitError(f"{type(self).__name__}: Fisher scoring failed (non-finite coefficients)")
        if not converged:
            warnings.warn(f"{type(self).__name__}: Fisher scoring did not converge in {self.max_iter} iterations",
                          RuntimeWarning, stacklevel=2)
        self.params = beta
        self.feature_names_ = names
        self.n_iter = it
        self.converged = converged
        self.loglik = float(ll)
        self.nobs = len(y)
        self._X, self._y, self._mu = X, y, mu
        w = self._variance(mu)
        info = X.T @ (w[:, None] * X)
        try:
            np.linalg.cholesky(info)
        except np.linalg.LinAlgError:
            kappa, involved = _collinearity(X, names)
            raise _collinearity_error(
                kappa, involved, ": the Fisher information XᵀWX at the fit is not positive definite in float64"
            ) from None
        self.fisher_information_ = info
        return self

    def _degenerate(self, mu) -> bool:
        raise NotImplementedError

    def _irls(self, X, y, offset):
        beta = np.linalg.lstsq(X, self._start_eta(y) - offset, rcond=None)[0]
        eta = X @ beta + offset
        mu = self._mean(eta)
        ll = self._loglik(y, eta, mu)
        converged = False
        for it in range(1, self.max_iter + 1):
            w = self._variance(mu)
            info = X.T @ (w[:, None] * X)
            step = np.linalg.solve(info, X.T @ (y - mu))
            for _ in range(30):  # step halving keeps the log-likelihood increasing
                new_beta = beta + step
                new_eta = X @ new_beta + offset
                new_mu = self._mean(new_eta)
                new_ll = self._loglik(y, new_eta, new_mu)
                if np.isfinite(new_ll) and new_ll >= ll - 1e-12 * abs(ll):
                    break
                step /= 2
            change = abs(new_ll - ll) / (abs(new_ll) + 0.1)
            beta, eta, mu, ll = new_beta, new_eta, new_mu, new_ll
            if change < self.tol and np.abs(step).max() < 1e-8 * (1 + np.abs(beta).max()):
                converged = True
                break
        return beta, mu, ll, it, converged

    def _start_eta(self, y):
        raise NotImplementedError

    # -- results -------------------------------------------------------------------------
    def _fitted(self):
        if not hasattr(self, "params"):
            raise FisherkitError(f"{type(self).__name__} is not fitted yet; call .fit(X, y) first")

    def cov_params(self, cov_type: str | None = None) -> np.ndarray:
        """Covariance of β̂: ``"nonrobust"`` (XᵀWX)⁻¹ or ``"HC0"`` (sandwich)."""
        self._fitted()
        cov_type = cov_type or self.cov_type
        bread = np.linalg.inv(self.fisher_information_)
        if cov_type == "nonrobust":
            return bread
        if cov_type == "HC0":
            r = self._y - self._mu
            meat = self._X.T @ ((r * r)[:, None] * self._X)
            return bread @ meat @ bread
        raise FisherkitError(f"cov_type must be 'nonrobust' or 'HC0', got {cov_type!r}")

    @property
    def bse(self) -> np.ndarray:
        """Standard errors √diag(cov_params()) under ``self.cov_type``."""
        return np.sqrt(np.diag(self.cov_params()))

    @property
    def coef_(self) -> np.ndarray:
        self._fitted()
        return self.params[1:] if self.fit_intercept else self.params

    @property
    def intercept_(self) -> float:
        self._fitted()
        return float(self.params[0]) if self.fit_intercept else 0.0

    def conf_int(self, alpha: float = 0.05, cov_type: str | None = None) -> np.ndarray:
        """(p, 2) Wald intervals β̂ ± z_{1−α/2}·se."""
        if not 0 < alpha < 1:
            raise FisherkitError(f"alpha must be in (0, 1), got {alpha}")
        se = np.sqrt(np.diag(self.cov_params(cov_type)))
        z = stats.norm.ppf(1 - alpha / 2)
        return np.column_stack([self.params - z * se, self.params + z * se])

    def predict(self, X, offset=None) -> np.ndarray:
        """Fitted mean μ = g⁻¹(Xβ̂ + offset) for new rows."""
        self._fitted()
        X = np.asarray(X, dtype=float)
        X = X[:, None] if X.ndim == 1 else X
        if self.fit_intercept:
            X = np.column_stack([np.ones(len(X)), X])
        if X.shape[1] != len(self.params):
            raise ShapeError(f"X has {X.shape[1]} columns (with intercept), the model has {len(self.params)}")
        return self._mean(X @ self.params + (0 if offset is None else np.asarray(offset, dtype=float)))

    def summary(self, alpha: float = 0.05) -> str:
        """Coefficient table: estimate, se, z, P>|z| and the Wald interval."""
        self._fitted()
        se = self.bse
        z = self.params / se
        pval = 2 * stats.norm.sf(np.abs(z))
        ci = self.conf_int(alpha)
        lines = [
            f"{type(self).__name__} (Fisher scoring)  n = {self.nobs}  log-likelihood = {self.loglik:.6g}  "
            f"converged = {self.converged} in {self.n_iter} iterations  cov_type = {self.cov_type}",
            f"{'':>10} {'coef':>11} {'std err':>11} {'z':>8} {'P>|z|':>8} {'[' + str(alpha / 2):>11} {str(1 - alpha / 2) + ']':>11}",
        ]
        for j, name in enumerate(self.feature_names_):
            lines.append(f"{name:>10} {self.params[j]:>11.5g} {se[j]:>11.5g} {z[j]:>8.3f} {pval[j]:>8.3g} "
                         f"{ci[j, 0]:>11.5g} {ci[j, 1]:>11.5g}")
        return "\n".join(lines)


class LogisticRegression(_GLM):
    """Logistic regression P(y = 1 | x) = σ(xᵀβ), fitted by Fisher scoring.

    >>> import numpy as np, fisherkit as fk
    >>> X = np.array([[0.], [1.], [2.], [3.], [4.], [5.]]); y = np.array([0, 0, 1, 0, 1, 1])
    >>> m = fk.stats.LogisticRegression().fit(X, y)
    >>> m.converged, m.params.shape
    (True, (2,))
    """

    def _mean(self, eta):
        return special.expit(eta)

    def _variance(self, mu):
        return mu * (1 - mu)

    def _loglik(self, y, eta, mu):
        return float(np.sum(y * eta - np.logaddexp(0, eta)))

    def _start_eta(self, y):
        return special.logit((y + 0.5) / 2)

    def _degenerate(self, mu):
        return bool(np.min(np.minimum(mu, 1 - mu)) < 1e-8)

    def _check_y(self, y):
        bad = (y != 0) & (y != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SupportError(f"y must be 0 or 1 for logistic regression; y[{i}] = {y[i]:g} "
                               f"({int(bad.sum())} such value(s))")

    def _check_existence(self, X, y, names):
        """LP of Konis (2007): max Σ s_i x_iᵀβ s.t. s_i x_iᵀβ ≥ 0, |β| ≤ 1, s = 2y − 1.
        A positive optimum is a direction of (quasi-)complete separation."""
        scale = np.abs(X).max(axis=0)
        scale[scale == 0] = 1
        A = (2 * y - 1)[:, None] * (X / scale)
        res = optimize.linprog(-A.sum(0), A_ub=-A, b_ub=np.zeros(len(y)), bounds=[(-1, 1)] * X.shape[1],
                               method="highs")
        if res.status == 0 and -res.fun > 1e-7 * len(y):
            beta = res.x
            # complete separation iff some β has every margin s_i x_iᵀβ ≥ t > 0 (max-margin LP)
            d = X.shape[1]
            mm = optimize.linprog(np.r_[np.zeros(d), -1.0], A_ub=np.column_stack([-A, np.ones(len(y))]),
                                  b_ub=np.zeros(len(y)), bounds=[(-1, 1)] * d + [(0, 1)], method="highs")
            complete = mm.status == 0 and -mm.fun > 1e-9
            if complete:
                beta = mm.x[:d]
            strict = len(y) if complete else int((A @ beta > 1e-9).sum())
            kind = "complete" if complete else "quasi-complete"
            direction = _format_direction(beta / scale / np.abs(beta / scale).max(), names)
            one_class = f" (every y is {int(y[0])})" if np.all(y == y[0]) else ""
            raise SeparationError(
                f"perfect separation ({kind}){one_class}: the direction {direction} perfectly predicts {strict} of "
                f"{len(y)} observations, so the log-likelihood increases without bound and the MLE does "
                "not exist (coefficients would be infinite); drop or merge the separating predictor(s), "
                "or use a penalised fit"
            )


class PoissonRegression(_GLM):
    """Poisson regression E[y | x] = exp(xᵀβ + offset), fitted by Fisher scoring."""

    def _mean(self, eta):
        return np.exp(eta)

    def _variance(self, mu):
        return mu

    def _loglik(self, y, eta, mu):
        return float(np.sum(y * eta - mu - special.gammaln(y + 1)))

    def _start_eta(self, y):
        return np.log((y + y.mean()) / 2 + 1e-3)

    def _degenerate(self, mu):
        return bool(np.min(mu) < 1e-8)

    def _check_y(self, y):
        bad = (y < 0) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SupportError(f"y must be non-negative integer counts for Poisson regression; y[{i}] = {y[i]:g} "
                               f"({int(bad.sum())} such value(s))")

    def _check_existence(self, X, y, names):
        """The MLE fails to exist iff some β ≠ 0 has x_iᵀβ ≤ 0 for all i, = 0 where y_i > 0 and < 0
        for some y_i = 0 (Haberman 1974); found by a linear program."""
        zero = y == 0
        if not zero.any():
            return
        scale = np.abs(X).max(axis=0)
        scale[scale == 0] = 1
        Xs = X / scale
        res = optimize.linprog(Xs[zero].sum(0), A_ub=Xs[zero], b_ub=np.zeros(zero.sum()),
                               A_eq=Xs[~zero] if (~zero).any() else None,
                               b_eq=np.zeros((~zero).sum()) if (~zero).any() else None,
                               bounds=[(-1, 1)] * X.shape[1], method="highs")
        if res.status == 0 and -res.fun > 1e-7 * len(y):
            direction = _format_direction(res.x / scale / np.abs(res.x / scale).max(), names)
            raise SeparationError(
                f"the Poisson MLE does not exist: along {direction} the fitted means of the zero counts "
                "go to 0 while the others stay fixed (e.g. all y = 0, or a predictor that is non-zero "
                "only where y = 0); coefficients would be infinite"
            )
