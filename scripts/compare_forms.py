#!/usr/bin/env python
"""Run a fixed set of probe programs against one form of this package, or compare two runs.

The package has two forms (DESIGN.md section 8): the add-on (PyTensor 3.3.x from
the package index plus ``import pytensor_lazy_pullback``) and the in-tree patch
(``scripts/upstream.py``), which must behave exactly alike.  Each probe builds a
derivative of a small un-lowered graph and records, as text:

* ``types``: the type of each output;
* ``graph``: ``pytensor.dprint`` of the un-compiled outputs (with types);
* ``expanded``: ``dprint`` of ``expand_lazy_pullbacks(outputs)``;
* ``compiled[fast_run]`` and ``compiled[numba]``: ``dprint`` of the function
  compiled with the rewrites of ``FAST_RUN``/``CVM`` and of ``NUMBA``
  respectively, both run by the Python linker (no C or Numba compilation: the
  graph is the one those modes build, the values come from ``perform``);
* ``values[...]``: the values of the outputs on fixed inputs (10 significant
  digits);
* ``error``/``error[...]``: where a probe fails, the stage, the exception's
  type (and bases) and message;
* ``log``: what PyTensor logged at WARNING or above, and Python warnings.

The ``readme[N]`` probes run the N-th ``.. code-block:: python`` of README.rst
(its ``import pytensor_lazy_pullback`` line removed in the patched form) and
record what it prints and ``dprint`` of each function it compiled.

Besides the two forms agreeing, each form's results are checked on their own
(:func:`unexpected`): a probe named ``error_*`` must fail and every other probe,
README blocks included, must not.

Usage::

    python scripts/compare_forms.py --form addon   [--out FILE] [PROBE ...]
    python scripts/compare_forms.py --form patched [--out FILE] [PROBE ...]
    python scripts/compare_forms.py --compare ADDON.json PATCHED.json
    python scripts/compare_forms.py --list

``--form`` defaults to ``$COMPARE_FORMS_FORM``.  The add-on form imports
``pytensor_lazy_pullback`` (put the repository on ``PYTHONPATH``) and refuses a
patched PyTensor; the patched form refuses to run where the add-on is
importable.  ``--compare`` exits 1 if the results differ (printing each
differing probe and its first differing line), 0 otherwise.  Before comparing,
the add-on's module paths in the results are rewritten to their in-tree homes
(``scripts/upstream.py``'s ``rewrite_names``), as the patch rewrites them, and
memory addresses are blanked.

``scripts/upstream_check.py`` runs both forms and compares them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import logging
import os
import re
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
README = REPO / "README.rst"
ENV_VAR = "COMPARE_FORMS_FORM"
FORMS = ("addon", "patched")
ADDON_IMPORT = re.compile(r"(?m)^import pytensor_lazy_pullback\b.*\n")

# Filled by setup_form(): the public names whose import path differs between the forms.
API: dict[str, object] = {}


# --------------------------------------------------------------------------- the forms


def setup_form(form: str) -> None:
    """Import the form's gradient machinery; refuse an environment of the other form."""
    import pytensor  # noqa: F401

    patched = importlib.util.find_spec("pytensor.gradient_lazy") is not None
    if form == "addon":
        if patched:
            raise SystemExit("compare_forms: --form addon on a patched PyTensor")
        import pytensor_lazy_pullback
        from pytensor_lazy_pullback import LazyPullbackExpansionError, expand_lazy_pullbacks
        from pytensor_lazy_pullback import xtensor_gradient

        API["module"] = pytensor_lazy_pullback.__name__
    elif form == "patched":
        if not patched:
            raise SystemExit("compare_forms: --form patched on an unpatched PyTensor")
        if "pytensor_lazy_pullback" in sys.modules or importlib.util.find_spec(
            "pytensor_lazy_pullback"
        ) is not None:
            raise SystemExit("compare_forms: --form patched where the add-on is importable")
        from pytensor.tensor.rewriting.lazy_pullback import (
            LazyPullbackExpansionError,
            expand_lazy_pullbacks,
        )
        from pytensor.xtensor import gradient as xtensor_gradient

        API["module"] = "pytensor.gradient_lazy"
    else:
        raise SystemExit(f"compare_forms: unknown form {form!r} (one of {', '.join(FORMS)})")
    API["expand_lazy_pullbacks"] = expand_lazy_pullbacks
    API["LazyPullbackExpansionError"] = LazyPullbackExpansionError
    # The labelled grad/pullback/pushforward API (pytensor.xtensor.gradient in the tree).
    API["xtensor_gradient"] = xtensor_gradient


