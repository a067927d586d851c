"""Unit-clustered inference from per-unit moments: the estimates, intervals, always-valid
tests and sample sizes behind the A/B decision (services/experiments/decision.py).

A metric is a ratio of per-unit sums: CTR = sum_u c_u / sum_u n_u (clicks over items shown),
served log loss = sum_u loss_u / sum_u n_u. Its estimate is the item-level OLS of the value
on arm indicators (plus, for CUPED, the unit's pre-experiment covariate x_u), with standard
errors clustered by unit: statsmodels' `OLS(...).fit(cov_type="cluster")` on the expanded
rows. Every item of a unit shares its regressors, so the fit depends on the data only through
per-arm sums over units of products of n_u, c_u and powers of x_u: the MOMENTS below, which
the database computes (services/experiments/aggregates.py) and the simulations compute
with numpy. Nothing here ever sees a row.

    m = moments_of(n, c, x)                      # float[..., M] per arm (or SQL)
    fit = fit_arms(m0, m1, covariate=True)       # arm means at the pooled mean of x, cov
    est, var = contrast(fit, higher_is_better=True, tolerance=0.01)
    lower, upper, p_pass, p_fail = anytime_bounds(est[looks], var[looks], tau, alpha)

CUPED (Deng et al., WSDM 2013) is the covariate column: theta is the pooled within-arm slope
of the item value on x, and the arm means are compared at the same x, so the difference keeps
its expectation while the part of its variance that x explains is gone. The variance
reduction is 1 - var(with x) / var(without x) of the same contrast.

Why not statsmodels directly: it needs the rows (10M outcomes do not fit a report), and it has
no one-sided mixture SPRT; scipy's root finders are scalar, so the boundary is bisected here
over arrays. Leading dimensions broadcast everywhere (arms x looks, or runs x looks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

# Per-arm sums over units (x: the unit's covariate, the same for all its items).
MOMENTS = ("units", "n", "c", "nx", "nx2", "cx", "cc", "ccx", "ccx2", "cn", "cnx", "cnx2",
           "cnx3", "nn", "nnx", "nnx2", "nnx3", "nnx4")
M = {name: i for i, name in enumerate(MOMENTS)}


def moments_of(n: np.ndarray, c: np.ndarray, x: np.ndarray | None = None,
               axis: int = -1) -> np.ndarray:
    """Sums over the unit axis: n float[..., G] items per unit, c float[..., G] value sums,
    x float[..., G] covariate (None: 0) -> float[..., len(MOMENTS)]."""
    n, c = np.asarray(n, np.float64), np.asarray(c, np.float64)
    x = np.zeros_like(n) if x is None else np.asarray(x, np.float64)
    present = (n > 0).astype(np.float64)
    cols = [present, n, c, n * x, n * x**2, c * x, c * c, c * c * x, c * c * x**2, c * n,
            c * n * x, c * n * x**2, c * n * x**3, n * n, n * n * x, n * n * x**2,
            n * n * x**3, n * n * x**4]
    return np.stack([col.sum(axis=axis) for col in cols], axis=-1)


@dataclass
class ArmFit:
    """Two arms (0 = control, 1 = treatment) at one or more looks: a float[..., 2] arm means
    (at the pooled item-weighted mean of x), cov float[..., 2, 2], units float[...] in both."""

    means: np.ndarray
    cov: np.ndarray
    units: np.ndarray
    items: np.ndarray


def fit_arms(m0: np.ndarray, m1: np.ndarray, covariate: bool = False) -> ArmFit:
    """Item-level OLS of the value on [control, treatment (, x)] with cluster-robust
    covariance by unit, statsmodels' small-sample correction G/(G-1) (N-1)/(N-k) included,
    from each arm's MOMENTS float[..., M]. Looks with fewer than 2 units per arm or no
    spread in x get NaN."""
    m0, m1 = np.asarray(m0, np.float64), np.asarray(m1, np.float64)
    k = 3 if covariate else 2
    shape = np.broadcast_shapes(m0.shape, m1.shape)[:-1]
    arms = (np.broadcast_to(m0, shape + (len(MOMENTS),)),
            np.broadcast_to(m1, shape + (len(MOMENTS),)))
    g = sum(a[..., M["units"]] for a in arms)
    nobs = sum(a[..., M["n"]] for a in arms)
    ok = (arms[0][..., M["units"]] >= 2) & (arms[1][..., M["units"]] >= 2)
    # bread: sum n z z', X'y: sum c z, with z = [D0, D1, x]
    bread = np.zeros(shape + (k, k))
    xty = np.zeros(shape + (k,))
    for j, a in enumerate(arms):
        bread[..., j, j] = a[..., M["n"]]
        xty[..., j] = a[..., M["c"]]
        if covariate:
            bread[..., j, 2] = bread[..., 2, j] = a[..., M["nx"]]
            bread[..., 2, 2] += a[..., M["nx2"]]
            xty[..., 2] += a[..., M["cx"]]
    if covariate:  # a covariate without spread cannot be fitted: leave those looks out
        det = np.linalg.det(np.where(ok[..., None, None], bread, np.eye(k)))
        ok &= np.abs(det) > 1e-9 * np.prod(np.diagonal(bread, axis1=-2, axis2=-1), axis=-1)
    bread = np.where(ok[..., None, None], bread, np.eye(k))
    inv = np.linalg.inv(bread)
    beta = np.einsum("...ij,...j->...i", inv, xty)
    theta = beta[..., 2] if covariate else np.zeros(shape)
    # meat: sum_u e_u^2 z z' with e_u = c_u - n_u (b_arm + theta x_u), expanded in moments
    meat = np.zeros(shape + (k, k))
    for j, a in enumerate(arms):
        b = beta[..., j]

        def e2(p: int, a: np.ndarray = a, b: np.ndarray = b) -> np.ndarray:
            """sum_u e_u^2 x_u^p over the arm's units (p = 0, 1, 2)."""
            sfx = ["", "x", "x2", "x3", "x4"]
            cc = a[..., M["cc" + sfx[p]]]
            cn = a[..., M["cn" + sfx[p]]] * b + a[..., M["cn" + sfx[p + 1]]] * theta
            nn = (a[..., M["nn" + sfx[p]]] * b * b + 2 * b * theta * a[..., M["nn" + sfx[p + 1]]]
                  + theta * theta * a[..., M["nn" + sfx[p + 2]]])
            return cc - 2 * cn + nn

        meat[..., j, j] = e2(0)
        if covariate:
            meat[..., j, 2] = meat[..., 2, j] = e2(1)
            meat[..., 2, 2] += e2(2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = g / (g - 1) * (nobs - 1) / (nobs - k)
    cov = scale[..., None, None] * np.einsum("...ij,...jk,...kl->...il", inv, meat, inv)
    # arm means at the pooled mean of x: b_arm + theta * xbar (a linear map of beta)
    xbar = np.divide(sum(a[..., M["nx"]] for a in arms), nobs, out=np.zeros(shape),
                     where=nobs > 0) if covariate else np.zeros(shape)
    lin = np.zeros(shape + (2, k))
    lin[..., 0, 0] = lin[..., 1, 1] = 1.0
    if covariate:
        lin[..., 0, 2] = lin[..., 1, 2] = xbar
    means = np.einsum("...ij,...j->...i", lin, beta)
    cov2 = np.einsum("...ij,...jk,...lk->...il", lin, cov, lin)
    means = np.where(ok[..., None], means, np.nan)
    cov2 = np.where(ok[..., None, None], cov2, np.nan)
    return ArmFit(means, cov2, g, nobs)


def contrast_weights(higher_is_better: bool, tolerance: float) -> tuple[float, float]:
    """(w0, w1) of the contrast est = w0 * control + w1 * treatment that is > 0 exactly when
    the treatment is acceptable: higher is better: treatment >= (1 - tolerance) control;
    lower is better: treatment <= (1 + tolerance) control. tolerance > 0 is a
    non-inferiority margin (relative), < 0 a required relative improvement, 0 superiority."""
    if higher_is_better:
        return -(1.0 - tolerance), 1.0
    return 1.0 + tolerance, -1.0


def contrast(fit: ArmFit, higher_is_better: bool,
             tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, variance) float[...] of the contrast of `contrast_weights`."""
    w = np.array(contrast_weights(higher_is_better, tolerance))
    est = fit.means @ w
    var = np.einsum("i,...ij,j->...", w, fit.cov, w)
    return est, var


def one_sided_log_lr(d: np.ndarray, var: np.ndarray, tau: float | np.ndarray) -> np.ndarray:
    """log of the one-sided mixture likelihood ratio of an estimate d ~ N(theta, var) for
    theta > 0 against theta = 0, mixing over a half-normal(tau) prior on theta:

        Lambda = 2 / (tau sqrt(A)) exp(B^2 / 2A) Phi(B / sqrt(A)),  A = 1/tau^2 + 1/var,
        B = d / var.

    Lambda is a nonnegative martingale under theta = 0 and a supermartingale under every
    theta < 0, so by Ville's inequality P(sup_t Lambda_t >= 1/alpha) <= alpha for the whole
    composite null theta <= 0: the test may be read at every look. Increasing in d."""
    d, var = np.asarray(d, np.float64), np.asarray(var, np.float64)
    a = 1.0 / np.square(tau) + 1.0 / var
    b = d / var
    return (np.log(2.0) - np.log(tau) - 0.5 * np.log(a) + b * b / (2 * a)
            + special.log_ndtr(b / np.sqrt(a)))


def boundary(var: np.ndarray, tau: float | np.ndarray, alpha: float) -> np.ndarray:
    """The d at which the one-sided mixture LR reaches 1/alpha: float[...] (bisection over
    arrays; one_sided_log_lr is increasing in d)."""
    var = np.asarray(var, np.float64)
    sd = np.sqrt(var)
    lo, hi = np.zeros_like(var), np.full_like(var, 1.0) * sd
    target = np.log(1.0 / alpha)
    while np.any(grow := one_sided_log_lr(hi, var, tau) < target):
        hi = np.where(grow, 2 * hi, hi)
        if np.all(hi > 1e6 * sd):
            break
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = one_sided_log_lr(mid, var, tau) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return hi


@dataclass
class AnytimeTest:
    """Always-valid one-sided bounds of a contrast over its looks (the last axis): `lower`
    (running max of est - boundary) and `upper` (running min of est + boundary), each
    holding at level 1 - alpha at every look at once; pass = lower > 0 (acceptable, shown),
    fail = upper < 0 (unacceptable, shown); p-values min over looks of 1 / Lambda."""

    lower: np.ndarray
    upper: np.ndarray
    p_pass: np.ndarray
    p_fail: np.ndarray


def anytime_test(est: np.ndarray, var: np.ndarray, tau: float | np.ndarray,
                 alpha: float) -> AnytimeTest:
    """est, var float[..., T] of a contrast at T looks (NaN: a look without enough data)."""
    est, var = np.asarray(est, np.float64), np.asarray(var, np.float64)
    ok = np.isfinite(est) & np.isfinite(var) & (var > 0)
    v = np.where(ok, var, 1.0)
    e = np.where(ok, est, 0.0)
    tau_b = np.broadcast_to(np.asarray(tau, np.float64)[..., None] if np.ndim(tau) else tau,
                            v.shape)
    h = boundary(v, tau_b, alpha)
    lower = np.maximum.accumulate(np.where(ok, e - h, -np.inf), axis=-1)
    upper = np.minimum.accumulate(np.where(ok, e + h, np.inf), axis=-1)
    lp = np.where(ok, one_sided_log_lr(e, v, tau_b), -np.inf)
    lf = np.where(ok, one_sided_log_lr(-e, v, tau_b), -np.inf)
    p_pass = np.minimum(1.0, np.exp(-np.maximum.accumulate(lp, axis=-1)))
    p_fail = np.minimum(1.0, np.exp(-np.maximum.accumulate(lf, axis=-1)))
    return AnytimeTest(lower[..., -1], upper[..., -1], p_pass[..., -1], p_fail[..., -1])


def fixed_sample_size(unit_var: float, effect: float, alpha: float, power: float) -> float:
    """Units per arm for a one-sided z-test at level alpha to reach `power` when the
    contrast's true value is `effect` and its variance is unit_var / G (G units per arm):
    G = (z_{1-alpha} + z_power)^2 unit_var / effect^2."""
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    return float(z * z * unit_var / (effect * effect))


def sequential_sample_size(unit_var: float, effect: float, tau: float, alpha: float,
                           power: float) -> float:
    """Units per arm at which the always-valid test, read once there, passes with
    probability `power` when the contrast's true value is `effect` > 0: the G solving
    P(est > boundary(unit_var / G)) = power, est ~ N(effect, unit_var / G). Earlier looks can
    only pass it sooner, so the power at G is at least `power`."""
    def shortfall(log_g: float) -> float:
        var = unit_var / np.exp(log_g)
        h = float(boundary(np.array([var]), tau, alpha)[0])
        return float(stats.norm.sf((h - effect) / np.sqrt(var))) - power

    lo = np.log(max(2.0, fixed_sample_size(unit_var, effect, alpha, power) / 4))
    while shortfall(lo) > 0:  # enough already at lo: a tiny variance (a young experiment's
        if lo <= np.log(2.0):  # few units) once left brentq no sign change and the report
            return 2.0  # answered 500; a clustered fit needs 2 units an arm at least
        lo = max(np.log(2.0), lo - np.log(8.0))
    hi = lo + np.log(64.0)
    while shortfall(hi) < 0:
        hi += np.log(8.0)
    return float(np.exp(optimize.brentq(shortfall, lo, hi, xtol=1e-6)))
