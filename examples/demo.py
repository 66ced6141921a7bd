"""Fit a small labelled model with ``pt.grad`` on an un-lowered xtensor graph.

This is what ``./run.sh demo`` runs.  On a model written with
:mod:`pytensor.xtensor` (arrays whose dimensions have names, like xarray), it
shows that once :mod:`pytensor_lazy_pullback` is imported:

a. a model can be written with named dims only: inputs ``X`` with dims
   ``("obs", "feature")``, weights ``w`` (``"feature"``) and a per-group offset
   ``alpha`` (``"group"``) picked by an integer ``group`` label per
   observation::

       pred = tanh(dot(X, w, dim="feature") + alpha[group])
       loss = mean over "obs" of (pred - y) ** 2  +  0.001 * sum(w ** 2)

   Synthetic data are drawn from known "true" parameters (fixed seed);
b. ``pt.grad(loss, [w, alpha])`` works directly on that graph, where
   PyTensor 3.3 alone raises ``NotImplementedError``, and the gradients are
   labelled like the parameters;
c. the gradients come from a single ``LazyPullback`` node whose inner graph is
   the un-lowered region it differentiates (shown by ``pytensor.dprint``):
   ``pt.grad`` has lowered nothing and differentiated nothing op by op;
d. ``pytensor.function(inputs, [loss, *grads])`` expands it while compiling
   (the ``expand_lazy_pullback`` rewrite, just before ``lower_xtensor``), and
   the values agree with the reference -- lower first with
   ``rewrite_graph(loss, include=("lower_xtensor",))``, then ``pt.grad`` -- and
   with central finite differences of the loss.  The script raises (and exits
   non-zero) if they disagree;
e. the compiled function fits the model by plain gradient descent in NumPy and
   recovers the true parameters.

The output is deterministic.  It takes about 5 s once PyTensor's compilation
caches are warm; the very first run on a machine also spends some 15 s more in
Numba's JIT compiler, which is PyTensor's default backend.

Run it with ``./run.sh demo`` (or ``.venv/bin/python examples/demo.py``).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.graph.traversal import applys_between

import pytensor_lazy_pullback  # noqa: F401  once: pt.grad now works on xtensor graphs

try:  # the add-on
    from pytensor_lazy_pullback import LazyPullback, integration_disabled
except ImportError:  # a PyTensor with the in-tree patch (./run.sh upstream): no add-on
    from pytensor.gradient_lazy import LazyPullback

    integration_disabled = None

SEED = 2026
N_OBS, N_FEATURE, N_GROUP = 200, 3, 4
L2 = 0.001  # weight of the L2 penalty on w
NOISE = 0.05  # standard deviation of the observation noise
TRUE_W = np.array([0.8, -0.5, 0.3])
TRUE_ALPHA = np.array([-0.6, -0.1, 0.2, 0.7])


def model_loss(X, y, group, w, alpha):
    """The model's loss, written with labelled (named-dim) variables only."""
    mu = px.dot(X, w, dim="feature") + alpha.isel(group=group)  # dims ("obs",)
    pred = px.math.tanh(mu)
    return ((pred - y) ** 2).mean("obs") + L2 * (w**2).sum("feature")


def heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(3, 74 - len(text)))


def fmt(values: np.ndarray) -> str:
    return np.array2string(np.asarray(values), precision=3, floatmode="fixed", sign=" ")


def check(against: str, ours, theirs, rtol: float, atol: float) -> None:
    """Print the max abs difference per parameter; raise if any disagrees."""
    for name, a, b in zip(("w", "alpha"), ours, theirs, strict=True):
        diff = float(np.max(np.abs(a - b)))
        print(f"  d loss/d {name:<6} vs {against}: max abs difference {diff:.1e}")
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            raise AssertionError(
                f"d loss/d {name} disagrees with {against}:\n"
                f"  ours:   {a}\n  theirs: {b}"
            )


def central_differences(f, point, eps=1e-6):
    """d f / d point by central differences, one coordinate at a time."""
    grads = []
    for k, value in enumerate(point):
        grad = np.empty_like(value)
        for i in range(value.size):
            up = [p.copy() for p in point]
            down = [p.copy() for p in point]
            up[k][i] += eps
            down[k][i] -= eps
            grad[i] = (f(*up) - f(*down)) / (2 * eps)
        grads.append(grad)
    return grads