def modes() -> dict:
    """``FAST_RUN`` (the C/CVM rewrites) and ``NUMBA`` rewrites, run by the Python linker."""
    from pytensor.compile.mode import Mode, get_mode
    from pytensor.graph.rewriting.db import RewriteDatabaseQuery
    from pytensor.link.basic import PerformLinker

    def rewrites_of(target: str, query: RewriteDatabaseQuery) -> Mode:
        linker = PerformLinker()
        # The Python linker asks for "py_only" and refuses "cxx_only": take the
        # target linker's requirements instead, so the graph is the target's.
        target_linker = get_mode(target).linker
        linker.required_rewrites = target_linker.required_rewrites
        linker.incompatible_rewrites = target_linker.incompatible_rewrites
        return Mode(linker=linker, optimizer=query)

    return {
        "fast_run": rewrites_of("CVM", RewriteDatabaseQuery(include=["fast_run"])),
        "numba": rewrites_of("NUMBA", RewriteDatabaseQuery(include=["fast_run", "numba"])),
    }


# --------------------------------------------------------------------------- probes


@dataclass
class Case:
    """A probe's graph: compile `outputs` of `inputs` and evaluate them at `values`."""

    inputs: list
    outputs: list
    values: list
    expand: bool = True
    extra: dict = field(default_factory=dict)


PROBES: dict[str, object] = {}


def probe(fn):
    PROBES[fn.__name__.removeprefix("probe_")] = fn
    return fn


def _rng(seed=0):
    import numpy as np

    return np.random.default_rng(seed)


def _dense(labelled_w=False):
    """A labelled dense layer: out = tanh(dot(x, w)) * mean_b(exp(x)), cost = sum(out**2)."""
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    x = px.xtensor("x", dims=("a", "b"), shape=(5, 4))
    if labelled_w:
        w_in = w = px.xtensor("w", dims=("b",), shape=(4,))
    else:
        w_in = pt.vector("w", shape=(4,))
        w = px.as_xtensor(w_in, dims=("b",))
    out = px.math.tanh(px.dot(x, w, dim="b")) * px.math.exp(x).mean("b")
    out.name = "out"
    cost = (out**2).sum().values
    cost.name = "cost"
    rng = _rng(0)
    return x, w_in, out, cost, [rng.normal(size=(5, 4)), rng.normal(size=4) * 0.5]


@probe
def probe_grad_dense():
    """First order: a labelled dense layer, wrt a labelled input and a plain vector."""
    import pytensor.tensor as pt

    x, w, _, cost, vals = _dense()
    return Case([x, w], [cost, *pt.grad(cost, [x, w])], vals)


@probe
def probe_grad_index_concat():
    """Slices and an integer-array gather, concatenated, then a cumsum."""
    import numpy as np
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    p_in = pt.vector("p", shape=(8,))
    p = px.as_xtensor(p_in, dims=("i",))
    idx = px.xtensor("idx", dims=("j",), shape=(5,), dtype="int64")
    head = p.isel(i=slice(0, 4)).rename(i="k")
    tail = px.math.exp(p.isel(i=slice(4, None))).rename(i="k")
    gathered = px.math.sin(p.isel(i=idx)).rename(j="k")
    c = px.concat([head, tail * 0.5, gathered], dim="k")
    out = px.math.tanh(c) * c.cumsum("k")
    cost = (out**2).sum().values
    vals = [_rng(1).normal(size=8), np.array([0, 7, 3, 3, 5])]
    return Case([p_in, idx], [cost, pt.grad(cost, p_in)], vals)


