"""PyMC dims models with a labelled ``Potential`` get gradients, NUTS and MAP.

``pymc.dims`` lowers the logp of its random variables itself, but not of
potentials: ``Model.logp()`` of a dims model with a ``pmd.Potential`` still
holds xtensor Ops.  Without the add-on ``model.compile_dlogp()`` raises
``NotImplementedError`` and ``pm.sample`` silently falls back to Metropolis.
Here every check is made against the same model written with plain tensors
(``pm.Normal`` / ``pt.dot`` / ``pm.Potential``), against the analytic answer of
a conjugate model, or against what PyMC does with the integration switched off.
"""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pm = pytest.importorskip("pymc")

import pymc.dims as pmd  # noqa: E402
import pytensor.gradient as tg  # noqa: E402
import pytensor.tensor as pt  # noqa: E402
import pytensor.xtensor.random as pxr  # noqa: E402
from pymc.sampling.mcmc import assign_step_methods  # noqa: E402
from pymc.step_methods import NUTS, Metropolis  # noqa: E402
from pytensor.compile.mode import Mode  # noqa: E402

import pytensor_lazy_pullback  # noqa: E402, F401
from pytensor_lazy_pullback import integration_disabled  # noqa: E402
from helpers import MODE, lower, n_nodes  # noqa: E402

FAST = {"mode": "FAST_COMPILE"}

# Conjugate linear regression: y = X beta + eps, eps ~ N(0, SIGMA^2), beta ~ N(0, TAU^2 I).
N_OBS, N_REP = 12, 2
FEATURES = ["intercept", "price", "promo"]
SIGMA, TAU = 0.7, 1.5
_rng = np.random.default_rng(20260)
X = np.column_stack([np.ones(N_OBS), _rng.normal(size=(N_OBS, 2))])
BETA_TRUE = np.array([0.5, -1.0, 0.8])
Y = X @ BETA_TRUE + SIGMA * _rng.normal(size=N_OBS)
# Replicated observations (dims ("rep", "obs")) for the richer model of the dlogp/d2logp checks.
Y_REP = (X @ BETA_TRUE)[None, :] + SIGMA * _rng.normal(size=(N_REP, N_OBS))
COORDS = {"obs": np.arange(N_OBS), "feature": FEATURES, "rep": np.arange(N_REP)}

# Analytic posterior of the conjugate model.
PRECISION = X.T @ X / SIGMA**2 + np.eye(3) / TAU**2
POST_COV = np.linalg.inv(PRECISION)
POST_MEAN = POST_COV @ X.T @ Y / SIGMA**2
POST_SD = np.sqrt(np.diag(POST_COV))


def conjugate_dims_model():
    """beta ~ N(0, TAU) per feature; the likelihood is a labelled Potential."""
    with pm.Model(coords=COORDS) as model:
        Xd = pmd.as_xtensor(X, dims=("obs", "feature"))
        yd = pmd.as_xtensor(Y, dims=("obs",))
        beta = pmd.Normal("beta", 0.0, TAU, dims="feature")
        resid = (yd - pmd.math.dot(Xd, beta, dim="feature")) / SIGMA
        pmd.Potential("loglik", (-0.5 * resid**2).sum("obs"))
    return model


def rich_dims_model():
    """Free sigma (log-transformed), replicated data broadcast against the dot, two reductions."""
    with pm.Model(coords=COORDS) as model:
        Xd = pmd.as_xtensor(X, dims=("obs", "feature"))
        yd = pmd.as_xtensor(Y_REP.T, dims=("obs", "rep"))  # stored transposed on purpose
        beta = pmd.Normal("beta", 0.0, TAU, dims="feature")
        sigma = pmd.HalfNormal("sigma", 1.0)
        mu = pmd.math.dot(Xd, beta, dim="feature")  # dims ("obs",)
        resid = (yd - mu) / sigma  # dims ("obs", "rep")
        ll = (-0.5 * resid**2 - pmd.math.log(sigma)).mean("rep").sum("obs")
        pmd.Potential("loglik", ll + 0.1 * pmd.math.tanh(beta).sum("feature"))
    return model


