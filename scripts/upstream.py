#!/usr/bin/env python
"""Generate the in-tree form of this package: a patch against a PyTensor source tree.

Usage::

    python scripts/upstream.py SRC OUT     # SRC: an unpacked sdist or a git checkout
    python scripts/upstream.py --series SRC OUTDIR   # the same, as a series of
                                           # patches (scripts/upstream_series.py)
    python scripts/upstream.py             # SRC: the sdist of the installed pytensor
                                           # (downloaded and cached like
                                           # scripts/pytensor_suites.py does)

It writes to OUT a unified diff (``a/...``, ``b/...``; apply it in SRC with
``patch -p1`` or ``git apply``) that

* adds every module of ``pytensor_lazy_pullback`` except ``integration.py`` at
  its in-tree home (:data:`MODULES`), imports rewritten to PyTensor's paths;
* turns every rebinding made by ``integration.py`` into a direct edit of the
  function or class it replaces, each located by parsing SRC with `ast`
  (:data:`GRADIENT_HOOKS`, :func:`xtensor_edits`, :func:`rewriter_edits`,
  :func:`import_edits`);
* adds PyTensor-style tests under ``tests/xtensor/`` generated from a subset of
  this repository's tests (:data:`TESTS`, plus one helper module), and a
  documentation page under ``doc/library/xtensor/``.

If SRC is not a PyTensor tree, or an anchor (file, function, class) is missing
or has changed shape, it prints one line naming the file and the function and
exits with status 1, writing nothing.  SRC is only read.  Exit status 3: no SRC
given, the sdist is not cached and the package index cannot be reached.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import difflib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
PACKAGE = REPO / "pytensor_lazy_pullback"
sys.path.insert(0, str(SCRIPTS))

import pytensor_suites  # noqa: E402  (sdist fetching and caching)

MODULES = {
    "unlowered.py": "pytensor/graph/lowering.py",
    "regions.py": "pytensor/graph/regions.py",
    "op.py": "pytensor/gradient_lazy.py",
    "rewriting.py": "pytensor/tensor/rewriting/lazy_pullback.py",
    "xtensor.py": "pytensor/xtensor/rewriting/lazy_pullback.py",
    # The labelled grad, pullback, pushforward and jacobian, where PyTensor's
    # experimental xtensor gradient API lives.
    "xtensor_gradient.py": "pytensor/xtensor/gradient.py",
    # vectorize_graph of lazy pullbacks: the lazy extension of vectorization.py.
    "xtensor_transforms.py": "pytensor/xtensor/vectorization_lazy.py",
}
"""Package module -> its in-tree path.  ``integration.py`` is the add-on only."""

ADDON_ONLY = {"integration.py", "__init__.py"}

PUBLIC_NAMES = {
    "LazyPullback": "op.py",
    "LazyPullbackNotExpandedError": "unlowered.py",
    "LazyPullbackExpansionError": "rewriting.py",
    "expand_lazy_pullback": "rewriting.py",
    "expand_lazy_pullbacks": "rewriting.py",
    "LazyPushforward": "op.py",
    "expand_inner_graphs": "rewriting.py",
}
"""Names exported by the package's ``__init__``, by defining module."""

METHODS = {
    "rename_pullback": ("pytensor/xtensor/basic.py", "Rename", "pullback"),
    "index_connection_pattern": ("pytensor/xtensor/indexing.py", "Index", "connection_pattern"),
    "index_update_connection_pattern": (
        "pytensor/xtensor/indexing.py", "IndexUpdate", "connection_pattern"
    ),
    "expand_dims_connection_pattern": (
        "pytensor/xtensor/shape.py", "ExpandDims", "connection_pattern"
    ),
    "unstack_connection_pattern": ("pytensor/xtensor/shape.py", "UnStack", "connection_pattern"),
    "broadcast_connection_pattern": (
        "pytensor/xtensor/shape.py", "Broadcast", "connection_pattern"
    ),
    "xelemwise_connection_pattern": (
        "pytensor/xtensor/vectorization.py", "XElemwise", "connection_pattern"
    ),
    "xblockwise_connection_pattern": (
        "pytensor/xtensor/vectorization.py", "XBlockwise", "connection_pattern"
    ),
    "conversion_pushforward": ("pytensor/xtensor/basic.py", "XTypeCastOp", "pushforward"),
    "xtensor_in_same_class": ("pytensor/xtensor/type.py", "XTensorType", "in_same_class"),
    "xtensor_zeros_like": ("pytensor/xtensor/type.py", "XTensorVariable", "zeros_like"),
    "xtensor_ones_like": ("pytensor/xtensor/type.py", "XTensorVariable", "ones_like"),
}
"""Functions of ``xtensor.py`` that the add-on binds as methods (``integration.py``),
by the file, class and name of the method they are in the tree."""

FUNCTIONS = {"align_xtensor_cotangent": "pytensor/xtensor/basic.py"}
"""Functions of ``xtensor.py`` that live, in the tree, in a module of SRC (at its
end), because the methods above use them."""

METHODS_MODULE = "xtensor.py"

TEST_DIR = "tests/xtensor"
HELPER = "lazy_pullback_helpers"
TESTS = {
    # Gradients of each family, by the module of pytensor.xtensor defining it
    # (next to PyTensor's own tests/xtensor/test_<module>.py).
    "test_grad_basic.py": "test_lazy_pullback_basic.py",
    "test_grad_indexing.py": "test_lazy_pullback_indexing.py",
    "test_grad_linalg.py": "test_lazy_pullback_linalg.py",
    "test_grad_math.py": "test_lazy_pullback_math.py",
    "test_grad_random.py": "test_lazy_pullback_random.py",
    "test_grad_reduction.py": "test_lazy_pullback_reduction.py",
    "test_grad_shape.py": "test_lazy_pullback_shape.py",
    "test_grad_signal.py": "test_lazy_pullback_signal.py",
    # The machinery, by topic.
    "test_bad_input.py": "test_lazy_pullback_bad_input.py",
    "test_dtypes.py": "test_lazy_pullback_dtypes.py",
    "test_expansion_errors.py": "test_lazy_pullback_expansion_errors.py",
    "test_grad_arguments.py": "test_lazy_pullback_grad_arguments.py",
    "test_hessian.py": "test_lazy_pullback_hessian.py",
    "test_inner_graphs.py": "test_lazy_pullback_inner_graphs.py",
    "test_jacobian.py": "test_lazy_pullback_jacobian.py",
    "test_lazy_pullback_op.py": "test_lazy_pullback_op.py",
    "test_lazy_pushforward_op.py": "test_lazy_pushforward_op.py",
    "test_pullback_pushforward.py": "test_lazy_pullback_pullback_pushforward.py",
    "test_regions.py": "test_lazy_pullback_regions.py",
    "test_vectorize.py": "test_lazy_pullback_vectorize.py",
    "test_xtensor_gradient.py": "test_lazy_pullback_xtensor_gradient.py",
    "test_xtensor_methods.py": "test_lazy_pullback_xtensor_methods.py",
}
"""Tests of this repository carried into the patch (``tests/NAME`` ->
``tests/xtensor/TARGET``)."""