@probe
def probe_grad_glm_int_counts():
    """A Poisson GLM log-likelihood with integer counts, wrt the weights and the counts."""
    import numpy as np
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    X = px.xtensor("X", dims=("obs", "feature"), shape=(6, 3))
    counts = px.xtensor("counts", dims=("obs",), shape=(6,), dtype="int64")
    beta = px.xtensor("beta", dims=("feature",), shape=(3,))
    rate = px.math.exp(px.dot(X, beta, dim="feature"))
    loglik = counts * px.math.log(rate) - rate - px.math.gammaln(counts + 1)
    cost = -loglik.sum().values + 0.5 * (beta**2).sum().values
    rng = _rng(2)
    vals = [rng.normal(size=(6, 3)) * 0.3, np.array([0, 1, 2, 5, 1, 3]), rng.normal(size=3)]
    return Case([X, counts, beta], [cost, *pt.grad(cost, [beta, counts])], vals)


@probe
def probe_hessian():
    import pytensor.gradient as gradient

    x, w, _, cost, vals = _dense()
    return Case([x, w], [gradient.hessian(cost, w)], vals)


@probe
def probe_jacobian_labelled_vectorized():
    import pytensor.gradient as gradient

    x, w, out, _, vals = _dense(labelled_w=True)
    return Case([x, w], [gradient.jacobian(out, w, vectorize=True)], vals)


@probe
def probe_jacobian_labelled_loop():
    import pytensor.gradient as gradient

    x, w, out, _, vals = _dense(labelled_w=True)
    return Case([x, w], [gradient.jacobian(out, w, vectorize=False)], vals)


@probe
def probe_jacobian_plain_loop():
    """``pt.jacobian`` of a plain output: PyTensor's Scan over rows holds a LazyPullback."""
    import pytensor.tensor as pt

    x, w, out, _, vals = _dense()
    return Case([x, w], [pt.jacobian(out.values, w, vectorize=False)], vals)


def _pushforward(labelled, use_op):
    import pytensor.gradient as gradient
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    x, w, out, _, vals = _dense(labelled_w=labelled)
    if labelled:
        v = px.xtensor("v", dims=("b",), shape=(4,))
        f = out
    else:
        v = pt.vector("v", shape=(4,))
        f = out.values
    result = gradient.pushforward(f, w, v, use_op_pushforward=use_op)
    return Case([x, w, v], [result], [*vals, _rng(3).normal(size=4)])


@probe
def probe_pushforward_op():
    return _pushforward(labelled=False, use_op=True)


@probe
def probe_pushforward_transpose():
    return _pushforward(labelled=False, use_op=False)


@probe
def probe_pushforward_labelled_op():
    return _pushforward(labelled=True, use_op=True)


@probe
def probe_pushforward_labelled_transpose():
    return _pushforward(labelled=True, use_op=False)


@probe
def probe_pullback_cotangent_by_name():
    """A ("b", "a") cotangent of an ("a", "b") output is matched by name."""
    import numpy as np
    import pytensor.gradient as gradient
    import pytensor.xtensor as px

    x = px.xtensor("x", dims=("a", "b"), shape=(3, 3))
    y = px.math.exp(x) * px.as_xtensor(np.arange(9.0).reshape(3, 3), dims=("a", "b"))
    y.name = "y"
    g = px.xtensor("g", dims=("a", "b"), shape=(3, 3))
    result = gradient.pullback(y, x, g.transpose("b", "a"))
    vals = [np.linspace(0, 1, 9).reshape(3, 3), np.arange(9.0).reshape(3, 3) - 4]
    return Case([x, g], [result], vals)