def rich_tensor_model():
    """The same model as :func:`rich_dims_model`, with plain tensors."""
    with pm.Model(coords=COORDS) as model:
        beta = pm.Normal("beta", 0.0, TAU, dims="feature")
        sigma = pm.HalfNormal("sigma", 1.0)
        mu = pt.dot(pt.as_tensor(X), beta)
        resid = (pt.as_tensor(Y_REP) - mu[None, :]) / sigma
        ll = (-0.5 * resid**2 - pt.log(sigma)).mean(axis=0).sum()
        pm.Potential("loglik", ll + 0.1 * pt.tanh(beta).sum())
    return model


def rich_points():
    rng = np.random.default_rng(7)
    points = [{"beta": np.zeros(3), "sigma_log__": np.array(0.0)}]
    for _ in range(3):
        points.append({"beta": rng.normal(size=3), "sigma_log__": np.array(rng.normal(scale=0.5))})
    return points


def test_dims_potential_logp_is_unlowered_and_fails_without_addon():
    """The premise: the Potential keeps xtensor Ops, and PyMC alone cannot differentiate it."""
    model = rich_dims_model()
    with integration_disabled():
        with pytest.raises(NotImplementedError, match="pullback not implemented"):
            model.compile_dlogp(**FAST)


def test_dlogp_matches_tensor_model():
    dims_model, tensor_model = rich_dims_model(), rich_tensor_model()
    assert [v.name for v in dims_model.value_vars] == [v.name for v in tensor_model.value_vars]
    logp_d, logp_t = dims_model.compile_logp(**FAST), tensor_model.compile_logp(**FAST)
    dlogp_d, dlogp_t = dims_model.compile_dlogp(**FAST), tensor_model.compile_dlogp(**FAST)
    for point in rich_points():
        np.testing.assert_allclose(logp_d(point), logp_t(point), rtol=1e-10)
        got, want = dlogp_d(point), dlogp_t(point)
        assert got.shape == want.shape == (4,)
        assert np.all(np.abs(want) > 1e-3)  # a non-trivial comparison
        np.testing.assert_allclose(got, want, rtol=1e-8)
    # And against central finite differences of the dims model's own logp.
    point, eps = rich_points()[2], 1e-6
    flat = np.concatenate([point["beta"], [point["sigma_log__"]]])

    def logp_at(x):
        return logp_d({"beta": x[:3], "sigma_log__": np.array(x[3])})

    fd = [(logp_at(flat + eps * e) - logp_at(flat - eps * e)) / (2 * eps) for e in np.eye(4)]
    np.testing.assert_allclose(dlogp_d(point), fd, rtol=1e-6)


def test_d2logp_matches_tensor_model():
    """In the default mode: the Hessian is a Scan over grad (XTensorType in_same_class)."""
    dims_model, tensor_model = rich_dims_model(), rich_tensor_model()
    d2_d = dims_model.compile_d2logp(negate_output=False)
    d2_t = tensor_model.compile_d2logp(negate_output=False, **FAST)
    for point in rich_points():
        got, want = d2_d(point), d2_t(point)
        assert got.shape == want.shape == (4, 4)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


def test_conjugate_dlogp_is_analytic():
    model = conjugate_dims_model()
    dlogp = model.compile_dlogp(**FAST)
    for beta in (np.zeros(3), np.array([1.0, -2.0, 0.5])):
        want = X.T @ (Y - X @ beta) / SIGMA**2 - beta / TAU**2
        np.testing.assert_allclose(dlogp({"beta": beta}), want, rtol=1e-10)


def test_sample_assigns_nuts_and_posterior_is_right():
    model = conjugate_dims_model()
    _, selected = assign_step_methods(model)
    assert list(selected) == [NUTS]
    assert [v.name for v in selected[NUTS]] == ["beta"]
    with integration_disabled():
        _, without = assign_step_methods(model)
    assert list(without) == [Metropolis]  # what the add-on changes

    draws = 400
    # Default compile mode on purpose: what a user gets (Numba in pytensor 3.3).
    idata = pm.sample(
        model=model,
        draws=draws,
        tune=300,
        chains=1,
        cores=1,
        random_seed=11,
        progressbar=False,
        compute_convergence_checks=False,
        return_inferencedata=True,
    )
    stats = idata.sample_stats
    for field in ("tree_depth", "step_size", "diverging", "energy"):
        assert field in stats
    assert int(stats["diverging"].sum()) == 0
    post = idata.posterior["beta"]
    assert list(post.coords["feature"].values) == FEATURES
    mean = post.mean(("chain", "draw")).values
    sd = post.std(("chain", "draw")).values
    np.testing.assert_array_less(np.abs(mean - POST_MEAN), 4 * POST_SD / np.sqrt(draws))
    np.testing.assert_allclose(sd, POST_SD, rtol=0.2)


