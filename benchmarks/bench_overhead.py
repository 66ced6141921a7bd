"""What the integration costs programs that have no xtensor at all.

Run with ``.venv/bin/python benchmarks/bench_overhead.py [--quick] [--rounds N]
[--mode MODE] [--patched TREE]``.  For each program below it builds the graph afresh, takes
``pt.grad(cost, params)`` and compiles ``pytensor.function(inputs, [cost,
*grads])``, in alternating rounds with the integration enabled (as after
``import pytensor_lazy_pullback``) and disabled (``integration_disabled()``,
PyTensor's own functions), and prints the median times of each side and the
ratio enabled / disabled:

* ``scan_rnn``: a Scan RNN, ``tanh(W h + U x_t)``, with a scalar loss;
* ``ofg``: an OpFromGraph used twice;
* ``chain``: a deep elementwise chain (alternating ``sin``, ``exp``, ``mul``);
* ``mlp``: a two-hidden-layer MLP with a softmax cross-entropy.

It also checks that both sides compile to the same number of apply nodes and
give the same numbers.  With ``--patched TREE`` (a PyTensor tree with the
in-tree patch applied, e.g. the one ``scripts/pytensor_gate.py --keep``
leaves), the sides are that tree (on ``PYTHONPATH``) and the installed
PyTensor without the add-on instead: each round of each side runs in a fresh
process (one warm-up round, then the measured one), alternating.  Absolute
times are noise on a shared 2-core machine; the ratios of one run are the
measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.builders import OpFromGraph


def scan_rnn(size):
    steps, n = size
    xs = pt.matrix("xs", shape=(steps, n))
    w = pt.matrix("w", shape=(n, n))
    u = pt.matrix("u", shape=(n, n))
    h0 = pt.zeros((n,))
    hs, _ = pytensor.scan(
        lambda x_t, h, w, u: pt.tanh(w @ h + u @ x_t), sequences=xs, outputs_info=h0,
        non_sequences=[w, u],
    )
    return [xs, w, u], (hs[-1] ** 2).sum(), [w, u]


def ofg(size):
    _, n = size
    a, b = pt.vector("a"), pt.vector("b")
    op = OpFromGraph([a, b], [pt.exp(a) * b + pt.sin(b)])
    x, y = pt.vector("x", shape=(n,)), pt.vector("y", shape=(n,))
    cost = op(op(x, y), x).sum()
    return [x, y], cost, [x, y]


def chain(size):
    depth, n = size
    x = pt.vector("x", shape=(n,))
    out = x
    for i in range(depth):
        out = (pt.sin, lambda v: pt.exp(v * 0.01), lambda v: v * 0.9)[i % 3](out)
    return [x], out.sum(), [x]


def mlp(size):
    _, n = size
    x = pt.matrix("x", shape=(16, n))
    y = pt.lvector("y", shape=(16,))
    w1, w2, w3 = (pt.matrix(f"w{i}", shape=(n, n)) for i in (1, 2, 3))
    h = pt.tanh(pt.tanh(x @ w1) @ w2)
    p = pt.special.softmax(h @ w3, axis=-1)
    cost = -pt.log(p[pt.arange(16), y]).mean()
    return [x, y, w1, w2, w3], cost, [w1, w2, w3]


PROGRAMS = {"scan_rnn": scan_rnn, "ofg": ofg, "chain": chain, "mlp": mlp}


def one_round(build, size, mode):
    gc.collect()
    inputs, cost, params = build(size)
    t0 = time.perf_counter()
    grads = pt.grad(cost, params)
    t1 = time.perf_counter()
    fn = pytensor.function(inputs, [cost, *grads], mode=mode)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, fn, inputs


def values_for(inputs, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for var in inputs:
        if var.type.dtype.startswith("int"):  # class labels: every program has >= 4 classes
            out.append(rng.integers(0, 4, size=var.type.shape))
        else:
            out.append(rng.normal(size=var.type.shape).astype(var.type.dtype) * 0.3)
    return out


def report(name, times, nodes, side, other) -> None:
    """Print the median times of `side` and `other`, their ratios and node counts."""
    med = {key: [statistics.median(t) for t in pair] for key, pair in times.items()}
    print(
        f"{name:9s} grad {med[side][0] * 1e3:8.1f} / {med[other][0] * 1e3:8.1f} ms"
        f" = {med[side][0] / med[other][0]:5.2f}   "
        f"compile {med[side][1] * 1e3:8.1f} / {med[other][1] * 1e3:8.1f} ms"
        f" = {med[side][1] / med[other][1]:5.2f}   "
        f"nodes {nodes[side]} / {nodes[other]}"
        + ("" if nodes[side] == nodes[other] else "   WARNING: node counts differ"),
        flush=True,
    )


def measure(name, size, rounds, mode):
    import pytensor_lazy_pullback
    from pytensor_lazy_pullback import integration_disabled

    times = {"enabled": ([], []), "disabled": ([], [])}
    fns = {}
    for _ in range(rounds):
        for side, switch in (("enabled", nullcontext), ("disabled", integration_disabled)):
            with switch():
                assert pytensor_lazy_pullback.is_enabled() == (side == "enabled")
                grad_t, compile_t, fn, inputs = one_round(PROGRAMS[name], size, mode)
            times[side][0].append(grad_t)
            times[side][1].append(compile_t)
            fns[side] = (fn, inputs)
    nodes = {side: len(fn.maker.fgraph.apply_nodes) for side, (fn, _) in fns.items()}
    values = values_for(fns["enabled"][1])
    for a, b in zip(fns["enabled"][0](*values), fns["disabled"][0](*values), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    report(name, times, nodes, "enabled", "disabled")


def child(name, size, mode) -> None:
    """One side of one round of `measure_forms`, in this (fresh) process: print JSON."""
    one_round(PROGRAMS[name], size, mode)  # warm-up
    grad_t, compile_t, fn, inputs = one_round(PROGRAMS[name], size, mode)
    results = fn(*values_for(inputs))
    print(json.dumps({
        "grad": grad_t,
        "compile": compile_t,
        "nodes": len(fn.maker.fgraph.apply_nodes),
        "values": [np.asarray(r, dtype=float).ravel().tolist() for r in results],
        "pytensor": pytensor.__file__,
        "addon": "pytensor_lazy_pullback" in sys.modules,
    }))


def measure_forms(name, size, rounds, mode, tree: Path):
    """`measure` with the patched `tree` and the installed PyTensor, fresh processes."""
    times = {"patched": ([], []), "unpatched": ([], [])}
    last = {}
    for _ in range(rounds):
        for side in ("patched", "unpatched"):
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            if side == "patched":
                env["PYTHONPATH"] = str(tree)
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, json.dumps(size), mode or ""],
                env=env, capture_output=True, text=True, check=True, cwd=tree.parent,
            ).stdout.splitlines()[-1]
            result = json.loads(out)
            assert not result["addon"], "the add-on was imported"
            assert Path(result["pytensor"]).is_relative_to(tree) == (side == "patched"), result
            times[side][0].append(result["grad"])
            times[side][1].append(result["compile"])
            last[side] = result
    for a, b in zip(last["patched"]["values"], last["unpatched"]["values"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    nodes = {side: last[side]["nodes"] for side in last}
    report(name, times, nodes, "patched", "unpatched")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, smaller programs")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (7)")
    parser.add_argument("--mode", default=None, help="compilation mode (PyTensor's default)")
    parser.add_argument(
        "--patched", type=Path, default=None,
        help="a patched PyTensor tree: compare it with the installed PyTensor (fresh processes)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, size, mode = args.child
        child(name, tuple(json.loads(size)), mode or None)
        return
    rounds = args.rounds or (3 if args.quick else 7)
    sizes = {
        "scan_rnn": (10, 8) if args.quick else (20, 16),
        "ofg": (0, 8),
        "chain": (90, 8) if args.quick else (300, 8),
        "mlp": (0, 8) if args.quick else (0, 32),
    }
    if args.patched is not None:
        tree = args.patched.resolve()
        print(f"patched / unpatched, median of {rounds} alternating rounds, mode={args.mode}")
        for name in PROGRAMS:
            measure_forms(name, sizes[name], rounds, args.mode, tree)
        return
    print(f"enabled / disabled, median of {rounds} alternating rounds, mode={args.mode}")
    for name in PROGRAMS:
        measure(name, sizes[name], rounds, args.mode)


if __name__ == "__main__":
    main()