APPENDED_TESTS = {"test_gradient_walk.py": "tests/test_gradient.py"}
"""Tests of this repository appended to a test file of SRC (that of the module
they test).  They may use only names that file imports."""

LEFT_OUT_TESTS = {
    "test_pymc.py": "needs pymc",
    "test_deep_graphs.py": "compares with the add-on's own walk; compiles for minutes",
    "test_modes.py": "time: the mode matrix stays the add-on's",
    "test_fuzz.py": "time: the fuzzer stays the add-on's",
    "test_integration.py": "the add-on's switch and version check",
    "test_pytensor_suites.py": "runs this repository's scripts",
    "test_upstream_patch.py": "runs this repository's scripts",
}
"""Test files of this repository not carried into the patch, and why.  Every
``tests/test_*.py`` is in exactly one of :data:`TESTS` and this."""

EXCLUDED_TEST = re.compile(
    r"\bsubprocess\b|\bpymc\b|\bjax\b|\bJAX\b|\benable\(|\bdisable\(|\bis_enabled\b|"
    r"\bcheck_pytensor\b|\bintegration\.|\bplp\.|__version__|\bn_nodes\("
)
"""A test function whose source matches is left out of the patch (it tests the
add-on's switching, import checks or optional dependencies, or counts nodes
against the reference's graph, which PyTensor's tests do not: the count
changes with unrelated rewrites)."""

DOC_PAGE = "doc/library/xtensor/gradient.md"
DOC_INDEX = "doc/library/xtensor/index.md"


class AnchorError(Exception):
    """An anchor of the patch is missing or has changed (one line: file: function: problem)."""


# --------------------------------------------------------------------------- source edits


@dataclass
class SourceFile:
    """A file of SRC and the edits made to it (applied bottom-up, by line)."""

    rel: str
    text: str
    tree: ast.Module
    edits: list[tuple[int, int, list[str]]] = field(default_factory=list)

    @classmethod
    def read(cls, src: Path, rel: str) -> SourceFile:
        path = src / rel
        if not path.is_file():
            raise AnchorError(f"{rel}: (module): file not found")
        text = path.read_text()
        try:
            tree = ast.parse(text)
        except SyntaxError as err:
            raise AnchorError(f"{rel}: (module): cannot be parsed ({err.msg})") from err
        return cls(rel, text, tree)

    def replace(self, start: int, end: int, lines: list[str], label: str | None = None) -> None:
        """Replace lines ``[start, end)`` (0-based) by `lines`.

        `label` names the edit for the series (``scripts/upstream_series.py``);
        by default, the qualified name of the function or class it is in.
        """
        self.edits.append((start, end, lines, label or self.label_at(start)))

    def label_at(self, line: int) -> str:
        """``rel:Class.method`` (or ``rel:function``, ``rel:Class``) holding 0-based `line`."""
        names = []
        body = self.tree.body
        while True:
            inside = [
                n for n in body
                if isinstance(n, ast.ClassDef | ast.FunctionDef)
                and n.lineno - 1 <= line < n.end_lineno
            ]
            if not inside:
                break
            names.append(inside[0].name)
            body = inside[0].body
        return f"{self.rel}:{'.'.join(names) or '(module)'}"

    @property
    def labels(self) -> list[str]:
        return [label for *_, label in self.edits]

    def result(self, labels: set[str] | None = None) -> str:
        """The file with its edits (those of `labels` only, if given)."""
        lines = self.text.splitlines(keepends=True)
        edits = [e for e in self.edits if labels is None or e[3] in labels]
        for start, end, new, _ in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
            lines[start:end] = [line + "\n" if line else "\n" for line in new]
        return "".join(lines)


def find_class(sf: SourceFile, name: str) -> ast.ClassDef:
    for node in sf.tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AnchorError(f"{sf.rel}: {name}: class not found")


def find_function(sf: SourceFile, name: str, cls: str | None = None) -> ast.FunctionDef:
    body = find_class(sf, cls).body if cls else sf.tree.body
    qualname = f"{cls}.{name}" if cls else name
    found = [
        n
        for n in body
        if isinstance(n, ast.FunctionDef)
        and n.name == name
        and not any(  # typing stubs of an overloaded function
            isinstance(d, ast.Name | ast.Attribute)
            and (getattr(d, "id", None) or getattr(d, "attr", None)) == "overload"
            for d in n.decorator_list
        )
    ]
    if not found:
        raise AnchorError(f"{sf.rel}: {qualname}: function not found")
    if len(found) > 1:
        raise AnchorError(f"{sf.rel}: {qualname}: defined {len(found)} times")
    return found[0]


def check_parameters(sf: SourceFile, func: ast.FunctionDef, qualname: str, expected: list[str]):
    args = func.args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    if args.vararg or args.kwarg or names != expected:
        raise AnchorError(
            f"{sf.rel}: {qualname}: parameters changed (expected {expected}, found {names})"
        )


def body_start(func: ast.FunctionDef) -> tuple[int, int]:
    """(0-based line after the docstring, indentation of the body)."""
    first = func.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        if len(func.body) == 1:
            return first.end_lineno, first.col_offset
        return first.end_lineno, func.body[1].col_offset
    return first.lineno - 1, first.col_offset


def indent(block: str, col: int) -> list[str]:
    return [(" " * col + line) if line else "" for line in textwrap.dedent(block).splitlines()]