@probe
def probe_xtensor_gradient_api():
    """The xtensor gradient API: a 0-d labelled cost, an interior wrt, and
    cotangents and tangents given in another dim order (matched by name)."""
    import numpy as np
    import pytensor.xtensor as px

    api = API["xtensor_gradient"]
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 3))
    h = px.math.exp(x * 0.5) * x
    h.name = "h"
    y = px.math.sin(h) * px.as_xtensor(np.arange(9.0).reshape(3, 3), dims=("a", "b"))
    z = (h * x.transpose("b", "a")).sum("b")
    c = px.xtensor("c", dims=("b", "a"), shape=(3, 3))
    d = px.xtensor("d", dims=("a",), shape=(3,))
    t = px.xtensor("t", dims=("b", "a"), shape=(3, 3))
    grads = api.grad((y * z).sum(), [x, h])
    [pulled] = api.pullback([y, z], [x], [c, d])
    pushed = api.pushforward([y, z], x, t)
    vals = [
        np.linspace(-1, 1, 9).reshape(3, 3),
        np.arange(9.0).reshape(3, 3) - 4,
        np.linspace(0.5, 1.5, 3),
        np.linspace(1, -1, 9).reshape(3, 3),
    ]
    return Case([x, c, d, t], [*grads, pulled, *pushed], vals)


@probe
def probe_error_xtensor_gradient_plain_cotangent():
    """The xtensor gradient API refuses a plain cotangent for a labelled output."""
    import pytensor.tensor as pt

    x, y = _square_output()
    g = pt.matrix("g", shape=(3, 3))
    return Case([x, g], [API["xtensor_gradient"].pullback(y, x, g)], [])


def _vectorize_cost(x):
    import numpy as np
    import pytensor.xtensor as px

    w = px.as_xtensor(np.array([0.5, -1.0, 2.0]), dims=("a",))
    return (px.math.sin(x * w) * px.math.exp(x.sum("a") * 0.2) + x**3).sum().values


@probe
def probe_vectorize_grad_xtensor():
    """The xtensor ``vectorize_graph`` of a lazy gradient, batched along a new dim."""
    import pytensor.tensor as pt
    import pytensor.xtensor as px
    from pytensor.xtensor import vectorization

    x = px.xtensor("x", dims=("a",), shape=(3,))
    [g] = pt.grad(_vectorize_cost(x), [x])
    xb = px.xtensor("xb", dims=("a", "b"), shape=(3, 2))
    [gb] = vectorization.vectorize_graph([g], {x: xb})
    return Case([xb], [gb], [_rng(4).normal(size=(3, 2))])


@probe
def probe_vectorize_grad_replace():
    """``pytensor.graph.replace.vectorize_graph`` of a lazy gradient wrt a plain leaf."""
    import pytensor.tensor as pt
    import pytensor.xtensor as px
    from pytensor.graph.replace import vectorize_graph

    t = pt.tensor("t", shape=(3,))
    g = pt.grad(_vectorize_cost(px.as_xtensor(t, dims=("a",))), t)
    tb = pt.tensor("tb", shape=(2, 3))
    [gb] = vectorize_graph([g], {t: tb})
    return Case([tb], [gb], [_rng(5).normal(size=(2, 3))])


@probe
def probe_vectorize_grad_replace_conversions_outside():
    """``pytensor.graph.replace.vectorize_graph`` of a plain gradient whose lazy Op
    reads the user's conversions (a mean's size, a ``.values`` round trip)."""
    import pytensor.tensor as pt
    import pytensor.xtensor as px
    from pytensor.graph.replace import vectorize_graph

    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    back = px.as_xtensor(pt.tanh(x.values), dims=("a",))
    cost = (px.math.exp(0.1 * x.mean("a")) + px.math.exp(back) * x).sum().values
    g = pt.grad(cost, t)
    tb = pt.tensor("tb", shape=(2, 3))
    [gb] = vectorize_graph([g], {t: tb})
    return Case([tb], [gb], [_rng(6).normal(size=(2, 3))])