def _find_map(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        point, res = pm.find_MAP(
            model=model,
            progressbar=False,
            jitter=False,
            return_raw=True,
            compile_kwargs=FAST,
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return point, res, messages


def test_find_map_uses_gradient_and_finds_optimum():
    """Default ``find_MAP`` is L-BFGS-B with an automatic gradient; it falls back to Powell
    (with a UserWarning "Gradient not available") only if compiling the gradient fails."""
    model = conjugate_dims_model()
    point, res, messages = _find_map(model)
    assert not [m for m in messages if "Gradient not available" in m], messages
    assert res.success
    assert res.njev > 0 and res.jac.shape == (3,)  # the optimiser was given the gradient
    assert np.max(np.abs(res.jac)) < 1e-4
    np.testing.assert_allclose(point["beta"], POST_MEAN, rtol=1e-5, atol=1e-7)

    with integration_disabled():
        point_off, res_off, messages_off = _find_map(model)
    assert [m for m in messages_off if "Gradient not available" in m and "powell" in m]
    assert "jac" not in res_off  # Powell: gradient-free


def test_find_hessian_is_the_precision_matrix():
    model = conjugate_dims_model()
    H = pm.find_hessian({"beta": np.array([0.3, -0.2, 1.0])}, model=model, negate_output=False)
    np.testing.assert_allclose(-H, PRECISION, rtol=1e-10)


IMPORT_LATE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pymc as pm
    import pymc.dims as pmd
    import pytensor.tensor as pt
    from pymc.sampling.mcmc import assign_step_methods

    X = np.array(json.loads(sys.argv[1]))
    Y = np.array(json.loads(sys.argv[2]))
    coords = {"obs": np.arange(len(Y)), "feature": ["a", "b", "c"]}
    FAST = {"mode": "FAST_COMPILE"}
    with pm.Model(coords=coords) as model:
        beta = pmd.Normal("beta", 0.0, 1.5, dims="feature")
        sigma = pmd.HalfNormal("sigma", 1.0)
        mu = pmd.math.dot(pmd.as_xtensor(X, dims=("obs", "feature")), beta, dim="feature")
        resid = (pmd.as_xtensor(Y, dims=("obs",)) - mu) / sigma
        pmd.Potential("loglik", (-0.5 * resid**2 - pmd.math.log(sigma)).sum("obs"))
    with pm.Model(coords=coords) as tensor_model:
        beta = pm.Normal("beta", 0.0, 1.5, dims="feature")
        sigma = pm.HalfNormal("sigma", 1.0)
        resid = (pt.as_tensor(Y) - pt.dot(pt.as_tensor(X), beta)) / sigma
        pm.Potential("loglik", (-0.5 * resid**2 - pt.log(sigma)).sum())

    assert "pytensor_lazy_pullback" not in sys.modules
    try:
        model.compile_dlogp(**FAST)
        before = "ok"
    except NotImplementedError as exc:
        before = "NotImplementedError: " + str(exc)
    steps_before = [cls.__name__ for cls in assign_step_methods(model)[1]]

    import pytensor_lazy_pullback  # after pymc, and after the model was built

    dlogp = model.compile_dlogp(**FAST)
    ref = tensor_model.compile_dlogp(**FAST)
    pts = [{"beta": np.array([0.1, -0.4, 0.9]) * k, "sigma_log__": np.array(0.3 * k - 0.2)}
           for k in range(3)]
    print(json.dumps({
        "before": before,
        "steps_before": steps_before,
        "steps_after": [cls.__name__ for cls in assign_step_methods(model)[1]],
        "got": [dlogp(p).tolist() for p in pts],
        "want": [ref(p).tolist() for p in pts],
    }))
    """
)


def test_import_after_pymc_and_after_model_is_built():
    """PyMC binds ``grad`` at import time; the add-on, imported later, must still act."""
    args = [json.dumps(X.tolist()), json.dumps(Y.tolist())]
    proc = subprocess.run([sys.executable, "-c", IMPORT_LATE, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"].startswith("NotImplementedError: pullback not implemented"), out["before"]
    assert "NUTS" not in out["steps_before"] and "Metropolis" in out["steps_before"]
    assert out["steps_after"] == ["NUTS"]
    got, want = np.array(out["got"]), np.array(out["want"])
    assert got.shape == want.shape == (3, 4) and np.all(np.abs(want) > 1e-3)
    np.testing.assert_allclose(got, want, rtol=1e-8)


def random_path_model():
    """A random draw sits between the free variable and the logp: no gradient exists."""
    with pm.Model(coords=COORDS) as model:
        mu = pmd.Normal("mu", 0.0, 1.0, dims="feature")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # XRV hidden-rng notice
            noisy = pxr.normal(mu, 1.0)
        pmd.Potential("p", -0.5 * ((noisy - 1.0) ** 2).sum("feature"))
    return model


def test_random_draw_on_path_falls_back_like_without_addon():
    model = random_path_model()
    logp, [value] = model.logp(), model.value_vars
    # Probing the gradient fails at grad time, as PyMC's probe expects.
    with pytest.raises(tg.NullTypeGradError, match="mu"):
        tg.grad(logp, value)
    with integration_disabled():
        with pytest.raises(NotImplementedError):
            tg.grad(logp, value)

    _, with_addon = assign_step_methods(model)
    with integration_disabled():
        _, without_addon = assign_step_methods(model)
    assert list(with_addon) == list(without_addon) == [Metropolis]
    assert with_addon[Metropolis] == without_addon[Metropolis] == [value]

    def sample():
        return pm.sample(
            model=model,
            draws=30,
            tune=30,
            chains=1,
            cores=1,
            random_seed=3,
            progressbar=False,
            compute_convergence_checks=False,
            compile_kwargs=FAST,
        )

    idata = sample()  # compiles and runs: no crash at compile time
    with integration_disabled():
        idata_off = sample()
    # The same sampler as without the add-on (the draws themselves cannot be compared: the
    # Potential's own random generator is unseeded and pm.sample does not reseed it).
    assert set(idata.sample_stats.data_vars) == set(idata_off.sample_stats.data_vars)
    assert "tree_depth" not in idata.sample_stats and "accepted" in idata.sample_stats
    assert idata.posterior["mu"].shape == idata_off.posterior["mu"].shape == (1, 30, 3)
    assert np.all(np.isfinite(idata.posterior["mu"].values))


# compile_d2logp of a dims model with a labelled Potential, against the
# reference (logp lowered first) and the plain-tensor model.


def _d2logp_models():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(20, 3))
    y = X @ np.array([0.5, -1.0, 0.8]) + 0.7 * rng.normal(size=20)
    coords = {"obs": np.arange(20), "feature": ["a", "b", "c"]}

    def labelled():
        with pm.Model(coords=coords) as model:
            beta = pmd.Normal("beta", 0.0, 1.5, dims="feature")
            fit = pmd.math.dot(pmd.as_xtensor(X, dims=("obs", "feature")), beta, dim="feature")
            resid = (pmd.as_xtensor(y, dims=("obs",)) - fit) / 0.7
            pmd.Potential("lik", (-0.5 * resid**2).sum())
        return model

    def plain():
        with pm.Model(coords=coords) as model:
            beta = pm.Normal("beta", 0.0, 1.5, dims="feature")
            pm.Potential("lik", (-0.5 * ((y - pt.dot(X, beta)) / 0.7) ** 2).sum())
        return model

    return labelled, plain


def test_pymc_d2logp_nodes_not_above_reference():
    """``compile_d2logp``: ours <= the reference (logp lowered first); values of the plain model."""
    from pymc.pytensorf import hessian, rewrite_pregrad

    labelled, plain = _d2logp_models()
    # COUNT_MODE as a query PyMC can add its own rewrites to.
    count_mode = Mode(linker="py", optimizer="fast_run")
    point = {"beta": np.array([0.3, -0.2, 1.0])}
    ours = labelled().compile_d2logp(negate_output=False, mode=count_mode)

    model = labelled()
    with integration_disabled():
        logp = lower(model.logp())
        hess = hessian(rewrite_pregrad(logp), model.continuous_value_vars, negate_output=False)
    ref = model.compile_fn(
        inputs=model.value_vars, outs=hess, mode=count_mode, on_unused_input="ignore"
    )
    want = plain().compile_d2logp(negate_output=False, mode=MODE)(point)

    assert n_nodes(ours.f.maker.fgraph) <= n_nodes(ref.f.maker.fgraph)
    np.testing.assert_allclose(ours(point), ref(point), rtol=1e-10)
    np.testing.assert_allclose(ours(point), want, rtol=1e-10)
