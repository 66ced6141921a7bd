"""The `LazyPullback` Op: the pullback of an un-lowered region, not yet built.

Upstream home: ``pytensor/gradient_lazy.py`` (or a ``LazyPullback`` class in
``pytensor/gradient.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pytensor.graph.basic import Apply, Variable
from pytensor.graph.fg import FrozenFunctionGraph
from pytensor.graph.null_type import NullType
from pytensor.graph.op import HasInnerGraph, Op
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor import config
from pytensor.scalar import upcast
from pytensor.tensor.type import continuous_dtypes, float_dtypes

from pytensor_lazy_pullback.registry import cotangent_rules, is_conversion

__all__ = [
    "LazyPullback",
    "LazyPullbackNotExpandedError",
    "LazyPushforward",
    "LazyRegionOp",
    "align_cotangent",
]


class LazyPullbackNotExpandedError(NotImplementedError):
    """Raised when a `LazyPullback` or `LazyPushforward` reaches a linker unexpanded."""


class LazyRegionOp(HasInnerGraph, Op):
    """Base of `LazyPullback` and `LazyPushforward`: a derivative of a region, built later.

    Parameters
    ----------
    fgraph
        The region, frozen (shown by :func:`pytensor.dprint`).
    wrt
        Positions of the region inputs that the derivative is taken for.
    """

    __props__ = ("fgraph", "wrt")

    def __init__(self, fgraph: FrozenFunctionGraph, wrt: Sequence[int]):
        if not isinstance(fgraph, FrozenFunctionGraph):
            raise TypeError(
                f"{type(self).__name__} needs a FrozenFunctionGraph, got {type(fgraph).__name__}"
            )
        self.fgraph = fgraph
        self.wrt = tuple(int(i) for i in wrt)
        n_inputs = len(fgraph.inputs)
        if any(not 0 <= i < n_inputs for i in self.wrt):
            raise ValueError(f"wrt positions {self.wrt} out of range for {n_inputs} inputs")

    @classmethod
    def from_graph(
        cls,
        inputs: Sequence[Variable],
        outputs: Sequence[Variable],
        wrt: Sequence[int],
    ):
        """Freeze the graph between `inputs` and `outputs` into an Op of this class.

        The graph is copied; `inputs` and `outputs` are left untouched.
        """
        return cls(FrozenFunctionGraph.from_io(inputs, outputs), wrt)

    def __str__(self):
        ops = dict.fromkeys(type(node.op).__name__ for node in self.fgraph.toposort())
        return f"{type(self).__name__}{{{', '.join(ops)}}}"

    def clone(self):
        # The inner graph is frozen: there is nothing to copy.
        return self

    def perform(self, node, inputs, output_storage):
        raise LazyPullbackNotExpandedError(
            f"{self} reached a linker without being expanded. It is expanded by the "
            "'expand_lazy_pullback' rewrite, which every standard mode runs (tags "
            "'fast_run', 'fast_compile', 'minimum_compile'). If you built a mode "
            "that excludes it, include it again, or expand the graph first with "
            "pytensor_lazy_pullback.expand_lazy_pullbacks(outputs)."
        )


class LazyPullback(LazyRegionOp):
    r"""The pullback (vector-Jacobian product) of a region, built at compile time.

    :func:`pytensor.grad` creates one `LazyPullback` for each region of
    un-lowered nodes (for instance :mod:`pytensor.xtensor` Ops) that the
    gradient passes through, instead of calling the pullback of every node.
    The ``expand_lazy_pullback`` rewrite, which runs during compilation just
    before the un-lowered Ops are lowered, lowers a private copy of the region
    and replaces this node by the ordinary pullback of the lowered graph.

    The inner graph (shown by :func:`pytensor.dprint`) is the region itself:
    its inputs are the region's inputs and its outputs are the region's
    outputs.

    Parameters
    ----------
    fgraph
        The region, frozen.
    wrt
        Positions of the region inputs whose cotangent this Op returns.

    Notes
    -----
    The node's inputs are the region's inputs followed by one cotangent per
    region output; its outputs are the cotangents of the inputs at positions
    `wrt`, each of the same type as its input.
    """

    def make_node(self, *inputs: Variable) -> Apply:
        inner_inputs = self.fgraph.inputs
        inner_outputs = self.fgraph.outputs
        n_in, n_out = len(inner_inputs), len(inner_outputs)
        if len(inputs) != n_in + n_out:
            raise TypeError(
                f"{self} expects {n_in} region input(s) followed by {n_out} "
                f"cotangent(s), got {len(inputs)} variable(s)"
            )
        region_inputs = [
            inner.type.filter_variable(outer)
            for inner, outer in zip(inner_inputs, inputs[:n_in], strict=True)
        ]
        cotangents = [
            align_cotangent(inner, cotangent)
            for inner, cotangent in zip(inner_outputs, inputs[n_in:], strict=True)
        ]
        outputs = [self._cotangent_type(inner_inputs[i])() for i in self.wrt]
        return Apply(self, [*region_inputs, *cotangents], outputs)

    def _cotangent_type(self, var: Variable):
        """The type of `var`'s cotangent: `var`'s, with a float dtype if `var` is discrete.

        A cotangent is never an integer (PyTensor's gradient contract).  For a
        discrete input the dtype is what the lowered chain rule gives, read off
        the region's own types: each node reading the input (through
        conversions) contributes its floating-point output's dtype, or
        ``floatX`` (the zeros a node with a discrete output returns); the
        terms add up (upcast).
        """
        if var.type.dtype in continuous_dtypes:
            return var.type
        fgraph = self.fgraph
        dtypes, stack, seen = [], [var], {var}
        while stack:
            current = stack.pop()
            if current in fgraph.outputs:
                dtypes.append(config.floatX)
            for client, _ in fgraph.clients.get(current, ()):
                if not isinstance(client, Apply):
                    continue
                for out in client.outputs:
                    if out.type.dtype in float_dtypes:
                        dtypes.append(out.type.dtype)
                    elif is_conversion(client):
                        if out not in seen:
                            seen.add(out)
                            stack.append(out)
                    else:
                        dtypes.append(config.floatX)
        return var.type.clone(dtype=upcast(*dtypes) if dtypes else config.floatX)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[i] for i in self.wrt]

    def pullback(self, inputs, outputs, output_grads):
        """Return the pullback of this pullback: another, equally lazy, `LazyPullback`.

        Its region is this very node, applied to fresh inputs, so the
        second-order graph is only built when it is expanded.
        """
        connected = [
            j
            for j, g in enumerate(output_grads)
            if not isinstance(g.type, DisconnectedType | NullType)
        ]
        grads: list[Variable] = [disconnected_type() for _ in inputs]
        wrt = [
            i
            for i, inp in enumerate(inputs)
            if getattr(inp.type, "dtype", None) in continuous_dtypes
        ]
        if not connected or not wrt:
            return grads
        fresh = [inp.type() for inp in inputs]
        fresh_outputs = self(*fresh, return_list=True)
        second = LazyPullback.from_graph(fresh, [fresh_outputs[j] for j in connected], wrt)
        results = second(*inputs, *(output_grads[j] for j in connected), return_list=True)
        for i, g in zip(wrt, results, strict=True):
            grads[i] = g
        return grads


def align_cotangent(output: Variable, cotangent: Variable) -> Variable:
    """Arrange `cotangent` like `output`, by the rules registered for its type.

    Raises
    ------
    TypeError
        If `cotangent` cannot be the cotangent of `output` (the message names
        both and says what is expected).
    """
    rules = cotangent_rules(output)
    if rules is not None:
        return rules.align(output, cotangent)
    if getattr(cotangent.type, "ndim", None) != getattr(output.type, "ndim", None):
        raise TypeError(
            f"The cotangent {cotangent} of type {cotangent.type} does not match "
            f"the region output {output} of type {output.type}"
        )
    return cotangent


class LazyPushforward(LazyRegionOp):
    r"""The pushforward (Jacobian-vector product) of a region, built at compile time.

    :func:`pytensor.gradient.pushforward` creates one `LazyPushforward` for
    each region of un-lowered nodes between its ``wrt`` and ``f``, instead of
    asking every node for its own pushforward (un-lowered Ops have none).  The
    ``expand_lazy_pullback`` rewrite replaces it by the pushforward of the
    lowered region, built from each lowered Op's own ``pushforward``.

    Parameters
    ----------
    fgraph
        The region, frozen (shown by :func:`pytensor.dprint`).
    wrt
        Positions of the region inputs that carry a tangent.

    use_op_pushforward
        Build the expansion from each lowered Op's own ``pushforward`` (as
        :func:`pytensor.gradient.pushforward` with ``use_op_pushforward=True``
        does), else as the pullback of the lowered region's pullback.

    Notes
    -----
    The node's inputs are the region's inputs followed by one tangent per
    position in `wrt`; its outputs are the tangents of the region's outputs,
    each of the type of its output (floating point).
    """

    __props__ = ("fgraph", "wrt", "use_op_pushforward")

    def __init__(
        self, fgraph: FrozenFunctionGraph, wrt: Sequence[int], use_op_pushforward: bool = True
    ):
        super().__init__(fgraph, wrt)
        self.use_op_pushforward = bool(use_op_pushforward)

    @classmethod
    def from_graph(cls, inputs, outputs, wrt, use_op_pushforward: bool = True):
        """Freeze the graph between `inputs` and `outputs` into a `LazyPushforward`."""
        return cls(FrozenFunctionGraph.from_io(inputs, outputs), wrt, use_op_pushforward)

    def make_node(self, *inputs: Variable) -> Apply:
        inner_inputs = self.fgraph.inputs
        n_in, n_tan = len(inner_inputs), len(self.wrt)
        if len(inputs) != n_in + n_tan:
            raise TypeError(
                f"{self} expects {n_in} region input(s) followed by {n_tan} "
                f"tangent(s), got {len(inputs)} variable(s)"
            )
        region_inputs = [
            inner.type.filter_variable(outer)
            for inner, outer in zip(inner_inputs, inputs[:n_in], strict=True)
        ]
        tangents = [
            align_cotangent(inner_inputs[i], tangent)
            for i, tangent in zip(self.wrt, inputs[n_in:], strict=True)
        ]
        outputs = [_tangent_type(out)() for out in self.fgraph.outputs]
        return Apply(self, [*region_inputs, *tangents], outputs)

    def infer_shape(self, node, input_shapes):
        from pytensor.compile.builders import infer_shape

        inner = self.fgraph.unfreeze()
        return infer_shape(inner.outputs, inner.inputs, input_shapes[: len(inner.inputs)])


def _tangent_type(var: Variable):
    """`var`'s type, with ``floatX`` if `var` is discrete (a tangent is never an integer)."""
    if var.type.dtype in continuous_dtypes:
        return var.type
    return var.type.clone(dtype=config.floatX)