def insert_at_start(sf: SourceFile, func: ast.FunctionDef, block: str) -> None:
    line, col = body_start(func)
    lines = sf.text.splitlines()
    blank_follows = line < len(lines) and not lines[line].strip()
    sf.replace(line, line, indent(block, col) + ([] if blank_follows else [""]))


GRADIENT_HOOKS = [
    (
        "_populate_grad_dict",
        ["var_to_app_to_idx", "grad_dict", "wrt", "cost_name"],
        """\
        from pytensor.gradient_lazy import collapse_regions

        # Each region of un-lowered nodes is one node whose pullback is a LazyPullback.
        var_to_app_to_idx = collapse_regions(var_to_app_to_idx, grad_dict, wrt)
        """,
    ),
    (
        "_float_ones_like",
        ["x"],
        """\
        from pytensor.gradient_lazy import lazy_ones_like

        if (ones := lazy_ones_like(x)) is not None:
            return ones
        """,
    ),
    (
        "_pushforward_direct",
        ["f", "wrt", "tangents", "disconnected_outputs", "return_disconnected"],
        """\
        from pytensor.gradient_lazy import pushforward_through_regions

        rval = pushforward_through_regions(
            f, wrt, tangents, disconnected_outputs, return_disconnected
        )
        if rval is not None:
            return rval
        """,
    ),
    (
        "pushforward",
        ["f", "wrt", "tangents", "disconnected_outputs", "return_disconnected",
         "use_op_pushforward"],
        """\
        from pytensor.gradient_lazy import has_xtensor_variables, xtensor_pushforward

        if has_xtensor_variables(f, wrt, tangents):
            return xtensor_pushforward(
                f, wrt, tangents, disconnected_outputs, return_disconnected, use_op_pushforward
            )
        """,
    ),
    (
        "jacobian",
        ["expression", "wrt", "consider_constant", "disconnected_inputs", "vectorize"],
        """\
        from pytensor.gradient_lazy import has_xtensor_variables

        if has_xtensor_variables(expression):
            from pytensor.xtensor import gradient as xtensor_gradient

            return xtensor_gradient.jacobian(
                expression, wrt, consider_constant, disconnected_inputs, vectorize
            )
        """,
    ),
]
"""``pytensor/gradient.py``: (function, its parameters, the block inserted at
the start of its body).  Each is the in-tree form of a rebinding in
``integration.py``: call the helper, fall through to PyTensor's own body."""


def gradient_edits(src: Path) -> SourceFile:
    sf = SourceFile.read(src, "pytensor/gradient.py")
    for name, params, block in GRADIENT_HOOKS:
        func = find_function(sf, name)
        check_parameters(sf, func, name, params)
        insert_at_start(sf, func, block)
    # _populate_var_to_app_to_idx: its recursive body replaced by the same walk
    # with loops (graphs deeper than the recursion limit).
    func = find_function(sf, "_populate_var_to_app_to_idx")
    check_parameters(
        sf, func, "_populate_var_to_app_to_idx", ["outputs", "wrt", "consider_constant"]
    )
    start, col = body_start(func)
    sf.replace(
        start,
        func.end_lineno,
        indent(
            """\
            from pytensor.gradient_lazy import populate_var_to_app_to_idx

            return populate_var_to_app_to_idx(outputs, wrt, consider_constant)
            """,
            col,
        ),
    )
    return sf


