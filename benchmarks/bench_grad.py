"""Side-by-side benchmark: the lazy ``pt.grad`` against the lower-then-grad reference.

Run with ``./run.sh bench`` (``--quick`` for a short run).  For each graph family
and size it builds, in one process, the project's gradient
(``pt.grad(cost, wrt)`` on the un-lowered graph) and the reference
(``pt.grad(rewrite_graph(cost, include=("lower_xtensor",), clone=True), wrt)``),
and prints ratios ours / reference of

* ``grad``: wall time of building the gradient (reference: lowering + ``pt.grad``);
* ``mem``: peak memory allocated while building it (``tracemalloc``);
* ``numba``/``cvm``: compile time of ``pytensor.function(inputs, [cost, *grads])``;
* ``total``: graph-to-callable time (grad + Numba compile);
* ``run``: runtime per call (median of repeats, Numba);
* ``nodes``: apply nodes of the compiled function.

Absolute times are noise on a shared 2-core machine; ratios in one run are the
measurement.  Timings are medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.mode import get_mode
from pytensor.graph.rewriting.utils import rewrite_graph

sys.path.insert(0, str(Path(__file__).parent))
sys.setrecursionlimit(100_000)

import pytensor_lazy_pullback  # noqa: E402,F401
from graphs import FAMILIES, count_nodes  # noqa: E402


def timed(fn, repeat=1):
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_memory(fn):
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def ours_grad(inputs, cost, wrt):
    return inputs, cost, pt.grad(cost, wrt)


def reference_grad(inputs, cost, wrt):
    lowered = rewrite_graph(cost, include=("lower_xtensor",), clone=True)
    return inputs, lowered, pt.grad(lowered, wrt)


def timed_grad(make, builder, size, repeat):
    """Median time of `make` on freshly built graphs; graph building is not timed."""
    times, result = [], None
    for _ in range(repeat):
        inputs, cost, wrt, _ = builder(size)
        gc.collect()
        start = time.perf_counter()
        result = make(inputs, cost, wrt)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def grad_peak_memory(make, builder, size):
    inputs, cost, wrt, _ = builder(size)
    return peak_memory(lambda: make(inputs, cost, wrt))


def values_for(inputs, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.1, 0.9, size=i.type.shape).astype(i.type.dtype) for i in inputs]


def measure(builder, size, args):
    """Measure both sides; compile and run times are taken alternately, warm.

    Ours and the reference compile to the same kind of graph, so whichever is
    compiled first would pay for filling PyTensor's and Numba's caches: each
    side is compiled once untimed, then both are timed in alternation, and the
    medians are compared.  Runtime per call is measured the same way.
    """
    sides = {"ours": ours_grad, "ref": reference_grad}
    row, built = {}, {}
    for side, make in sides.items():
        try:
            # Once untimed, so imports and first-use caches do not count.
            make(*builder(size)[:3])
            t_grad, built[side] = timed_grad(make, builder, size, args.repeat)
            row[side] = {"grad": t_grad, "mem": grad_peak_memory(make, builder, size)}
        except RecursionError:
            row[side] = None
    if args.grad_only or row["ref"] is None or builder(size)[3] > args.compile_max_nodes:
        return row

    for mode_name in args.modes:
        mode = get_mode(mode_name)
        fns = {}
        for side, (inputs, cost, grads) in built.items():
            fns[side] = pytensor.function(inputs, [cost, *grads], mode=mode, trust_input=True)
            row[side][f"nodes_{mode_name}"] = count_nodes(fns[side].maker.fgraph.apply_nodes)
        samples = {side: [] for side in built}
        for _ in range(args.repeat):
            for side, (inputs, cost, grads) in built.items():
                gc.collect()
                start = time.perf_counter()
                pytensor.function(inputs, [cost, *grads], mode=mode, trust_input=True)
                samples[side].append(time.perf_counter() - start)
        for side in built:
            row[side][f"compile_{mode_name}"] = statistics.median(samples[side])
        if mode_name == args.modes[0]:
            vals = values_for(built["ours"][0])
            runs = {side: [] for side in built}
            for fn in fns.values():
                fn(*vals)
            for _ in range(7):
                for side, fn in fns.items():
                    runs[side].append(_per_call(fn, vals, args.calls))
            for side, fn in fns.items():
                row[side]["run"] = statistics.median(runs[side])
                row[side]["out"] = fn(*vals)
    return row


def _per_call(fn, vals, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn(*vals)
    return (time.perf_counter() - start) / calls


def ratio(a, b):
    return a / b if a is not None and b else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--grad-only", action="store_true", help="skip compilation")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--modes", nargs="+", default=["NUMBA", "CVM"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument(
        "--compile-max-nodes",
        type=int,
        default=400,
        help="compile and run only graphs with at most this many xtensor nodes",
    )
    args = parser.parse_args(argv)

    # Sizes reach ~1,000 xtensor nodes in every family (pt.grad scaling); the
    # smaller ones are also compiled and run (see --compile-max-nodes).
    sizes = {
        "chain": [10, 100, 1000] if not args.quick else [10, 100],
        "mlp": [2, 25, 330] if not args.quick else [2, 4],
        "marketing_mix": [2, 25, 250] if not args.quick else [2, 4],
        "gather": [2, 20, 200] if not args.quick else [5, 10],
    }
    compile_cols = [f"{m.lower()}" for m in args.modes]
    header = ["family", "size", "xnodes", "grad", "mem", *compile_cols, "total", "run", "nodes"]
    print(" | ".join(f"{h:>8}" for h in header))
    scaling = {}
    geo = {"total": [], "run": []}
    for family in args.families:
        builder = FAMILIES[family]
        for size in sizes[family]:
            n_x = builder(size)[3]
            row = measure(builder, size, args)
            ours, ref = row["ours"], row["ref"]
            scaling.setdefault(family, []).append((n_x, ours["grad"], ref and ref["grad"]))
            cells = [family, str(size), str(n_x)]
            if ref is None:
                cells += ["ref: RecursionError"]
                print(" | ".join(f"{c:>8}" for c in cells))
                continue
            cells += [f"{ratio(ours['grad'], ref['grad']):.3f}", f"{ratio(ours['mem'], ref['mem']):.3f}"]
            if f"compile_{args.modes[0]}" in ours:
                for m in args.modes:
                    cells.append(f"{ratio(ours[f'compile_{m}'], ref[f'compile_{m}']):.3f}")
                m0 = args.modes[0]
                total = ratio(ours["grad"] + ours[f"compile_{m0}"], ref["grad"] + ref[f"compile_{m0}"])
                run = ratio(ours["run"], ref["run"])
                geo["total"].append(total)
                geo["run"].append(run)
                cells += [f"{total:.3f}", f"{run:.3f}"]
                cells.append("/".join(f"{ours[f'nodes_{m}']}:{ref[f'nodes_{m}']}" for m in args.modes))
                for o, r in zip(ours["out"], ref["out"], strict=True):
                    np.testing.assert_allclose(o, r, rtol=1e-6, atol=1e-9)
            print(" | ".join(f"{c:>8}" for c in cells), flush=True)

    print("\npt.grad time scaling (exponent of time ~ n^k between smallest and largest size):")
    for family, points in scaling.items():
        (n0, o0, r0), (n1, o1, r1) = points[0], points[-1]
        k_ours = math.log(o1 / o0) / math.log(n1 / n0) if n1 != n0 else float("nan")
        k_ref = math.log(r1 / r0) / math.log(n1 / n0) if r0 and r1 and n1 != n0 else float("nan")
        print(f"  {family:>14}: ours n^{k_ours:.2f}, reference n^{k_ref:.2f}  ({n0} -> {n1} xtensor nodes)")
    if geo["total"]:
        gmean = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
        print(f"\ngeometric mean: total (grad + {args.modes[0]} compile) {gmean(geo['total']):.3f}, "
              f"runtime per call {gmean(geo['run']):.3f}")
    print("nodes column: ours:reference apply nodes per mode; every ratio is ours / reference.")


if __name__ == "__main__":
    main()
