"""Side-by-side benchmark: ``pt.grad`` of a float32 model under ``floatX=float64``.

Run with ``.venv/bin/python benchmarks/bench_dtypes.py`` (``--layers 40 200``
for other depths, ``--repeat`` for more runs).  The graph is the ``chain``
family of ``graphs.py``: layers of ``tanh(y * 0.9 + 0.05)`` and ``y -
y.mean("a") * 0.5`` on ``x`` with dims ("a", "b"), the cost is ``sum(y**2)``.
It is built in float64 and in float32, under PyTensor's default
``floatX=float64``, in four variants:

* ``x`` labelled (``px.xtensor``) or a plain tensor under ``px.as_xtensor``;
* constants written as Python floats, as in ``graphs.py`` (``0.9`` is a
  float64 constant, so a float32 model computes in float64 from its first
  layer on, and ``mean`` of float32 is float64), or as constants of the
  chain's dtype, each ``mean`` cast back to it (a float32 model is float32
  throughout, but inside ``mean``).

For each it prints the median wall time of ``pt.grad(cost, x)`` (ours) and of
the reference (lowering, then ``pt.grad``), their ratio, the ratio of ours in
float32 to ours in float64, the gradient's dtype (equal to the reference's,
checked), and how many ``LazyPullback``\\ s had their cotangent dtypes found
by lowering their region when the gradient was built (``lowered``), which is
what a float32 model used to pay for on every region.  Graph building is not
timed.  Absolute times are noise on a shared machine; ratios in one run are
the measurement.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
from pytensor.graph.rewriting.utils import rewrite_graph

sys.path.insert(0, str(Path(__file__).parent))
sys.setrecursionlimit(100_000)

import pytensor_lazy_pullback.rewriting as rewriting  # noqa: E402
from graphs import count_xops  # noqa: E402


def chain(layers: int, dtype: str, labelled: bool, typed_constants: bool):
    """``(wrt, cost)``: the ``chain`` family of ``graphs.py`` in `dtype`.

    With `typed_constants`, each constant is of `dtype` and each mean is cast
    back to it (else constants are Python floats, as in ``graphs.py``).
    """

    def const(value):
        if typed_constants:
            return px.as_xtensor(np.asarray(value, dtype=dtype), dims=())
        return value

    t = pt.tensor("t", shape=(8, 16), dtype=dtype)
    x = (
        px.xtensor("x", dims=("a", "b"), shape=(8, 16), dtype=dtype)
        if labelled
        else px.as_xtensor(t, dims=("a", "b"))
    )
    y = x
    for i in range(layers):
        if i % 2 == 0:
            y = pxm.tanh(y * const(0.9) + const(0.05))
        else:
            mean = y.mean("a")
            y = y - (mean.astype(dtype) if typed_constants else mean) * const(0.5)
    return (x if labelled else t), (y**2).sum().values


class LoweringCounter:
    """Counts the calls of ``lowered_cotangent_dtypes`` (a grad-time lowering each)."""

    def __init__(self):
        self.calls = 0
        self._find = rewriting.lowered_cotangent_dtypes

    def __call__(self, op, cotangent_types):
        self.calls += 1
        return self._find(op, cotangent_types)


def ours_grad(wrt, cost):
    return pt.grad(cost, wrt)


def reference_grad(wrt, cost):
    return pt.grad(rewrite_graph(cost, include=("lower_xtensor",), clone=True), wrt)


def timed_grad(make, build, repeat):
    """Median time of `make` on freshly built graphs, and its last result."""
    make(*build())  # once untimed: imports and first-use caches
    times, result = [], None
    for _ in range(repeat):
        wrt, cost = build()
        gc.collect()
        start = time.perf_counter()
        result = make(wrt, cost)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[40, 200])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if pytensor.config.floatX != "float64":
        parser.error("run under PyTensor's default floatX=float64")

    counter = LoweringCounter()
    rewriting.lowered_cotangent_dtypes = counter
    header = [
        "x",
        "constants",
        "layers",
        "xnodes",
        "dtype",
        "ours ms",
        "ref ms",
        "ours/ref",
        "f32/f64",
        "grad",
        "lowered",
    ]
    print(" | ".join(f"{h:>9}" for h in header))
    for labelled in (True, False):
        for typed_constants in (False, True):
            for layers in args.layers:
                float64_time = None
                for dtype in ("float64", "float32"):

                    def build(dtype=dtype, layers=layers):
                        return chain(layers, dtype, labelled, typed_constants)

                    counter.calls = 0
                    ours, grad = timed_grad(ours_grad, build, args.repeat)
                    lowered = counter.calls // (args.repeat + 1)
                    ref, ref_grad = timed_grad(reference_grad, build, args.repeat)
                    assert grad.type.dtype == ref_grad.type.dtype, (
                        grad.type,
                        ref_grad.type,
                    )
                    if dtype == "float64":
                        float64_time = ours
                    wrt, cost = build()
                    cells = [
                        "labelled" if labelled else "as_xtensor",
                        dtype if typed_constants else "python",
                        str(layers),
                        str(count_xops([wrt], [cost])),
                        dtype,
                        f"{ours * 1e3:.1f}",
                        f"{ref * 1e3:.1f}",
                        f"{ours / ref:.3f}",
                        f"{ours / float64_time:.2f}",
                        grad.type.dtype,
                        str(lowered),
                    ]
                    print(" | ".join(f"{c:>9}" for c in cells), flush=True)
    print(
        "\nours/ref: pt.grad time over the reference's (lowering + pt.grad); f32/f64: "
        "ours in float32 over ours in float64; lowered: regions lowered at pt.grad "
        "time to find cotangent dtypes, per gradient."
    )


if __name__ == "__main__":
    main()
