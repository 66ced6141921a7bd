"""A PyMC dims model with a labelled custom likelihood, sampled with NUTS.

``pymc.dims`` lowers the log-probability of its own random variables, but not of
potentials: the ``logp`` of a model whose likelihood is a ``pmd.Potential``
still holds un-lowered :mod:`pytensor.xtensor` Ops.  PyTensor alone cannot
differentiate them, so, silently, ``pm.sample`` falls back from NUTS to
Metropolis.  Once :mod:`pytensor_lazy_pullback` is imported, the gradient
exists and PyMC assigns NUTS.

The model is a regression per sales region, written with named dims only::

    beta[region, feature] ~ Normal(0, TAU)
    sales[region, week]   ~ Normal(dot(X[week, feature], beta, dim="feature"), SIGMA)

with the likelihood written by hand as a ``Potential``::

    resid = (sales - dot(X, beta, dim="feature")) / SIGMA   # dims (region, week)
    Potential("loglik", (-0.5 * resid**2).sum(("region", "week")))

The noise ``SIGMA`` is known, so the posterior is Normal with a closed form
(precision ``X'X / SIGMA^2 + I / TAU^2``, the same for every region); the
script prints the sampler PyMC chose and the posterior summary per labelled
coordinate next to that analytic answer, and raises if they disagree by more
than five Monte Carlo standard errors.

Run it with ``.venv/bin/python examples/pymc_dims_nuts.py`` (about 10 s once
PyTensor's compilation caches are warm; the first run also spends time in
Numba's JIT compiler, some 35 s in all).
"""

from __future__ import annotations

import logging
import warnings

import arviz as az
import numpy as np
import pymc as pm
import pymc.dims as pmd
from pymc.sampling.mcmc import assign_step_methods
from pytensor.graph.traversal import ancestors
from pytensor.xtensor.basic import XOp

import pytensor_lazy_pullback  # noqa: F401  (imported after pymc on purpose: order does not matter)
from pytensor_lazy_pullback import integration_disabled

SEED = 2026
WEEKS = 40
REGIONS = ["north", "south"]
FEATURES = ["baseline", "price", "promo"]
SIGMA, TAU = 0.8, 2.0
TRUE_BETA = np.array([[2.0, -1.0, 0.6], [1.5, -0.4, 1.1]])  # (region, feature)


def simulate(rng):
    X = np.column_stack([np.ones(WEEKS), rng.normal(size=WEEKS), rng.integers(0, 2, size=WEEKS)])
    sales = TRUE_BETA @ X.T + SIGMA * rng.normal(size=(len(REGIONS), WEEKS))  # (region, week)
    return X.astype(float), sales


def build_model(X, sales):
    coords = {"region": REGIONS, "week": np.arange(WEEKS), "feature": FEATURES}
    with pm.Model(coords=coords) as model:
        Xd = pmd.as_xtensor(X, dims=("week", "feature"))
        sales_d = pmd.as_xtensor(sales, dims=("region", "week"))
        beta = pmd.Normal("beta", 0.0, TAU, dims=("region", "feature"))
        mu = pmd.math.dot(Xd, beta, dim="feature")  # dims ("week", "region"): aligned by name
        resid = (sales_d - mu) / SIGMA
        pmd.Potential("loglik", (-0.5 * resid**2).sum(("region", "week")))
    return model


def analytic_posterior(X, sales):
    precision = X.T @ X / SIGMA**2 + np.eye(X.shape[1]) / TAU**2
    cov = np.linalg.inv(precision)
    mean = (cov @ X.T @ sales.T / SIGMA**2).T  # (region, feature)
    sd = np.broadcast_to(np.sqrt(np.diag(cov)), mean.shape)
    return mean, sd


def _applys(out):
    return {v.owner for v in ancestors([out]) if v.owner is not None}


def step_names(model) -> str:
    _, selected = assign_step_methods(model)
    return ", ".join(f"{cls.__name__}: [{', '.join(v.name for v in vs)}]" for cls, vs in selected.items())


def main() -> None:
    logging.getLogger("pymc").setLevel(logging.WARNING)
    rng = np.random.default_rng(SEED)
    X, sales = simulate(rng)
    model = build_model(X, sales)

    print("== The model ==")
    print(f"  data: sales dims ('region', 'week') = {sales.shape}, X dims ('week', 'feature') = {X.shape}")
    print("  likelihood: pmd.Potential over dot(X, beta, dim='feature'), summed over region and week")
    n_x = sum(isinstance(n.op, XOp) for n in _applys(model.logp()))
    print(f"  un-lowered xtensor Ops left in model.logp(): {n_x} (pymc.dims does not lower potentials)")

    print("\n== Which sampler PyMC assigns ==")
    with integration_disabled():
        print(f"  PyTensor alone:               {step_names(model)}")
    print(f"  with pytensor_lazy_pullback:  {step_names(model)}")

    print("\n== pm.sample ==")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = pm.sample(
            model=model,
            draws=1000,
            tune=500,
            chains=2,
            cores=1,
            random_seed=SEED,
            progressbar=False,
            compute_convergence_checks=False,
        )
    stats = idata.sample_stats
    nuts = "tree_depth" in stats and "step_size" in stats
    shown = sorted(k for k in stats.data_vars if k in ("tree_depth", "step_size", "diverging"))
    print(f"  sampler used: {'NUTS' if nuts else 'not NUTS'} (sample_stats has {', '.join(shown)})")
    if not nuts:
        raise AssertionError("pm.sample did not use NUTS")
    print(f"  mean tree depth {float(stats['tree_depth'].mean()):.2f}, "
          f"divergences {int(stats['diverging'].sum())}")

    print("\n== Posterior of beta, per labelled coordinate, against the analytic posterior ==")
    post = idata.posterior["beta"]  # dims (chain, draw, region, feature)
    mean = post.mean(("chain", "draw")).transpose("region", "feature")
    sd = post.std(("chain", "draw")).transpose("region", "feature")
    ess = az.ess(idata.posterior)["beta"].transpose("region", "feature")
    a_mean, a_sd = analytic_posterior(X, sales)
    print(f"  {'region':<7} {'feature':<9} {'mean':>8} {'analytic':>9} {'sd':>7} {'analytic':>9}"
          f" {'ess':>6} {'|diff|/mcse':>12}")
    worst = 0.0
    for i, region in enumerate(mean.coords["region"].values):
        for j, feature in enumerate(mean.coords["feature"].values):
            m, s, e = float(mean[i, j]), float(sd[i, j]), float(ess[i, j])
            z = abs(m - a_mean[i, j]) / (a_sd[i, j] / np.sqrt(e))
            worst = max(worst, z)
            print(f"  {region:<7} {feature:<9} {m:8.3f} {a_mean[i, j]:9.3f} {s:7.3f} {a_sd[i, j]:9.3f}"
                  f" {e:6.0f} {z:12.2f}")
    print(f"  largest |posterior mean - analytic mean| in Monte Carlo standard errors: {worst:.2f}")
    if worst > 5 or not np.allclose(sd.values, a_sd, rtol=0.15):
        raise AssertionError("the NUTS posterior disagrees with the analytic posterior")


if __name__ == "__main__":
    main()
