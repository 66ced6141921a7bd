"""The add-on's integration with PyTensor: the one module the in-tree patch leaves out.

Upstream home: none.  Each rebinding made here (:func:`_overrides`) is, in
the patch that ``./run.sh upstream`` generates, a direct edit of the function
or class it replaces; the logic lives in the other modules.  Each calls a
helper of theirs and falls through to PyTensor's original where the helper
does not apply (returns ``None`` / ``False``).  ``grad`` looks these names up
in its module at every call, so this works however ``grad`` was imported and
whenever the graph was built; a name imported while enabled behaves like
PyTensor's own once disabled.  The PyTensor version and the signatures
wrapped are checked at import, before anything is registered.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytensor
import pytensor.gradient as gradient

SUPPORTED_PYTENSOR = ((3, 3), (3, 4))
"""PyTensor releases (``[low, high)``, major and minor) whose internals this
module was written against."""

_EXPECTED_SIGNATURES = {
    "jacobian": ["expression", "wrt", "consider_constant", "disconnected_inputs", "vectorize"],
    "_populate_grad_dict": ["var_to_app_to_idx", "grad_dict", "wrt", "cost_name"],
    "_populate_var_to_app_to_idx": ["outputs", "wrt", "consider_constant"],
    "_float_ones_like": ["x"],
    "_pushforward_direct": ["f", "wrt", "tangents", "disconnected_outputs", "return_disconnected"],
    "pushforward": [
        "f", "wrt", "tangents", "disconnected_outputs", "return_disconnected", "use_op_pushforward",
    ],
}

_RELEASE = re.compile(r"(\d+)\.(\d+)(\.\d+)?(\.post\d+)?")


def check_pytensor() -> None:
    """Raise `ImportError` unless PyTensor is a release whose internals this module expects."""
    low, high = SUPPORTED_PYTENSOR
    supported = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    match = _RELEASE.fullmatch(pytensor.__version__)
    problems = []
    if match is None:
        problems.append(
            f"pytensor's version {pytensor.__version__!r} is not a release "
            f"(a source checkout?); this add-on supports releases {supported}"
        )
    elif not low <= (int(match[1]), int(match[2])) < high:
        problems.append(
            f"pytensor {pytensor.__version__} is outside the supported range {supported}"
        )
    for name, params in _EXPECTED_SIGNATURES.items():
        func = getattr(gradient, name, None)
        func = getattr(func, "__wrapped__", func)
        if func is None:
            problems.append(f"pytensor.gradient.{name} does not exist")
        elif list(inspect.signature(func).parameters) != params:
            problems.append(
                f"pytensor.gradient.{name} has parameters "
                f"{list(inspect.signature(func).parameters)}, expected {params}"
            )
    if problems:
        raise ImportError(
            "pytensor_lazy_pullback cannot integrate with this PyTensor: "
            + "; ".join(problems)
            + ". PyTensor itself is unaffected; install a supported release "
            "(see the package's requirements) to differentiate un-lowered graphs."
        )


# Before anything below registers a rewrite, an Op or a dispatch in PyTensor:
# a refused import must leave PyTensor as it was.
check_pytensor()

from pytensor_lazy_pullback import op as _op  # noqa: E402
from pytensor_lazy_pullback.unlowered import LoweringError  # noqa: E402

__all__ = ["check_pytensor", "disable", "enable", "is_enabled", "integration_disabled"]

_originals: dict[str, Callable] = {
    name: getattr(gradient, name) for name in _EXPECTED_SIGNATURES
}
"""PyTensor's own functions, as they were when this module was imported."""

_enabled = False
_rebound: list[tuple[object, str, object, bool]] = []
"""``(owner, name, original, was_own_attribute)`` for each rebinding in effect."""


def _while_enabled(replacement: Callable, original: Callable) -> Callable:
    """`replacement` while the integration is enabled, PyTensor's `original` otherwise.

    Code that imported a rebound name while it was enabled keeps this function:
    it must behave like PyTensor's own once :func:`disable` was called.
    """

    @functools.wraps(original)
    def rebound(*args, **kwargs):
        if _enabled:
            return replacement(*args, **kwargs)
        return original(*args, **kwargs)

    return rebound


def _rebind(owner, name: str, replacement: Callable) -> None:
    own = name in vars(owner)
    original = getattr(owner, name, None)
    _rebound.append((owner, name, original, own))
    # A new attribute (no original) is deleted again by `disable`.
    setattr(owner, name, replacement if original is None else _while_enabled(replacement, original))