@probe
def probe_error_vectorize_forward_conversion():
    """PyTensor's own refusal: a forward conversion of a batched plain tensor has
    no name for its new dim (unchanged by the patch)."""
    import pytensor.tensor as pt
    import pytensor.xtensor as px
    from pytensor.graph.replace import vectorize_graph

    t = pt.tensor("t", shape=(3,))
    y = px.math.exp(px.as_xtensor(t, dims=("a",)))
    vectorize_graph([y], {t: pt.tensor("tb", shape=(2, 3))})


@probe
def probe_scan_step_grad():
    """A user's Scan whose step takes ``pt.grad`` of a labelled expression (a LazyPullback)."""
    import pytensor
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    xt = pt.matrix("x", shape=(5, 4))
    wt = pt.vector("w", shape=(4,))

    def step(row, w):
        r = px.as_xtensor(row, dims=("b",))
        lw = px.as_xtensor(w, dims=("b",))
        c = (px.math.tanh(r * lw) * px.math.exp(lw)).sum().values
        return pt.grad(c, w)

    rows = pytensor.scan(step, sequences=[xt], non_sequences=[wt], return_updates=False)
    rng = _rng(6)
    return Case([xt, wt], [rows], [rng.normal(size=(5, 4)), rng.normal(size=4)])


@probe
def probe_grad_through_scan():
    """``pt.grad`` of a user's Scan over xtensor Ops (its gradient is a Scan too)."""
    import pytensor
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    xt = pt.matrix("x", shape=(5, 4))
    wt = pt.vector("w", shape=(4,))

    def step(row, acc, w):
        r = px.as_xtensor(row, dims=("b",))
        lw = px.as_xtensor(w, dims=("b",))
        return acc + (px.math.tanh(r * lw) * px.math.exp(lw)).sum().values

    out = pytensor.scan(
        step, sequences=[xt], outputs_info=[pt.zeros(())], non_sequences=[wt],
        return_updates=False,
    )
    cost = out[-1] ** 2
    rng = _rng(7)
    return Case([xt, wt], [cost, pt.grad(cost, wt)], [rng.normal(size=(5, 4)), rng.normal(size=4)])


@probe
def probe_doc_how_it_works():
    """The example of doc/how_it_works.md (whose dprint the page shows)."""
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    x = px.xtensor("x", dims=("obs", "feature"), shape=(5, 3))
    w = px.xtensor("w", dims=("feature",), shape=(3,))
    loss = (px.math.tanh(px.dot(x, w, dim="feature")) ** 2).mean("obs").values
    loss.name = "loss"
    rng = _rng(8)
    return Case([x, w], [pt.grad(loss, w)], [rng.normal(size=(5, 3)), rng.normal(size=3)])


# Errors ---------------------------------------------------------------------


@probe
def probe_error_random_draw():
    """A gradient through a random draw's parameter: NullTypeGradError from pt.grad."""
    import numpy as np
    import pytensor
    import pytensor.tensor as pt
    import pytensor.xtensor as px
    import pytensor.xtensor.random as pxr

    mu_t = pt.tensor("mu", shape=(3,))
    mu = px.as_xtensor(mu_t, dims=("a",))
    rng = pytensor.shared(np.random.default_rng(42), name="rng")
    z = pxr.normal(mu, 1, extra_dims={"c": 2}, rng=rng)
    cost = (z * mu).sum().values
    return Case([mu_t], [pt.grad(cost, mu_t)], [np.zeros(3)])


def _square_output():
    import numpy as np
    import pytensor.xtensor as px

    x = px.xtensor("x", dims=("a", "b"), shape=(3, 3))
    y = px.math.exp(x) * px.as_xtensor(np.arange(9.0).reshape(3, 3), dims=("a", "b"))
    y.name = "y"
    return x, y