def check_jacobian_reexport(src: Path) -> None:
    """``pytensor.tensor.jacobian`` must be ``pytensor.gradient.jacobian`` re-exported."""
    sf = SourceFile.read(src, "pytensor/tensor/__init__.py")
    for node in ast.walk(sf.tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pytensor.gradient":
            if any(a.name == "jacobian" and a.asname in (None, "jacobian") for a in node.names):
                return
    raise AnchorError(
        f"{sf.rel}: jacobian: no longer re-exported from pytensor.gradient "
        "(the patch edits only pytensor.gradient.jacobian)"
    )


def add_delegating_method(
    sf: SourceFile, cls: str, method: str, params: str, module: str, helper: str
) -> None:
    """Add ``cls.method(params)``, calling ``module.helper(params)``, after the class's last statement.

    Raises `AnchorError` if the class already defines `method`.
    """
    node = find_class(sf, cls)
    if any(isinstance(n, ast.FunctionDef) and n.name == method for n in node.body):
        raise AnchorError(f"{sf.rel}: {cls}.{method}: already defined")
    block = f"""\
    def {method}({params}):
        from {module} import {helper}

        return {helper}({params})
    """
    sf.replace(
        node.end_lineno,
        node.end_lineno,
        ["", *indent(block, node.body[-1].col_offset)],
        label=f"{sf.rel}:{cls}.{method}",
    )


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module defines or imports at its top level."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def method_lines(function: str, method: str, target: SourceFile) -> list[str]:
    """The function `function` of :data:`METHODS_MODULE`, written as the method `method`.

    Names the target file does not have are imported at the start of the body
    (from where the module imports them, or from the module's in-tree home).
    """
    text = rewrite_names((PACKAGE / METHODS_MODULE).read_text())
    tree = ast.parse(text)
    lines = text.splitlines()
    [func] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    home = dotted(MODULES[METHODS_MODULE])
    origin = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            origin |= {a.asname or a.name: (node.module, a.name) for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            origin[node.name] = (home, node.name)
    stored = {a.arg for a in ast.walk(func) if isinstance(a, ast.arg)} | {
        n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    moved_here = {name for name, rel in FUNCTIONS.items() if rel == target.rel}
    available = top_level_names(target.tree) | stored | moved_here
    needed: dict[str, list[str]] = {}
    for name in sorted({
        n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }):
        if name in available or hasattr(builtins, name):
            continue
        if name not in origin:
            raise AnchorError(f"pytensor_lazy_pullback/{METHODS_MODULE}: {function}: {name}?")
        module, original = origin[name]
        needed.setdefault(module, []).append(original)
    source = lines[func.lineno - 1 : func.end_lineno]
    source[0] = re.sub(rf"def {function}\((self)(: [\w.]+)?", rf"def {method}(\1", source[0])
    source[0] = source[0].replace("-> list[list[bool]]", "").replace(" -> bool", "")
    body = "\n".join(source)
    body = re.sub(r"\s*Upstream home:\s.*?``\.", "", body, flags=re.S)
    lines = body.splitlines()
    [new_func] = ast.parse(textwrap.dedent(body)).body
    first = new_func.body[0]
    doc_end = first.end_lineno if ast.get_docstring(new_func) else first.lineno - 1
    imports = [f"    from {m} import {', '.join(names)}" for m, names in needed.items()]
    return [*lines[:doc_end], *([*imports, ""] if imports else []), *lines[doc_end:]]


def add_method(sf: SourceFile, cls: str, method: str, function: str) -> None:
    """Write `function` of :data:`METHODS_MODULE` into class `cls` as `method`.

    It replaces the class's own `method`, if it has one.
    """
    node = find_class(sf, cls)
    col = node.body[-1].col_offset
    new = indent("\n".join(method_lines(function, method, sf)), col)
    existing = [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method]
    if existing:
        [old] = existing
        start = min([old.lineno, *(d.lineno for d in old.decorator_list)]) - 1
        sf.replace(start, old.end_lineno, new)
    else:
        sf.replace(node.end_lineno, node.end_lineno, ["", *new], label=f"{sf.rel}:{cls}.{method}")


def method_edits(src: Path) -> dict[str, SourceFile]:
    """:data:`METHODS`, each written into its class, and :data:`FUNCTIONS`; by file."""
    files: dict[str, SourceFile] = {}
    for function, (rel, cls, method) in METHODS.items():
        sf = files.setdefault(rel, SourceFile.read(src, rel))
        add_method(sf, cls, method, function)
    for function, rel in FUNCTIONS.items():
        sf = files.setdefault(rel, SourceFile.read(src, rel))
        if function in top_level_names(sf.tree):
            raise AnchorError(f"{rel}: {function}: already defined")
        end = len(sf.text.splitlines())
        new = method_lines(function, function, sf)
        sf.replace(end, end, ["", "", *new], label=f"{rel}:{function}")
    return files


def xtensor_edits(src: Path) -> list[SourceFile]:
    """:data:`METHODS` (``Rename.pullback``, the xtensor Ops' ``connection_pattern``,
    ``XTensorType.in_same_class``, ...), the xtensor ``vectorize_graph`` and the
    graph ``vectorize_graph``."""
    methods = method_edits(src)
    vectorization = methods["pytensor/xtensor/vectorization.py"]
    func = find_function(vectorization, "vectorize_graph")
    check_parameters(
        vectorization, func, "vectorize_graph", ["outputs", "replace", "new_tensor_dims"]
    )
    insert_at_start(
        vectorization,
        func,
        """\
        from pytensor.tensor.rewriting.lazy_pullback import expand_lazy_pullbacks_below

        outputs = expand_lazy_pullbacks_below(outputs, list(replace))
        """,
    )
    replace = SourceFile.read(src, "pytensor/graph/replace.py")
    func = find_function(replace, "vectorize_graph")
    check_parameters(replace, func, "vectorize_graph", ["outputs", "replace"])
    insert_at_start(
        replace,
        func,
        """\
        from pytensor.gradient_lazy import vectorize_lazy_derivatives

        vectorized = vectorize_lazy_derivatives(outputs, replace)
        if vectorized is not None:
            return vectorized
        """,
    )
    return [*methods.values(), replace]


def rewriter_edits(src: Path) -> SourceFile:
    """``SequentialGraphRewriter.apply`` re-raises a ``LoweringError`` as it does an
    ``AssertionError`` (the in-tree form of the failure callbacks that
    ``integration.py`` wraps)."""
    sf = SourceFile.read(src, "pytensor/graph/rewriting/basic.py")
    func = find_function(sf, "apply", cls="SequentialGraphRewriter")
    handlers = [
        n
        for n in ast.walk(func)
        if isinstance(n, ast.ExceptHandler)
        and isinstance(n.type, ast.Name)
        and n.type.id == "AssertionError"
    ]
    if len(handlers) != 1 or not isinstance(handlers[0].body[-1], ast.Raise):
        raise AnchorError(
            f"{sf.rel}: SequentialGraphRewriter.apply: no single 'except AssertionError: raise'"
        )
    [handler] = handlers
    sf.replace(
        handler.lineno - 1,
        handler.end_lineno,
        indent(
            """\
            except (AssertionError, LoweringError):
                # Do not catch assertion failures, nor a lowering that failed:
                # the graph cannot be compiled without it.
                raise
            """,
            handler.col_offset,
        ),
    )
    graph_imports = [
        n
        for n in sf.tree.body
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("pytensor.graph.")
    ]
    later = [n for n in graph_imports if n.module > "pytensor.graph.lowering"]
    if not graph_imports or not later:
        raise AnchorError(f"{sf.rel}: from pytensor.graph.* import: not where expected")
    line = later[0].lineno - 1
    sf.replace(
        line, line, ["from pytensor.graph.lowering import LoweringError"], label=f"{sf.rel}:(module)"
    )
    return sf


def add_sorted_import(src: Path, rel: str, module: str, after: str | None = None) -> SourceFile:
    """Add ``import module`` among the file's top-level ``import`` statements.

    In sorted position among the ``import pytensor...`` statements, or right
    after ``import {after}`` if given.
    """
    sf = SourceFile.read(src, rel)
    imports = [
        n for n in sf.tree.body
        if isinstance(n, ast.Import) and len(n.names) == 1 and n.names[0].asname is None
    ]
    names = [n.names[0].name for n in imports]
    if module in names:
        raise AnchorError(f"{rel}: import {module}: already there")
    if after is not None:
        if after not in names:
            raise AnchorError(f"{rel}: import {after}: not found")
        anchor = imports[names.index(after)]
        sf.replace(anchor.end_lineno, anchor.end_lineno, [f"import {module}"])
        return sf
    siblings = [n for n, name in zip(imports, names) if name.startswith(module.rsplit(".", 1)[0])]
    if not siblings:
        raise AnchorError(f"{rel}: import {module.rsplit('.', 1)[0]}.*: no such imports")
    later = [n for n in siblings if n.names[0].name > module]
    if later:
        sf.replace(later[0].lineno - 1, later[0].lineno - 1, [f"import {module}"])
    else:
        sf.replace(siblings[-1].end_lineno, siblings[-1].end_lineno, [f"import {module}"])
    return sf


def import_edits(src: Path) -> list[SourceFile]:
    """The imports that make the new modules' registrations run."""
    return [
        # expand_inner_graphs in optdb.
        add_sorted_import(
            src, "pytensor/tensor/rewriting/__init__.py", "pytensor.tensor.rewriting.lazy_pullback"
        ),
        # The xtensor family, the expansion first in lower_xtensor.
        add_sorted_import(
            src, "pytensor/xtensor/rewriting/__init__.py",
            "pytensor.xtensor.rewriting.lazy_pullback",
        ),
    ]


def doc_index_edit(src: Path) -> SourceFile:
    rel = DOC_INDEX
    path = src / rel
    if not path.is_file():
        raise AnchorError(f"{rel}: toctree: file not found")
    text = path.read_text()
    sf = SourceFile(rel, text, ast.Module(body=[], type_ignores=[]))
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == ":::{toctree}")
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == ":::")
    except StopIteration:
        raise AnchorError(f"{rel}: toctree: no ':::{{toctree}}' ... ':::' block") from None
    sf.replace(end, end, ["gradient"])
    return sf


# --------------------------------------------------------------------------- new modules


def dotted(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def module_paths() -> dict[str, str]:
    """``pytensor_lazy_pullback.X`` -> in-tree dotted path, and public names."""
    mapping = {
        f"pytensor_lazy_pullback.{name.removesuffix('.py')}": dotted(home)
        for name, home in MODULES.items()
    }
    for public, module in PUBLIC_NAMES.items():
        mapping[f"pytensor_lazy_pullback.{public}"] = f"{dotted(MODULES[module])}.{public}"
    return mapping


def rewrite_names(text: str) -> str:
    """Rewrite ``pytensor_lazy_pullback.X`` (imports, docstrings, messages) to in-tree paths."""
    mapping = module_paths()
    for function, rel in FUNCTIONS.items():  # imported from where it lives in the tree
        text = text.replace(
            f"from pytensor_lazy_pullback.{METHODS_MODULE.removesuffix('.py')} import {function}\n",
            f"from {dotted(rel)} import {function}\n",
        )
    pattern = re.compile(
        r"pytensor_lazy_pullback\.(" + "|".join(
            re.escape(k.split(".", 1)[1]) for k in sorted(mapping, key=len, reverse=True)
        ) + r")\b"
    )
    return pattern.sub(lambda m: mapping[f"pytensor_lazy_pullback.{m[1]}"], text)


def in_tree_module(name: str) -> str:
    text = (PACKAGE / name).read_text()
    tree = ast.parse(text)
    doc = ast.get_docstring(tree, clean=False)
    if doc is None or "Upstream home:" not in doc:
        raise AnchorError(f"pytensor_lazy_pullback/{name}: (docstring): no 'Upstream home:'")
    # The module's own "Upstream home: ..." paragraph: in the tree, it is there.
    new_doc = re.sub(r"\n*Upstream home:.*?(?=\n\n|\Z)", "", doc, count=1, flags=re.S)
    text = text.replace(doc, new_doc, 1)
    # Elsewhere (helpers called from a PyTensor method): say who calls them.
    text = text.replace("Upstream home:", "Called from")
    return rewrite_names(text)


# --------------------------------------------------------------------------- modules as definitions


def statement_key(node: ast.stmt, lines: list[str]) -> str | None:
    """The name a top-level statement is owned by; ``None`` for docstrings and imports."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return None
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return None  # a docstring (of the module, or of the assignment above it)
    if isinstance(node, ast.FunctionDef | ast.ClassDef):
        return node.name
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return lines[node.lineno - 1].strip()


def node_start(node: ast.stmt, lines: list[str]) -> int:
    """0-based first line of `node`, with its decorators and the comment lines right above."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return start


def definitions(text: str) -> list[str]:
    """The owned names of a module: top-level keys and ``Class.method``."""
    tree = ast.parse(text)
    lines = text.splitlines()
    names = []
    for node in tree.body:
        key = statement_key(node, lines)
        if key is None or key == "__all__":
            continue
        names.append(key)
        if isinstance(node, ast.ClassDef):
            names += [
                f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)
            ]
    return names


def restrict(text: str, keep) -> str | None:
    """`text` with only the definitions `keep(key)` accepts; ``None`` if none is left.

    A dropped statement takes with it its decorators, the comments right above
    it, the docstring right after it and the blank lines that follow.  A class
    keeps the methods `keep` accepts.  ``__all__`` lists what is left.
    """
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    drops: list[tuple[int, int]] = []
    kept = False
    body = tree.body

    def drop(first: ast.stmt, last: ast.stmt) -> None:
        end = last.end_lineno
        while end < len(lines) and not lines[end].strip():
            end += 1
        drops.append((node_start(first, lines), end))

    for i, node in enumerate(body):
        key = statement_key(node, lines)
        if key is None or key == "__all__":
            continue
        after = body[i + 1] if i + 1 < len(body) else None
        last = node
        if (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
        ):
            last = after  # the attribute docstring
        if not keep(key):
            drop(node, last)
            continue
        kept = True
        if isinstance(node, ast.ClassDef):
            for method in node.body:
                if isinstance(method, ast.FunctionDef) and not keep(f"{node.name}.{method.name}"):
                    drop(method, method)
    if not kept:
        return None
    edits = [(start, end, []) for start, end in drops]
    names = {k for k in definitions(text) if keep(k)}
    for node in body:
        if statement_key(node, lines) == "__all__" and isinstance(node.value, ast.List):
            listed = [e.value for e in node.value.elts]
            if not all(name in names for name in listed):
                new = ", ".join(f'"{n}"' for n in listed if n in names)
                edits.append((node.lineno - 1, node.end_lineno, [f"__all__ = [{new}]\n"]))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = new
    return "".join(lines)


# --------------------------------------------------------------------------- tests


def helper_import_prefix(src: Path) -> str:
    """How a test under tests/xtensor imports the helper module next to it.

    Without ``tests/xtensor/__init__.py`` (the sdist), pytest puts the test's
    directory on ``sys.path``; with it (a git checkout), tests are a package.
    """
    if (src / TEST_DIR / "__init__.py").is_file():
        return f"tests.xtensor.{HELPER}"
    return HELPER


def rewrite_test_imports(text: str, tree: ast.Module, helper: str, rel: str) -> str:
    """Rewrite the imports of this package and of ``helpers`` in a test module."""
    lines = text.splitlines(keepends=True)
    edits = []
    for node in tree.body:
        new = None
        if isinstance(node, ast.ImportFrom) and node.module == "helpers":
            new = f"from {helper} import " + ", ".join(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "pytensor_lazy_pullback":
            by_module: dict[str, list[str]] = {}
            for alias in node.names:
                if alias.name == "integration":
                    continue  # used only by tests left out (checked below)
                if alias.name == "integration_disabled":
                    if rel == "helpers.py":
                        continue  # the helper module defines it itself
                    by_module.setdefault(helper, []).append(alias.name)
                elif alias.name in PUBLIC_NAMES:
                    home = dotted(MODULES[PUBLIC_NAMES[alias.name]])
                    by_module.setdefault(home, []).append(alias.name)
                else:
                    raise AnchorError(
                        f"tests/{rel}: import {alias.name}: not a public name of the package"
                    )
            new = "\n".join(
                f"from {mod} import {', '.join(names)}" for mod, names in by_module.items()
            )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "pytensor_lazy_pullback."
        ):
            names = ", ".join(a.name for a in node.names)
            new = f"from {rewrite_names(node.module)} import {names}"
        elif isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "pytensor_lazy_pullback" for a in node.names
        ):
            [alias] = node.names
            if alias.name == "pytensor_lazy_pullback":
                new = ""  # `import pytensor_lazy_pullback as plp`: enable/disable only
            else:
                new = f"import {rewrite_names(alias.name)} as {alias.asname}"
        if new is not None:
            edits.append((node.lineno - 1, node.end_lineno, new))
    for start, end, new in reversed(edits):
        lines[start:end] = [new + "\n"] if new else []
    return "".join(lines)