def _overrides() -> list[tuple[object, str, Callable]]:
    """``(owner, name, replacement)`` for every rebinding made by :func:`enable`."""
    import pytensor.graph as graph
    import pytensor.graph.replace as graph_replace
    import pytensor.tensor as pt
    import pytensor.xtensor.vectorization as xvectorization
    from pytensor.graph.rewriting.basic import SequentialGraphRewriter
    from pytensor.xtensor.basic import Rename, XTypeCastOp
    from pytensor.xtensor.indexing import Index, IndexUpdate
    from pytensor.xtensor.shape import Broadcast, ExpandDims, UnStack
    from pytensor.xtensor.type import XTensorType, XTensorVariable
    from pytensor.xtensor.vectorization import XBlockwise, XElemwise

    from pytensor_lazy_pullback import xtensor, xtensor_gradient
    from pytensor_lazy_pullback.rewriting import expand_lazy_pullbacks_below

    def xtensor_jacobian(expression, *args):
        # (In the patch, the same test and call at the start of jacobian.)
        if _op.has_xtensor_variables(expression):
            return xtensor_gradient.jacobian(expression, *args)
        return None

    jacobian = _helper_first(xtensor_jacobian, "jacobian")

    original_sequential_init = SequentialGraphRewriter.__init__

    def sequential_init(self, *rewrites, failure_callback=None):
        # (In the patch, SequentialGraphRewriter.apply re-raises a LoweringError
        # as it does an AssertionError, before its failure callback.)
        original_sequential_init(
            self, *rewrites, failure_callback=_reraising_lowering_errors(failure_callback)
        )

    original_vectorize_graph = xvectorization.vectorize_graph

    def vectorize_graph(outputs, replace, *, new_tensor_dims=()):
        return original_vectorize_graph(
            expand_lazy_pullbacks_below(outputs, list(replace)),
            replace,
            new_tensor_dims=new_tensor_dims,
        )

    original_graph_vectorize_graph = graph_replace.vectorize_graph

    def graph_vectorize_graph(outputs, replace):
        vectorized = _op.vectorize_lazy_derivatives(outputs, replace)
        if vectorized is None:
            return original_graph_vectorize_graph(outputs, replace)
        return vectorized

    overrides = [
        (gradient, "_populate_var_to_app_to_idx", _op.populate_var_to_app_to_idx),
        (gradient, "_populate_grad_dict", _populate_grad_dict),
        (gradient, "_float_ones_like", _helper_first(_op.lazy_ones_like, "_float_ones_like")),
        (
            gradient,
            "_pushforward_direct",
            _helper_first(_op.pushforward_through_regions, "_pushforward_direct"),
        ),
        (gradient, "pushforward", pushforward),
        (gradient, "jacobian", jacobian),
        (pt, "jacobian", jacobian),
        (xvectorization, "vectorize_graph", vectorize_graph),
        (graph_replace, "vectorize_graph", graph_vectorize_graph),
        (graph, "vectorize_graph", graph_vectorize_graph),
        (SequentialGraphRewriter, "__init__", sequential_init),
        (Rename, "pullback", xtensor.rename_pullback),
        (Index, "connection_pattern", xtensor.index_connection_pattern),
        (IndexUpdate, "connection_pattern", xtensor.index_update_connection_pattern),
        (ExpandDims, "connection_pattern", xtensor.expand_dims_connection_pattern),
        (UnStack, "connection_pattern", xtensor.unstack_connection_pattern),
        (Broadcast, "connection_pattern", xtensor.broadcast_connection_pattern),
        (XElemwise, "connection_pattern", xtensor.xelemwise_connection_pattern),
        (XBlockwise, "connection_pattern", xtensor.xblockwise_connection_pattern),
        (XTypeCastOp, "pushforward", xtensor.conversion_pushforward),
    ]
    if "in_same_class" not in vars(XTensorType):
        overrides.append((XTensorType, "in_same_class", xtensor.xtensor_in_same_class))
    for name, method in (
        ("zeros_like", xtensor.xtensor_zeros_like),
        ("ones_like", xtensor.xtensor_ones_like),
    ):
        if not hasattr(XTensorVariable, name):
            overrides.append((XTensorVariable, name, method))
    return overrides


def enable() -> None:
    """Make :func:`pytensor.grad` differentiate un-lowered graphs lazily.

    Idempotent.  Raises `ImportError`, changing nothing, if PyTensor's
    internals are not those this module was written against (also checked
    when the package is imported, before it registers anything in PyTensor).
    """
    global _enabled
    if _enabled:
        return
    check_pytensor()
    _enabled = True
    for owner, name, replacement in _overrides():
        _rebind(owner, name, replacement)


def disable() -> None:
    """Restore PyTensor's own gradient machinery.  Idempotent."""
    global _enabled
    _enabled = False
    for owner, name, original, own in reversed(_rebound):
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
    _rebound.clear()


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect."""
    return _enabled


@contextmanager
def integration_disabled() -> Iterator[None]:
    """Context manager running its body with PyTensor's own gradient machinery."""
    was_enabled = is_enabled()
    disable()
    try:
        yield
    finally:
        if was_enabled:
            enable()


def _populate_grad_dict(var_to_app_to_idx, grad_dict, wrt, cost_name=None):
    var_to_app_to_idx = _op.collapse_regions(var_to_app_to_idx, grad_dict, wrt)
    return _originals["_populate_grad_dict"](var_to_app_to_idx, grad_dict, wrt, cost_name)


def _reraising_lowering_errors(failure_callback: Callable | None) -> Callable | None:
    """`failure_callback` of a rewriter, raising a `LoweringError` instead of handling it."""
    if failure_callback is None:
        return None

    @functools.wraps(failure_callback)
    def reraising(exc, *args):
        if isinstance(exc, LoweringError):
            raise exc
        return failure_callback(exc, *args)

    return reraising


def _helper_first(helper: Callable, name: str) -> Callable:
    """PyTensor's ``gradient.<name>``, after `helper`, whose non-``None`` result wins.

    The in-tree form of each such rebinding is one branch at the start of the
    function (see ``scripts/upstream.py``).
    """

    signature = inspect.signature(_originals[name])

    def rebound(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        result = helper(*bound.args)
        return result if result is not None else _originals[name](*bound.args)

    return rebound


def pushforward(
    f,
    wrt,
    tangents,
    disconnected_outputs="raise",
    return_disconnected="zero",
    use_op_pushforward=False,
):
    if _op.has_xtensor_variables(f, wrt, tangents):
        return _op.xtensor_pushforward(
            f, wrt, tangents, disconnected_outputs, return_disconnected, use_op_pushforward
        )
    return _originals["pushforward"](
        f, wrt, tangents, disconnected_outputs, return_disconnected, use_op_pushforward
    )