@probe
def probe_error_cotangent_dims():
    """A cotangent whose dims are not the output's: TypeError naming both."""
    import pytensor.gradient as gradient
    import pytensor.xtensor as px

    x, y = _square_output()
    wrong = px.xtensor("g", dims=("a", "c"), shape=(3, 3))
    return Case([x, wrong], [gradient.pullback(y, x, wrong)], [])


@probe
def probe_error_plain_cotangent():
    """A plain tensor cotangent for a labelled output: TypeError saying what to do."""
    import pytensor.gradient as gradient
    import pytensor.tensor as pt

    x, y = _square_output()
    g = pt.matrix("g", shape=(3, 3))
    return Case([x, g], [gradient.pullback(y, x, g)], [])


@probe
def probe_error_non_scalar_cost():
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    return Case([x], [pt.grad((x**2).sum("a"), x)], [])


def _unlowered_xop():
    from pytensor.graph.basic import Apply
    from pytensor.xtensor.basic import XOp

    class UnloweredXOp(XOp):
        """An XOp subclass for which nobody registered a lowering."""

        __props__ = ()

        def make_node(self, x):
            return Apply(self, [x], [x.type()])

    return UnloweredXOp()


@probe
def probe_error_no_lowering():
    """An XOp without a lowering: pt.grad is lazy, compiling the gradient fails."""
    import numpy as np
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    x = px.xtensor("x", dims=("a",), shape=(3,))
    y = _unlowered_xop()(px.math.exp(x))
    y.name = "mystery"
    return Case([x], [pt.grad(y.sum().values, x)], [np.ones(3)])


@probe
def probe_error_undefined_once_lowered():
    """d/d(order) of the Bessel function: known only once the region is lowered."""
    import numpy as np
    import pytensor.tensor as pt
    import pytensor.xtensor as px

    o = px.xtensor("o", dims=("k",), shape=(3,))
    z = px.as_xtensor(np.array([0.5, 1.0, 2.0]), dims=("k",))
    cost = px.math.log(px.math.iv(o, z)).sum().values
    return Case([o], [pt.grad(cost, o)], [np.ones(3)])


# README ---------------------------------------------------------------------


def readme_blocks(text: str | None = None) -> list[str]:
    """The ``.. code-block:: python`` blocks of README.rst, dedented."""
    text = README.read_text() if text is None else text
    blocks = []
    for match in re.finditer(r"(?m)^\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", text):
        blocks.append(textwrap.dedent(match[1]).strip() + "\n")
    return blocks


def for_form(source: str, form: str) -> str:
    """`source` as run in `form`: without its import of the add-on in the patched form."""
    return ADDON_IMPORT.sub("", source) if form == "patched" else source


def run_readme_block(source: str, form: str) -> dict:
    result: dict = {}
    out = io.StringIO()
    namespace = {"__name__": "__readme__"}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(for_form(source, form), "README.rst", "exec"), namespace)
    except Exception as exc:  # noqa: BLE001  (recorded, compared)
        result["error"] = describe_error("run", exc)
    result["stdout"] = out.getvalue()
    # The functions it compiled (in PyTensor's default mode, as a reader would).
    for name, value in namespace.items():
        if callable(value) and hasattr(getattr(value, "maker", None), "fgraph"):
            result[f"function[{name}]"] = pytensor_dprint(value)
    return result


def pytensor_dprint(obj) -> str:
    import pytensor

    return pytensor.dprint(obj, file="str", print_type=True)


# --------------------------------------------------------------------------- running


def describe_error(stage: str, exc: BaseException) -> str:
    bases = [
        f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__[1:]
        if c not in (object, BaseException, Exception)
    ]
    lines = [
        f"stage: {stage}",
        f"type: {type(exc).__module__}.{type(exc).__qualname__}",
        f"bases: {', '.join(bases)}",
        "message:",
        str(exc),
    ]
    return "\n".join(lines)


