#!/usr/bin/env python
"""The in-tree patch as an ordered series of patches, one feature each.

Usage::

    python scripts/upstream.py --series SRC OUTDIR

writes ``OUTDIR/0001-<slug>.patch``, ... (``git am``-able, in PyTensor's commit
style: a short imperative subject and a body saying why).  Applied in order to
SRC they give exactly the tree of the single patch (``scripts/upstream.py SRC
OUT``): the last step's files are the single patch's files, byte for byte.

What each step adds is declared in :data:`STEPS`, by *owner keys*:

``"op"``
    every top-level definition of the package module ``op.py`` (in its
    in-tree home) that no more specific key claims;
``"op:LazyPushforward"``, ``"op:LazyPullback.make_node"``
    one definition (function, class, module-level name, or a statement named
    by its first line), or one method of a class;
``"test_hessian.py"``, ``"test_grad_basic.py:test_rename"``
    a carried test file (:data:`upstream.TESTS`), or one of its definitions;
``"helpers"``, ``"conftest"``, ``"doc"``
    the tests' helper module, their ``conftest.py`` and the documentation
    page (and its index entry);
``"pytensor/gradient.py:jacobian"``
    an edit of one of SRC's files, by the label `upstream.SourceFile` gives it
    (the function or ``Class.method`` it is in).

A definition belongs to the step of its most specific key; every definition,
file and edit must have one, or the series is refused with the list of what
has none.  A step's files hold the definitions of that step and the earlier
ones, in their final order; ``ruff check --fix`` (run by `upstream.pre_commit`
as on the single patch) then drops the imports nothing uses yet.  Where code
of an earlier step reads differently before a later one (a dispatch to a
feature not added yet), :attr:`Step.earlier` gives the earlier text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import upstream

AUTHOR = "PyTensor lazy pullback <pytensor-lazy-pullback@users.noreply.github.com>"
DATE = "Thu, 3 Dec 2026 00:00:00 +0000"
"""Fixed, so that the series is reproducible byte for byte."""


@dataclass(frozen=True)
class Step:
    """One patch of the series."""

    slug: str
    subject: str
    body: str
    owners: tuple[str, ...]
    earlier: tuple[tuple[str, str, str], ...] = field(default=())
    """``(owner key of a file, text in this step, text in the steps before)``."""


STEPS: list[Step] = []  # filled in below the machinery


# --------------------------------------------------------------------------- the steps' trees


@dataclass
class Owners:
    """Which step owns each definition, file and edit."""

    steps: list[Step]
    by_key: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        for index, step in enumerate(self.steps):
            for key in step.owners:
                if key in self.by_key:
                    raise upstream.AnchorError(
                        f"scripts/upstream_series.py: {key}: owned by two steps "
                        f"({self.steps[self.by_key[key]].slug}, {step.slug})"
                    )
                self.by_key[key] = index

    def step_of(self, file_key: str, name: str | None = None) -> int | None:
        """The step of `name` in the file `file_key` (or of the file itself)."""
        if name is not None:
            for key in (f"{file_key}:{name}", f"{file_key}:{name.split('.')[0]}"):
                if key in self.by_key:
                    return self.by_key[key]
        return self.by_key.get(file_key)


def file_keys(src: Path, edited, new_files: dict[str, str]) -> dict[str, str]:
    """In-tree path of each new file -> its owner key (``op``, ``test_x.py``, ``helpers``, ...)."""
    keys = {home: name.removesuffix(".py") for name, home in upstream.MODULES.items()}
    keys |= {f"{upstream.TEST_DIR}/{target}": name for name, target in upstream.TESTS.items()}
    keys[upstream.DOC_PAGE] = "doc"
    keys[f"{upstream.TEST_DIR}/conftest.py"] = "conftest"
    for rel in new_files:
        if rel not in keys and rel.startswith(upstream.TEST_DIR):
            keys[rel] = "helpers"
    missing = sorted(set(new_files) - set(keys))
    if missing:
        raise upstream.AnchorError(f"{missing[0]}: (file): no owner key")
    return keys


def check_owned(owners: Owners, edited, new_files: dict[str, str], keys: dict[str, str]) -> None:
    """Every definition, file and edit has a step, and every key names something."""
    unowned, known = [], set()
    for rel, text in new_files.items():
        key = keys[rel]
        known.add(key)
        names = upstream.definitions(text) if rel.endswith(".py") else []
        known.update(f"{key}:{n}" for n in names)
        if owners.step_of(key) is None:
            unowned += [f"{key}:{n}" for n in names if owners.step_of(key, n) is None]
            if not names:
                unowned.append(key)
    for sf in edited:
        for label in sf.labels:
            known.add(label)
            if label not in owners.by_key:
                unowned.append(label)
    if unowned:
        raise upstream.AnchorError(
            "scripts/upstream_series.py: STEPS: no step owns " + ", ".join(sorted(set(unowned)))
        )
    stale = sorted(set(owners.by_key) - known)
    if stale:
        raise upstream.AnchorError(
            "scripts/upstream_series.py: STEPS: owns what the patch does not have: "
            + ", ".join(stale)
        )


def step_files(src: Path) -> list[dict[str, str]]:
    """For each step, the patch's files as they are after it (before `pre_commit`).

    A file absent from a step's dict is SRC's (or does not exist yet).
    """
    edited, new_files = upstream.build_tree(src)
    keys = file_keys(src, edited, new_files)
    owners = Owners(STEPS)
    check_owned(owners, edited, new_files, keys)
    by_key = {key: rel for rel, key in keys.items()}
    for step in STEPS:
        for key, final, _ in step.earlier:
            if final not in new_files.get(by_key.get(key), ""):
                raise upstream.AnchorError(
                    f"scripts/upstream_series.py: {step.slug}: earlier text for {key} "
                    f"not found: {final.splitlines()[0]!r}"
                )
    trees = []
    for index in range(len(STEPS)):
        tree: dict[str, str] = {}
        for sf in edited:
            labels = {label for label in sf.labels if owners.by_key[label] <= index}
            if labels:
                tree[sf.rel] = sf.result(labels)
        for rel, text in new_files.items():
            key = keys[rel]
            if rel.endswith(".py"):

                def keep(name, key=key):
                    step = owners.step_of(key, name)
                    return step is not None and step <= index

                restricted = upstream.restrict(text, keep)
            else:
                step = owners.step_of(key)
                restricted = text if step is not None and step <= index else None
            if restricted is not None:
                tree[rel] = restricted
        for later in reversed(STEPS[index + 1 :]):
            for key, final, before in later.earlier:
                rel = by_key.get(key, key)
                if rel in tree:  # (the text is not there if what holds it is not yet)
                    tree[rel] = tree[rel].replace(final, before)
        trees.append(tree)
    return trees


# --------------------------------------------------------------------------- the series


def format_patch(number: int, total: int, step: Step, diff: str) -> str:
    """One ``git format-patch``-style mail."""
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        f"From: {AUTHOR}\n"
        f"Date: {DATE}\n"
        f"Subject: [PATCH {number}/{total}] {step.subject}\n\n"
        f"{step.body.strip()}\n"
        "---\n"
        f"{diff}"
        "-- \n"
        "pytensor-lazy-pullback\n\n"
    )


def lines_added(diff: str, src: Path) -> dict[str, int]:
    """Added lines by kind (modules, tests, docs) and lines changed in SRC's own files."""
    counts = {"modules": 0, "tests": 0, "doc": 0, "changed_in_pytensor": 0}
    for chunk in re.split(r"(?m)^(?=diff --git )", diff):
        if not chunk:
            continue
        rel = chunk.split()[2].removeprefix("a/")
        changes = [
            line for line in chunk.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        if (src / rel).is_file():
            counts["changed_in_pytensor"] += len(changes)
            continue
        kind = "tests" if rel.startswith("tests/") else "doc" if rel.startswith("doc/") else "modules"
        counts[kind] += sum(1 for line in changes if line.startswith("+"))
    return counts


def signature(problem: str) -> str:
    """A ruff diagnostic without its line and column."""
    return re.sub(r":\d+:\d+:", ":", problem)


def build_series(src: Path) -> list[tuple[Step, str, dict[str, int]]]:
    """``(step, mail, added lines)`` for each step.  Raises `upstream.AnchorError`."""
    trees = step_files(src)
    patch, size = upstream.build_patch(src)
    # Problems of the single patch are reported by it; a step may not add others.
    known = {signature(problem) for problem in size["ruff_problems"]}
    previous: dict[str, str] = {}
    originals = {}
    series = []
    for index, (step, tree) in enumerate(zip(STEPS, trees, strict=True)):
        cleaned, problems = upstream.pre_commit(src, tree)
        problems = [p for p in problems if signature(p) not in known]
        if problems:
            raise upstream.AnchorError(
                f"scripts/upstream_series.py: {step.slug}: ruff finds "
                + "; ".join(problems[:5])
            )
        chunks = []
        for rel in sorted(set(cleaned) | set(previous)):
            if rel not in originals:
                originals[rel] = (src / rel).read_text() if (src / rel).is_file() else None
            old = previous.get(rel, originals[rel])
            new = cleaned.get(rel, originals[rel])
            if old != new:
                chunks.append(upstream.unified(rel, old, new))
        if not chunks:
            raise upstream.AnchorError(f"scripts/upstream_series.py: {step.slug}: empty step")
        diff = "".join(chunks)
        mail = format_patch(index + 1, len(STEPS), step, diff)
        series.append((step, mail, lines_added(diff, src)))
        previous = cleaned
    # In the single patch's order: SRC's files, then the new ones.
    order = sorted(previous, key=lambda rel: (originals[rel] is None, rel))
    final = "".join(upstream.unified(rel, originals[rel], previous[rel]) for rel in order)
    if final != patch:
        raise upstream.AnchorError(
            "scripts/upstream_series.py: (series): the steps together differ from the single patch"
        )
    return series


def write_series(src: Path, outdir: Path) -> list[Path]:
    series = build_series(src)
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("[0-9][0-9][0-9][0-9]-*.patch"):
        old.unlink()
    paths = []
    for index, (step, mail, counts) in enumerate(series, start=1):
        path = outdir / f"{index:04d}-{step.slug}.patch"
        path.write_text(mail)
        paths.append(path)
        print(
            f"{path.name}: {step.subject} (+{counts['modules']} modules, +{counts['tests']} "
            f"tests, +{counts['doc']} doc; {counts['changed_in_pytensor']} lines changed in "
            "PyTensor's files)"
        )
    return paths


# --------------------------------------------------------------------------- the series' steps

GRADIENT = "pytensor/gradient.py"
BASIC = "pytensor/xtensor/basic.py"
INDEXING = "pytensor/xtensor/indexing.py"
SHAPE = "pytensor/xtensor/shape.py"
VECTORIZATION = "pytensor/xtensor/vectorization.py"

STEPS += [
    Step(
        "xtensor-rename-pullback-and-in-same-class",
        "Add the xtensor methods gradients need and fix Rename.pullback",
        """\
`Rename.pullback` renamed a dim called "dims" and assumed the cotangent's
dims in the output's order; it now aligns the cotangent to the renamed
output by dim name and renames it back.  `XTensorType` inherited
`Type.in_same_class` (equality); like `TensorType`'s, it now accepts a type
that only knows more static lengths, so a Scan rebuilt with a refined
input type accepts it.  `XTensorVariable` gets `zeros_like` and
`ones_like`, as `TensorVariable` has, which `pytensor.gradient` asks of a
variable for a zero cotangent or a cost's seed.  All are needed by
gradients of xtensor graphs and stand on their own.
""",
        (
            f"{BASIC}:Rename.pullback",
            "pytensor/xtensor/type.py:XTensorType.in_same_class",
            "pytensor/xtensor/type.py:XTensorVariable.zeros_like",
            "pytensor/xtensor/type.py:XTensorVariable.ones_like",
            f"{BASIC}:align_xtensor_cotangent",
            "test_xtensor_methods.py",
            "conftest",
        ),
    ),
    Step(
        "iterative-populate-var-to-app-to-idx",
        "Collect a gradient's nodes without recursion",
        """\
`_populate_var_to_app_to_idx` walked the graph recursively, so `grad` of a
graph deeper than the recursion limit failed before any pullback was
built.  The same walk with an explicit stack gives the same map.
""",
        (
            f"{GRADIENT}:_populate_var_to_app_to_idx",
            "op:populate_var_to_app_to_idx",
            "tests/test_gradient.py:(module)",
        ),
    ),
    Step(
        "lazy-pullback",
        "Differentiate un-lowered xtensor graphs with one lazy pullback per region",
        """\
`pytensor.grad` through an xtensor graph raised `NotImplementedError`
because XOps have no pullback.  As discussed, no XOp gets gradient logic
and nothing is lowered at `grad` time: each connected region of
un-lowered nodes on the gradient's path is differentiated by a single
graph-level `LazyPullback` node, which takes the region's inputs and
output cotangents.  The `expand_lazy_pullback` rewrite, first in
`lower_xtensor`, lowers a private copy of the region and applies the
ordinary tensor pullbacks.  The XOps with inputs their outputs do not
depend on differentiably declare a `connection_pattern` (indices and
sizes are disconnected; `XElemwise` and `XBlockwise` follow their scalar
or core Op, as `Elemwise` and `Blockwise` do), so disconnected inputs are
known without lowering; cotangents are matched to their variable by dim
name.  `pytensor.graph.lowering` says which Ops must be lowered first: the
XOps and xtensor conversions, looked up only once `pytensor.xtensor` is
imported, so `grad` of a tensor graph does not import it.  An expansion
that fails raises a `LazyPullbackExpansionError` naming the region; as a
`LoweringError` (new, in `pytensor.graph.lowering`),
`SequentialGraphRewriter.apply` re-raises it as it does an
`AssertionError` instead of logging it under `on_opt_error="warn"`: a lazy
node left unexpanded could not be run.
""",
        (
            "unlowered",
            "regions",
            "op",
            "rewriting",
            "xtensor",
            "helpers",
            "doc",
            "doc/library/xtensor/index.md:(module)",
            "pytensor/xtensor/rewriting/__init__.py:(module)",
            f"{GRADIENT}:_populate_grad_dict",
            f"{INDEXING}:Index.connection_pattern",
            f"{INDEXING}:IndexUpdate.connection_pattern",
            f"{SHAPE}:ExpandDims.connection_pattern",
            f"{SHAPE}:UnStack.connection_pattern",
            f"{SHAPE}:Broadcast.connection_pattern",
            f"{VECTORIZATION}:XElemwise.connection_pattern",
            f"{VECTORIZATION}:XBlockwise.connection_pattern",
            "pytensor/graph/rewriting/basic.py:SequentialGraphRewriter.apply",
            "pytensor/graph/rewriting/basic.py:(module)",
            "test_xtensor_methods.py:_pattern_inputs",
            "test_xtensor_methods.py:test_xop_connection_pattern",
            "test_xtensor_methods.py:test_gradient_wrt_a_disconnected_input_raises",
            "test_grad_basic.py",
            "test_grad_indexing.py",
            "test_grad_linalg.py",
            "test_grad_math.py",
            "test_grad_random.py",
            "test_grad_reduction.py",
            "test_grad_shape.py",
            "test_grad_signal.py",
            "test_bad_input.py",
            "test_expansion_errors.py",
            "test_grad_arguments.py",
            "test_lazy_pullback_op.py",
            "test_regions.py",
        ),
    ),
    Step(
        "lazy-pullback-cotangent-dtypes",
        "Give lazy cotangents of integer and mixed-precision inputs the reference's dtype",
        """\
PyTensor's chain rule does not cast the sum of the terms an input gets to
its dtype: a float32 input read by a comparison (floatX zeros) or in
float64 arithmetic gets a float64 cotangent, and an integer or boolean
input whatever the lowered Ops' pullbacks give it (floatX zeros from a
DimShuffle, its output's dtype from an addition).  A float input keeps its
dtype without lowering where that is certain: an xtensor input (read, once
lowered, only through conversions, whose pullbacks pass on a cotangent
cast to its dtype), or a float64 input of a region where floatX, the
cotangents and every variable are float64.  For other inputs
`LazyPullback.make_node` pulls back through a private lowered copy of the
region to read the dtypes (cached per Op, cotangent types and floatX).
Before, such a cotangent was typed like its input (floatX for a discrete
one).
""",
        (
            "op:LazyPullback._cotangent_dtypes",
            "op:LazyPullback._region_float_dtypes",
            "rewriting:lowered_cotangent_dtypes",
            "test_dtypes.py",
        ),
        earlier=(
            (
                "op",
                "        dtypes = self._cotangent_dtypes(tuple(cotangent.type for cotangent in cotangents))\n",
                "        dtypes = [\n"
                "            dtype if dtype in continuous_dtypes else config.floatX\n"
                "            for dtype in (inner_inputs[i].type.dtype for i in self.wrt)\n"
                "        ]\n",
            ),
            ("rewriting", '    "lowered_cotangent_dtypes",\n', ""),
        ),
    ),
    Step(
        "expand-lazy-pullbacks",
        "Add expand_lazy_pullbacks to inspect expanded derivatives",
        """\
A derivative built by `grad` holds `LazyPullback` nodes until it is
compiled.  `expand_lazy_pullbacks` returns a copy with them expanded (and,
with `lower=True`, every other XOp lowered), to inspect or compare what
compilation will build without compiling it.
""",
        (
            "rewriting:expand_lazy_pullbacks",
            "rewriting:_expand_all",
            "test_lazy_pullback_op.py:test_expand_lazy_pullbacks_returns_an_expanded_copy",
        ),
        earlier=(
            (
                "doc",
                "{func}`~pytensor.tensor.rewriting.lazy_pullback.expand_lazy_pullbacks` returns\n"
                "a copy of a derivative with its lazy nodes expanded, for inspection.\n\n",
                "",
            ),
            (
                "doc",
                ".. autofunction:: pytensor.tensor.rewriting.lazy_pullback.expand_lazy_pullbacks\n\n",
                "",
            ),
            (
                "test_expansion_errors.py",
                '    "expand_lazy_pullbacks": lambda x, g: expand_lazy_pullbacks(g),\n'
                '    "expand_lazy_pullbacks_lower": lambda x, g: expand_lazy_pullbacks(g, lower=True),\n',
                "",
            ),
        ),
    ),
    Step(
        "share-forward-pass",
        "Share the lowered forward pass with expanded pullbacks and inline Einsum",
        """\
An expanded pullback recomputed the region's forward pass on its own
lowered copy.  Where the graph computes the region's outputs, they are now
replaced by the copy the pullback is built on, so the forward pass is
lowered once.  Optimized `Einsum`s (from `dot`) are inlined before
differentiating, as compilation inlines them anyway but nothing inlines
their `OpFromGraph` pullbacks.  The compiled gradient is then no larger
than that of the graph lowered first.
""",
        (
            "rewriting:_find_forward",
            "rewriting:_inline_einsums",
            "rewriting:_inline_float_einsum",
            "rewriting:_INLINE_EINSUMS",
            "test_lazy_pullback_op.py:test_compiled_gradient_against_the_reference",
            "test_lazy_pullback_op.py:test_expansion_lowers_the_shared_forward_pass_once",
            "test_lazy_pullback_op.py:test_identical_gradients_merge",
        ),
        earlier=(
            (
                "rewriting",
                "    forward = _find_forward(fgraph, node, inner) if fgraph is not None else {}\n",
                "    forward = {}\n",
            ),
            ("rewriting", "    _inline_einsums(inner)\n", ""),
            (
                "rewriting",
                "node's inputs.\n\n    Where `fgraph` computes the region's forward outputs, they are"
                " also mapped\n    to the lowered copy the pullback is built on, so the forward pass"
                " is\n    lowered once, shared with the pullback.\n",
                "node's inputs.\n",
            ),
        ),
    ),
    Step(
        "lazy-pullback-inner-graphs",
        "Differentiate lazy pullbacks again, and expand them inside Scan and OpFromGraph",
        """\
A second derivative differentiates a `LazyPullback` whose cotangent is
computed from the outputs of the region it pulls back through.  As
separate regions, each would pull back through its own lowered copy of
the forward pass; the lazy node, the regions it reads and the ordinary
nodes in between now form one region when that region is convex.

`hessian` and `jacobian(vectorize=False)` map a gradient over rows with a
Scan, so its inner graph holds a `LazyPullback`.  Expanded only when the
inner graph is compiled, the lowered forward pass would be recomputed in
every iteration.  `expand_inner_graphs` rebuilds such Scans and
OpFromGraphs with their inner graphs expanded and lowered before
`scan_eqopt1`, whose push-out then moves the loop-invariant part out.
The seed of a scalar cost computed by XOps is a constant 1, not
`ones_like(cost)`, so a gradient (mapped by a Scan, or compiled alone)
does not hold the forward pass just to shape a scalar.
""",
        (
            "op:lazy_ones_like",
            f"{GRADIENT}:_float_ones_like",
            "test_lazy_pullback_op.py:test_expansion_without_the_forward_pass_leaves_it_alone",
            "regions:_join_derivatives",
            "regions:_convex",
            "regions:_pullback_defined",
            "rewriting:EXPAND_INNER_GRAPHS_POSITION",
            "rewriting:_inner_fgraph",
            "rewriting:holds_unlowered",
            "rewriting:_holds_unlowered_cache",
            "rewriting:expanded_inner_graph_op",
            "rewriting:expand_inner_graphs",
            "rewriting:_EXPAND_INNER_GRAPHS",
            "rewriting:expand_inner_graphs_and_lower",
            "rewriting:optdb.register(",
            "pytensor/tensor/rewriting/__init__.py:(module)",
            "test_hessian.py",
            "test_inner_graphs.py",
            "test_expansion_errors.py:test_error_inside_a_scan_reaches_the_user",
            "test_dtypes.py:test_hessian_has_the_references_dtype",
        ),
        earlier=(
            (
                "xtensor",
                "for _rewriter in (expand_lazy_pullback, expand_inner_graphs):\n",
                "for _rewriter in (expand_lazy_pullback,):\n",
            ),
            ("rewriting", "        _EXPAND_INNER_GRAPHS.rewrite(fgraph)\n", ""),
            ("regions", "    _join_derivatives(order, parent, find, path, consumers, cuts)\n", ""),
            (
                "regions",
                "recursion, so deep graphs are fine).  A lazy derivative being differentiated\n"
                "again also takes in the regions it reads through ordinary nodes, and those\n"
                "nodes (see `_join_derivatives`).\n",
                "recursion, so deep graphs are fine).\n",
            ),
            (
                "regions",
                "`~pytensor.graph.lowering.is_structural`) and\n"
                "        the ordinary nodes between a lazy derivative and the regions it reads.\n",
                "`~pytensor.graph.lowering.is_structural`).\n",
            ),
        ),
    ),
    Step(
        "lazy-pushforward",
        "Add LazyPushforward for forward-mode derivatives of xtensor graphs",
        """\
`pushforward` (and `Rop`) through un-lowered xtensor Ops now builds one
`LazyPushforward` per region, expanded by the same rewrite, from the
lowered Ops' own pushforwards or as a pullback of a pullback.  Conversions
get a linear `pushforward`.
""",
        (
            "op:LazyPushforward",
            "op:_zero_tangent",
            "op:_tangent_type",
            "op:pushforward_through_regions",
            "op:has_xtensor_variables",
            "op:_lazy_pushforward",
            "op:_collapsed_toposort",
            "op:_region_pushforward",
            "op:_broadcast_tangent",
            "op:xtensor_pushforward",
            "op:pushforward_by_pullbacks",
            "op:_as_list",
            "rewriting:_lowered_pushforward",
            f"{GRADIENT}:_pushforward_direct",
            f"{GRADIENT}:pushforward",
            f"{BASIC}:XTypeCastOp.pushforward",
            "test_lazy_pushforward_op.py",
            "test_pullback_pushforward.py",
        ),
        earlier=(
            (
                "rewriting",
                "        if isinstance(node.op, LazyPushforward):\n"
                "            outputs, forward = _lowered_pushforward(node), {}\n"
                "        else:\n"
                "            outputs, forward = _lowered_pullback(node, fgraph)\n",
                "        outputs, forward = _lowered_pullback(node, fgraph)\n",
            ),
            (
                "doc",
                "single\n  {class}`~pytensor.gradient_lazy.LazyPullback` node (a\n"
                "  {class}`~pytensor.gradient_lazy.LazyPushforward` in forward mode), whose inputs\n",
                "single\n  {class}`~pytensor.gradient_lazy.LazyPullback` node, whose inputs\n",
            ),
            ("doc", ".. autoclass:: pytensor.gradient_lazy.LazyPushforward\n\n", ""),
            (
                "rewriting",
                "@node_rewriter([LazyPullback, LazyPushforward])\n",
                "@node_rewriter([LazyPullback])\n",
            ),
        ),
    ),
    Step(
        "xtensor-gradient-api",
        "Add pytensor.xtensor.gradient: labelled grad, pullback, pushforward and jacobian",
        """\
`pytensor.xtensor.gradient` gives xtensor derivatives with labelled
results: cotangents and tangents are matched to their variables by dim
name, `wrt` and `consider_constant` may be intermediate variables, and
nothing is lowered at call time (one lazy Op per region).  `jacobian` of an
xtensor expression returns an xtensor with the expression's dims followed
by those of `wrt`, built from one batched pullback (or a Scan of them).
`vectorize_graph` batches a lazy pullback by expanding it first, so the
batch dims of its conversions are known.
""",
        (
            "xtensor_gradient",
            "xtensor_transforms",
            "test_xtensor_gradient.py",
            "op:_vectorize_lazy_region_op",
            "test_hessian.py:test_jacobian_of_gradient",
            "test_hessian.py:test_jacobian_of_a_gradient_wrt_a_plain_tensor",
            f"{GRADIENT}:jacobian",
            f"{VECTORIZATION}:vectorize_graph",
            "op:vectorize_lazy_derivatives",
            "rewriting:expand_lazy_pullbacks_below",
            "pytensor/graph/replace.py:vectorize_graph",
            "test_jacobian.py",
            "test_vectorize.py",
        ),
        earlier=(
            ("doc", ".. automodule:: pytensor.xtensor.gradient\n   :members:\n\n", ""),
        ),
    ),
    Step(
        "deep-pullback",
        "Pull back regions deeper than the recursion limit in pieces",
        """\
`pullback` recurses about twice per node along the longest path, so the
expansion of a very deep region failed with a RecursionError.  Such a
region is now pulled back in consecutive chunks, each with the cotangents
gathered so far as known gradients; the result is the same gradient.
""",
        ("rewriting:max_pullback_depth", "rewriting:deep_pullback", "rewriting:_total"),
        earlier=(
            (
                "rewriting",
                "    grads = deep_pullback([view_op(out) for out in outputs], wrt, list(cotangents))\n",
                "    grads = pullback(\n"
                "        [view_op(out) for out in outputs],\n"
                "        wrt,\n"
                "        list(cotangents),\n"
                '        disconnected_inputs="ignore",\n'
                '        return_disconnected="disconnected",\n'
                "    )\n",
            ),
        ),
    ),
]


# --------------------------------------------------------------------------- checking


def git(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-c", "user.name=check", "-c", "user.email=check@localhost", *args],
        cwd=tree, capture_output=True, text=True, check=False,
    )


def apply_series(
    src: Path, patches: list[Path], tree: Path, after_each: Callable[[int, Path], None]
) -> None:
    """Copy SRC to `tree` (a git repository), ``git am`` each patch, call ``after_each(i, tree)``.

    Raises `upstream.AnchorError` if a patch does not apply.
    """
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(src, tree, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-qm", "SRC")):
        git(tree, *args)
    for index, patch in enumerate(patches, start=1):
        proc = git(tree, "am", "-q", str(patch))
        if proc.returncode:
            raise upstream.AnchorError(f"{patch.name}: (git am): {proc.stderr.strip()}")
        after_each(index, tree)