def in_tree_test(name: str, helper: str) -> str:
    text = (REPO / "tests" / name).read_text()
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    dropped = []
    for node in reversed(tree.body):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
            source = "".join(lines[start : node.end_lineno])
            if EXCLUDED_TEST.search(source):
                dropped.append(node.name)
                end = node.end_lineno
                while end < len(lines) and not lines[end].strip():
                    end += 1  # and the blank lines after it
                del lines[start:end]
    text = "".join(lines)
    # Imports only the left-out tests used.
    tree = ast.parse(text)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for module in ("subprocess", "sys", "textwrap"):
        if module not in used:
            text = re.sub(rf"^import {module}\n", "", text, flags=re.M)
    text = re.sub(r'^("""[^\n]*"""\n)\n\n+', r"\1\n", text)
    tree = ast.parse(text)
    text = rewrite_test_imports(text, tree, helper, name)
    text = use_conftest_fixture(text)
    # Mentions of the helper module and of other carried test files, by their in-tree names.
    text = text.replace("`helpers.", f"`{HELPER}.")
    text = re.sub(r"\b(test_\w+\.py)\b", lambda m: TESTS.get(m.group(1), m.group(1)), text)
    for leftover in ("plp.", "integration."):
        if leftover in text:
            raise AnchorError(f"tests/{name}: {leftover}: still used after leaving tests out")
    return text