def fmt_values(values) -> str:
    import numpy as np

    lines = []
    for value in values:
        a = np.asarray(value)
        if a.dtype.kind in "fc":
            flat = " ".join(f"{v:.10g}" for v in a.ravel())
        else:
            flat = " ".join(str(v) for v in a.ravel())
        lines.append(f"{a.dtype} {a.shape}: {flat}")
    return "\n".join(lines)


ENVIRONMENT_WARNINGS = ("could not link to a BLAS installation",)
"""Warnings about the machine, not the form (PyTensor warns once per process)."""


@contextlib.contextmanager
def capture_log():
    """Collect PyTensor's log records (WARNING and up) and Python warnings."""
    records: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    handler = Handler(level=logging.WARNING)
    logger = logging.getLogger("pytensor")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        records.extend(
            f"{w.category.__name__}: {w.message}" for w in caught
            if not any(text in str(w.message) for text in ENVIRONMENT_WARNINGS)
        )
    finally:
        logger.removeHandler(handler)


def run_probe(build, compile_modes: dict) -> dict:
    import pytensor

    result: dict = {}
    with capture_log() as log:
        try:
            case = build()
        except Exception as exc:  # noqa: BLE001  (recorded, compared)
            result["error"] = describe_error("build", exc)
        else:
            result["types"] = "\n".join(str(o.type) for o in case.outputs)
            result["graph"] = pytensor_dprint(case.outputs)
            if case.expand:
                try:
                    expanded = API["expand_lazy_pullbacks"](case.outputs)
                    result["expanded"] = pytensor_dprint(expanded)
                except Exception as exc:  # noqa: BLE001
                    result["error[expanded]"] = describe_error("expand_lazy_pullbacks", exc)
            for name, mode in compile_modes.items():
                try:
                    fn = pytensor.function(
                        case.inputs, case.outputs, mode=mode, on_unused_input="ignore"
                    )
                except Exception as exc:  # noqa: BLE001
                    result[f"error[{name}]"] = describe_error("compile", exc)
                    continue
                result[f"compiled[{name}]"] = pytensor_dprint(fn)
                try:
                    result[f"values[{name}]"] = fmt_values(fn(*case.values))
                except Exception as exc:  # noqa: BLE001
                    result[f"error[{name}]"] = describe_error("run", exc)
    result["log"] = "\n".join(log)
    return result