def main() -> None:
    rng = np.random.default_rng(SEED)

    heading("a. A labelled model, built with pytensor.xtensor")
    X = px.xtensor("X", dims=("obs", "feature"))
    y = px.xtensor("y", dims=("obs",))
    group = px.xtensor("group", dims=("obs",), dtype="int64")
    w = px.xtensor("w", dims=("feature",))
    alpha = px.xtensor("alpha", dims=("group",))
    inputs = [X, y, group, w, alpha]
    loss = model_loss(*inputs)
    for var in inputs:
        print(f"  {var.name:<6} dims={var.type.dims!s:<20} dtype={var.type.dtype}")
    print(f"  loss   dims={loss.type.dims!s:<20} mean squared error + {L2} * sum(w**2)")

    X_val = rng.normal(size=(N_OBS, N_FEATURE))
    group_val = rng.integers(0, N_GROUP, size=N_OBS)
    mu_val = X_val @ TRUE_W + TRUE_ALPHA[group_val]
    y_val = np.tanh(mu_val) + NOISE * rng.normal(size=N_OBS)
    data = [X_val, y_val, group_val]
    print(f"  synthetic data: {N_OBS} obs, {N_FEATURE} features, {N_GROUP} groups, "
          f"noise sd {NOISE}, seed {SEED}")

    heading("b. pt.grad directly on the un-lowered graph")
    if integration_disabled is None:
        print("  PyTensor with the in-tree patch: no add-on to switch off for contrast")
    else:
        with integration_disabled():  # PyTensor's own gradient machinery, for contrast
            try:
                pt.grad(loss.values, [w, alpha])
            except NotImplementedError as err:
                print(f"  PyTensor alone:    NotImplementedError: {err}")
            else:
                raise AssertionError("expected PyTensor 3.3 alone to fail here")
    grads = pt.grad(loss, [w, alpha])
    print("  with the package:  grads = pt.grad(loss, [w, alpha])")
    for var, g in zip([w, alpha], grads, strict=True):
        print(f"  d loss/d {var.name:<6} = {g}  dims={g.type.dims}")
    n_lazy = sum(isinstance(node.op, LazyPullback) for node in applys_between(inputs, grads))
    print(f"  LazyPullback nodes in the gradient graph: {n_lazy} (one per un-lowered region)")

    heading("c. pytensor.dprint(grads[0]): the LazyPullback and its region")
    print("  Outer inputs: the region's inputs (w, alpha, group, X, y and the number of")
    print("  observations, computed outside it), then the cotangent of its output (loss).")
    print("  Inner graph: the region itself, as it was built, on its own inputs i0, i1, ...\n")
    pytensor.dprint(grads[0])

    heading("d. Compile, then check against the reference and finite differences")
    fn = pytensor.function(inputs, [loss, *grads])
    left = sum(isinstance(node.op, LazyPullback) for node in fn.maker.fgraph.apply_nodes)
    print("  fn = pytensor.function(inputs, [loss, *grads])")
    print(f"  LazyPullback nodes left after compiling: {left}")
    if left:
        raise AssertionError("a LazyPullback survived compilation")

    lowered = rewrite_graph(loss, include=("lower_xtensor",), clone=True)
    reference = pt.grad(lowered, [w, alpha])
    ref_fn = pytensor.function(inputs, reference)
    print("  reference: pt.grad(rewrite_graph(loss, include=('lower_xtensor',)), [w, alpha])")

    point = [rng.normal(size=N_FEATURE), rng.normal(size=N_GROUP)]  # some w, alpha
    _, *ours = fn(*data, *point)
    check("reference", ours, ref_fn(*data, *point), rtol=1e-10, atol=1e-12)
    fd = central_differences(lambda *params: fn(*data, *params)[0], point)
    check("central differences", ours, fd, rtol=1e-6, atol=1e-8)

    heading("e. Fit by gradient descent with the compiled function")
    params = [np.zeros(N_FEATURE), np.zeros(N_GROUP)]  # w, alpha
    learning_rate, n_steps = 1.0, 50
    for step in range(n_steps + 1):
        loss_val, *grad_vals = fn(*data, *params)
        if step % 10 == 0:
            print(f"  step {step:3d}  loss {float(loss_val):.6f}")
        if step < n_steps:
            for p, g in zip(params, grad_vals, strict=True):
                p -= learning_rate * g

    print("\n  fitted parameters, next to the true values they were simulated from:")
    for var, fitted, true in zip([w, alpha], params, [TRUE_W, TRUE_ALPHA], strict=True):
        sizes = ", ".join(f"{d}: {n}" for d, n in zip(var.type.dims, fitted.shape, strict=True))
        label = f"{var.name} ({sizes})"
        print(f"  {label:<16} fitted {fmt(fitted)}")
        print(f"  {'':<16} true   {fmt(true)}")


if __name__ == "__main__":
    main()