def appended_test_edits(src: Path) -> list[SourceFile]:
    """:data:`APPENDED_TESTS`: each file's test functions at the end of SRC's test file."""
    edits = []
    for name, rel in APPENDED_TESTS.items():
        sf = SourceFile.read(src, rel)
        available = {
            alias.asname or alias.name.split(".")[0]
            for node in sf.tree.body if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        } | {
            node.name for node in sf.tree.body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)
        }
        text = (REPO / "tests" / name).read_text()
        tree = ast.parse(text)
        lines = text.splitlines()
        blocks = []
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            if node.name in available:
                raise AnchorError(f"{rel}: {node.name}: already defined")
            local = {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)} | {
                n.id for n in ast.walk(node)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
            missing = sorted(
                n.id for n in ast.walk(node)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                and n.id not in available | local and not hasattr(builtins, n.id)
            )
            if missing:
                raise AnchorError(
                    f"tests/{name}: {node.name}: uses {missing[0]}, which {rel} does not import"
                )
            blocks += ["", "", *lines[node.lineno - 1 : node.end_lineno]]
        end = len(sf.text.splitlines())
        sf.replace(end, end, blocks, label=f"{rel}:(module)")
        edits.append(sf)
    return edits


def _after_imports(text: str, line: str) -> str:
    tree = ast.parse(text)
    last = max(
        n.end_lineno for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
    )
    lines = text.splitlines(keepends=True)
    lines.insert(last, line)
    return "".join(lines)


IN_TREE_HELPERS = {
    "check_compiled_graph": (
        "def check_compiled_graph(fn, ref_fn):\n"
        '    """The compiled `fn` holds no XOp and no lazy derivative, inner graphs included."""\n'
        "    assert_fully_lowered(fn)\n"
    ),
    "check_batched_graph": (
        "def check_batched_graph(ours_nodes, ref_nodes):\n"
        '    """No forward Op (``Einsum``, ``Split``) is batched among `ours_nodes`."""\n'
        '    assert not {"Einsum", "Split", "OpFromGraph"} & set(batched_cores(ours_nodes))\n'
    ),
}
"""Helpers of tests/helpers.py whose in-tree form differs: PyTensor's tests
assert structure, not node counts against another pipeline (which change with
unrelated rewrites)."""


def helper_module() -> str:
    """tests/helpers.py as the helper module of the carried tests."""
    reference = (REPO / "tests" / "helpers.py").read_text()
    tree = ast.parse(reference)
    lines = reference.splitlines(keepends=True)
    replaced = 0
    for node in reversed(tree.body):
        if isinstance(node, ast.FunctionDef) and node.name in IN_TREE_HELPERS:
            lines[node.lineno - 1 : node.end_lineno] = [IN_TREE_HELPERS[node.name]]
            replaced += 1
    if replaced != len(IN_TREE_HELPERS):
        raise AnchorError("tests/helpers.py: IN_TREE_HELPERS: a helper is missing")
    reference = "".join(lines)
    tree = ast.parse(reference)
    text = rewrite_test_imports(reference, tree, HELPER, "helpers.py")
    at = text.index("from collections.abc import")
    text = text[:at] + "from contextlib import contextmanager\n" + text[at:]
    text += (
        "\n\n@contextmanager\n"
        "def integration_disabled():\n"
        '    """Nothing to switch off: PyTensor\'s own gradient is the lazy one."""\n'
        "    yield\n"
    )
    return text


FIXTURE = "fail_on_logged_rewrite_failure"
"""The conftest fixture every carried test module uses (autouse in this repository)."""


def use_conftest_fixture(text: str) -> str:
    """Mark a carried test module to use :data:`FIXTURE` of ``tests/xtensor/conftest.py``.

    There the fixture is not autouse, so PyTensor's own xtensor tests run
    exactly as before.
    """
    mark = re.search(r"^pytestmark = pytest\.mark\.usefixtures\((.*)\)$", text, flags=re.M)
    if mark:
        return text[: mark.start(1)] + f'"{FIXTURE}", ' + text[mark.start(1) :]
    added = f'\n\npytestmark = pytest.mark.usefixtures("{FIXTURE}")\n'
    if not re.search(r"^import pytest$", text, flags=re.M):
        added = "import pytest\n" + added  # ruff sorts it among the imports
    return _after_imports(text, added)


def conftest_module() -> str:
    """tests/conftest.py as ``tests/xtensor/conftest.py``, :data:`FIXTURE` not autouse."""
    text = (REPO / "tests" / "conftest.py").read_text()
    autouse = f"@pytest.fixture(autouse=True)\ndef {FIXTURE}("
    if autouse not in text:
        raise AnchorError(f"tests/conftest.py: {FIXTURE}: not an autouse fixture")
    text = text.replace(autouse, f"@pytest.fixture\ndef {FIXTURE}(")
    body = text[text.index('"""', 3) + 3 :]
    doc = (
        '"""Fixtures of the tests of lazy derivatives (``test_lazy_*.py``).\n\n'
        f"Each of those modules uses ``{FIXTURE}``, which fails a test\n"
        "during which PyTensor's rewriters logged a failure (under\n"
        '``on_opt_error="warn"`` they log it and carry on); ``on_opt_error`` runs a\n'
        'test under both values.\n"""'
    )
    return doc + body


# --------------------------------------------------------------------------- documentation


DOC_SOURCE = REPO / "doc" / "upstream" / "gradient.md"
"""The in-tree documentation page, written as it stands in PyTensor's tree."""


def doc_page() -> str:
    """The page (:data:`DOC_SOURCE`): short, with ``automodule``; nothing of the add-on."""
    page = DOC_SOURCE.read_text()
    for word in ("add-on", "pytensor_lazy_pullback", "enable()", "disable()"):
        if word in page:
            line = next(line for line in page.splitlines() if word in line)
            raise AnchorError(f"doc/upstream/gradient.md: (page): {word!r} in: {line.strip()}")
    return page


# --------------------------------------------------------------------------- the patch


def unified(rel: str, old: str | None, new: str) -> str:
    a = [] if old is None else old.splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    for lines in (a, b):
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n\\ No newline at end of file\n"
    header = f"diff --git a/{rel} b/{rel}\n"
    if old is None:
        header += "new file mode 100644\n"
    body = difflib.unified_diff(
        a, b, "/dev/null" if old is None else f"a/{rel}", f"b/{rel}", n=3
    )
    return header + "".join(body)


RUFF_VERSION = "0.15.16"
"""The ruff that PyTensor's ``.pre-commit-config.yaml`` pins: the patch is
fixed, formatted and checked with it, with SRC's ``pyproject.toml`` settings."""


def ruff() -> str:
    """The path of ruff :data:`RUFF_VERSION` (installed with the ``test`` extra)."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        raise AnchorError(f"ruff: (tool): not found; pip install ruff=={RUFF_VERSION}")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()
    if version[-1:] != [RUFF_VERSION]:
        raise AnchorError(
            f"ruff: (tool): version {' '.join(version)}, PyTensor's pre-commit pins {RUFF_VERSION}"
        )
    return exe


def pre_commit(src: Path, files: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """`files` (path -> text) as PyTensor's pre-commit leaves them, and what it still finds.

    The Python files are fixed (``ruff check --fix``) and formatted (``ruff
    format``) with SRC's ``pyproject.toml``, in a scratch copy laid out like
    SRC (so ``pytensor`` and ``tests`` sort as first-party imports).  The
    problems ruff cannot fix are returned, one line each: the shared source
    must be written so that there is none.
    """
    python = {rel: text for rel, text in files.items() if rel.endswith(".py")}
    if not python:
        return dict(files), []
    exe = ruff()
    with tempfile.TemporaryDirectory(prefix="upstream-ruff-") as tmp:
        root = Path(tmp)
        shutil.copy(src / "pyproject.toml", root / "pyproject.toml")
        # Every module of SRC, empty: ruff sorts `pytensor.x.y` as first-party
        # only where it finds the module itself.
        for path in [*src.glob("pytensor/**/*.py"), *src.glob("tests/**/*.py")]:
            (root / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (root / path.relative_to(src)).touch()
        for rel, text in python.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        rels = sorted(python)
        for command in (["check", "--fix", "--exit-zero", "--quiet"], ["format", "--quiet"]):
            subprocess.run([exe, *command, *rels], cwd=root, check=True, capture_output=True)
        report = subprocess.run(
            [exe, "check", "--output-format", "concise", "--quiet", *rels],
            cwd=root, capture_output=True, text=True,
        )
        problems = report.stdout.strip().splitlines() if report.returncode else []
        return {**files, **{rel: (root / rel).read_text() for rel in rels}}, problems


FORBIDDEN = [
    (re.compile(r"\bpytensor_lazy_pullback\b"), "a reference to the add-on"),
    (re.compile(r"\bsetattr\((pytensor|gradient|pt|Rename|XOp|XTensorType)\b"), "a setattr on PyTensor"),
    (re.compile(r"__version__|check_pytensor|SUPPORTED_PYTENSOR"), "a version check"),
]


def build_tree(src: Path) -> tuple[list[SourceFile], dict[str, str]]:
    """The edits of SRC's files and the new files (path -> text), before `pre_commit`."""
    if not (src / "pytensor" / "__init__.py").is_file() or not (src / "pytensor" / "gradient.py").is_file():
        raise AnchorError(f"{src}: (tree): not a PyTensor source tree (no pytensor/gradient.py)")
    for module in MODULES:
        if module in ADDON_ONLY:
            raise AssertionError(module)
    missing = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in MODULES and p.name not in ADDON_ONLY
    )
    if missing:
        raise AnchorError(f"pytensor_lazy_pullback/{missing[0]}: (module): no in-tree home in MODULES")

    check_jacobian_reexport(src)
    edited = [
        gradient_edits(src),
        *xtensor_edits(src),
        *import_edits(src),
        rewriter_edits(src),
        doc_index_edit(src),
        *appended_test_edits(src),
    ]
    new_files: dict[str, str] = {}
    for name, home in MODULES.items():
        if (src / home).exists():
            raise AnchorError(f"{home}: (module): already exists in SRC")
        new_files[home] = in_tree_module(name)
        if name == METHODS_MODULE:
            text = restrict(new_files[home], lambda key: key not in {**METHODS, **FUNCTIONS})
            # What moved to SRC's modules, imported from there (ruff sorts it).
            imports = "".join(
                f"from {dotted(rel)} import {function}\n" for function, rel in FUNCTIONS.items()
            )
            new_files[home] = text.replace("\n\nfrom ", f"\n\n{imports}from ", 1)
    helper = helper_import_prefix(src)
    for name, target in TESTS.items():
        new_files[f"{TEST_DIR}/{target}"] = in_tree_test(name, helper)
    new_files[f"{TEST_DIR}/{HELPER}.py"] = helper_module()
    new_files[f"{TEST_DIR}/conftest.py"] = conftest_module()
    new_files[DOC_PAGE] = doc_page()
    for rel in new_files:
        if (src / rel).exists():
            raise AnchorError(f"{rel}: (file): already exists in SRC")
    return edited, new_files