def versions() -> dict:
    import importlib.metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("pytensor", "numpy", "scipy", "numba"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def probe_names() -> list[str]:
    return [*PROBES, *(f"readme[{i}]" for i in range(len(readme_blocks())))]


def collect(form: str, names: list[str] | None = None) -> dict:
    """Run the probes (all, or `names`) in this process, in `form`."""
    setup_form(form)
    compile_modes = modes()
    gc.collect()
    gc.freeze()  # what the imports made: not walked by each probe's collection below
    blocks = readme_blocks()
    selected = names or probe_names()
    results: dict = {}
    seconds: dict = {}
    for name in selected:
        # PyTensor interns frozen graphs (FrozenApply) in a weak cache that hands
        # out previously seen equal constants: which one a graph gets depends on
        # what earlier probes left alive.  Collect their cyclic garbage first, so
        # a probe's graph does not depend on when the collector last ran.
        gc.collect()
        start = time.monotonic()
        if name.startswith("readme["):
            results[name] = run_readme_block(blocks[int(name[7:-1])], form)
        elif name in PROBES:
            results[name] = run_probe(PROBES[name], compile_modes)
        else:
            raise SystemExit(f"compare_forms: no probe {name!r} (see --list)")
        seconds[name] = round(time.monotonic() - start, 2)
    return {"form": form, "versions": versions(), "probes": results, "seconds": seconds}


# --------------------------------------------------------------------------- comparing


ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+\b")


def normalise(text: str, form: str) -> str:
    """Blank memory addresses; in the add-on's results, module paths as in the tree."""
    text = ADDRESS.sub("0x?", text)
    if form == "addon":
        sys.path.insert(0, str(SCRIPTS))
        try:
            import upstream
        finally:
            sys.path.remove(str(SCRIPTS))
        text = upstream.rewrite_names(text)
    return text


@dataclass
class Difference:
    probe: str
    field: str
    line: int  # 1-based, within the field
    addon: str | None
    patched: str | None

    def __str__(self) -> str:
        return (
            f"{self.probe}: {self.field}, line {self.line}:\n"
            f"    add-on:  {self.addon if self.addon is not None else '(absent)'}\n"
            f"    patched: {self.patched if self.patched is not None else '(absent)'}"
        )


def first_difference(a: str | None, b: str | None) -> tuple[int, str | None, str | None] | None:
    if a == b:
        return None
    la = [] if a is None else a.splitlines() or [""]
    lb = [] if b is None else b.splitlines() or [""]
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x != y:
            return i + 1, x, y
    return len(la), a, b  # differ only in a trailing newline


def compare(addon: dict, patched: dict) -> list[Difference]:
    """The first differing line of each differing field of each probe."""
    diffs = []
    names = list(dict.fromkeys([*addon["probes"], *patched["probes"]]))
    for name in names:
        a = addon["probes"].get(name)
        b = patched["probes"].get(name)
        if a is None or b is None:
            diffs.append(Difference(name, "(probe)", 0, "ran" if a else None, "ran" if b else None))
            continue
        for key in dict.fromkeys([*a, *b]):
            va = None if key not in a else normalise(a[key], "addon")
            vb = None if key not in b else normalise(b[key], "patched")
            found = first_difference(va, vb)
            if found is not None:
                diffs.append(Difference(name, key, *found))
                break  # the first differing field of a probe is enough
    return diffs


def unexpected(results: dict) -> list[str]:
    """Probes of one form that fail where they should not, or do not where they should."""
    problems = []
    for name, result in results["probes"].items():
        errors = [key for key in result if key.startswith("error")]
        if name.startswith("error_") and not errors:
            problems.append(f"{name}: raised nothing")
        elif not name.startswith("error_") and errors:
            message = result[errors[0]].split("message:\n", 1)[-1].splitlines()
            problems.append(f"{name}: {errors[0]}: {message[0] if message else ''}")
    return problems


def summary(addon: dict, patched: dict, diffs: list[Difference]) -> str:
    n = len(set(addon["probes"]) | set(patched["probes"]))
    return f"forms: {n} probes, " + (f"{len(diffs)} differ" if diffs else "identical")


def version_mismatches(addon: dict, patched: dict) -> list[str]:
    return [
        f"{k}: add-on {addon['versions'].get(k)}, patched {patched['versions'].get(k)}"
        for k in dict.fromkeys([*addon["versions"], *patched["versions"]])
        if addon["versions"].get(k) != patched["versions"].get(k)
    ]


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probes", nargs="*", help="probes to run (default: all)")
    parser.add_argument("--form", choices=FORMS, default=os.environ.get(ENV_VAR))
    parser.add_argument("--out", type=Path, help="write the results (JSON) here, not to stdout")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("ADDON", "PATCHED"))
    parser.add_argument("--list", action="store_true", help="list the probes")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(probe_names()))
        return 0
    if args.compare:
        addon, patched = (json.loads(p.read_text()) for p in args.compare)
        for line in version_mismatches(addon, patched):
            print(f"note: versions differ: {line}")
        diffs = compare(addon, patched)
        for diff in diffs:
            print(diff)
        problems = [
            f"{form}: {problem}"
            for form, results in (("add-on", addon), ("patched", patched))
            for problem in unexpected(results)
        ]
        for problem in problems:
            print(f"unexpected: {problem}")
        print(summary(addon, patched, diffs))
        return 1 if diffs or problems else 0
    if args.form is None:
        parser.error(f"give --form or set ${ENV_VAR}")
    results = collect(args.form, args.probes)
    # Not sorted: in run order, a probe's first differing field is its earliest stage.
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