def build_patch(src: Path) -> tuple[str, dict]:
    """The patch text and its size: files, lines added, lines changed in PyTensor's files."""
    edited, new_files = build_tree(src)
    cleaned, ruff_problems = pre_commit(
        src, {**{sf.rel: sf.result() for sf in edited}, **new_files}
    )
    new_files = {rel: cleaned[rel] for rel in new_files}
    chunks = []
    changed_lines = 0
    for sf in sorted(edited, key=lambda s: s.rel):
        new = cleaned[sf.rel]
        diff = unified(sf.rel, sf.text, new)
        chunks.append(diff)
        changed_lines += sum(
            1 for line in diff.splitlines()
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
        )
    for rel in sorted(new_files):
        chunks.append(unified(rel, None, new_files[rel]))
    patch = "".join(chunks)

    added = [
        line[1:] for line in patch.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    for line in added:
        for pattern, what in FORBIDDEN:
            if pattern.search(line):
                raise AssertionError(f"the patch would contain {what}: {line.strip()!r}")
    size = {
        "files": len(edited) + len(new_files),
        "new_files": len(new_files),
        "edited_files": len(edited),
        "lines_added": len(added),
        "lines_changed_in_pytensor": changed_lines,
        "lines_added_to_pytensor_files": sum(
            1 for sf in edited for line in unified(sf.rel, sf.text, cleaned[sf.rel]).splitlines()
            if line.startswith("+") and not line.startswith("+++")
        ),
        "new_lines": {
            kind: sum(
                len(text.splitlines()) for rel, text in new_files.items()
                if rel.startswith(prefix)
            )
            for kind, prefix in (("modules", "pytensor/"), ("tests", "tests/"), ("doc", "doc/"))
        },
    }
    size["ruff_problems"] = ruff_problems
    size["lines_removed_from_pytensor_files"] = (
        size["lines_changed_in_pytensor"] - size["lines_added_to_pytensor_files"]
    )
    return patch, size


def describe(size: dict) -> str:
    new = size["new_lines"]
    return (
        f"{size['files']} files ({size['new_files']} new: {new['modules']} lines of modules, "
        f"{new['tests']} of tests, {new['doc']} of doc; {size['edited_files']} of PyTensor's "
        f"edited), {size['lines_added']} lines added, {size['lines_changed_in_pytensor']} lines "
        f"changed in PyTensor's files (+{size['lines_added_to_pytensor_files']} "
        f"-{size['lines_removed_from_pytensor_files']})"
    )


def default_source() -> tuple[Path, Path]:
    """The installed pytensor's sdist, unpacked into the cache; and a default output path."""
    version = importlib.metadata.version("pytensor")
    cache = pytensor_suites.cache_dir()
    sdist = pytensor_suites.fetch_sdist(version, cache)
    tree = pytensor_suites.unpacked_sdist(sdist, cache)
    out = REPO / "build" / "upstream" / f"pytensor-{version}-lazy-pullback.patch"
    return tree, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", type=Path, help="PyTensor source tree")
    parser.add_argument("out", nargs="?", type=Path, help="where to write the patch")
    parser.add_argument(
        "--series",
        action="store_true",
        help="write OUT as a folder of git am-able patches, one feature each "
        "(scripts/upstream_series.py)",
    )
    args = parser.parse_args(argv)
    if (args.src is None) != (args.out is None):
        parser.error("give both SRC and OUT, or neither")
    if args.src is None:
        try:
            src, out = default_source()
        except pytensor_suites.IndexUnreachable as exc:
            print(f"SKIP: {exc}", file=sys.stderr)
            return pytensor_suites.EXIT_UNREACHABLE
        except pytensor_suites.RunnerError as exc:
            print(f"upstream: {exc}", file=sys.stderr)
            return 2
    else:
        src, out = args.src, args.out
    if args.series:
        sys.modules.setdefault("upstream", sys.modules[__name__])  # one AnchorError
        import upstream_series

        if args.out is None:
            out = out.parent / "series"
        try:
            upstream_series.write_series(src.resolve(), out)
        except AnchorError as exc:
            print(f"upstream: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        patch, size = build_patch(src.resolve())
    except AnchorError as exc:
        print(f"upstream: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(patch)
    print(f"wrote {out}: {describe(size)}")
    if size["ruff_problems"]:
        print(
            f"ruff {RUFF_VERSION} (PyTensor's pre-commit) would reject the patch: "
            + "\n  ".join(["", *size["ruff_problems"]])
        )
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
