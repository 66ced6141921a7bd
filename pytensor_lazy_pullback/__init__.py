"""Lazy, graph-level pullbacks for un-lowered PyTensor graphs.

Importing this package (once is enough; it is idempotent) makes
:func:`pytensor.grad` work on graphs that still hold un-lowered
:mod:`pytensor.xtensor` Ops.  Each region of such Ops that the gradient passes
through becomes a single :class:`LazyPullback` node, which the
``expand_lazy_pullback`` rewrite turns into the ordinary tensor pullback when
the gradient is compiled (or rewritten with ``lower_xtensor``).

Upstream home: the pieces are spread over PyTensor's tree as each module's
docstring says; this ``__init__`` is the add-on's public face only.
"""

# First: it refuses (ImportError) an unsupported PyTensor before anything is registered.
from pytensor_lazy_pullback.integration import (
    disable,
    enable,
    integration_disabled,
    is_enabled,
)
from pytensor_lazy_pullback.op import LazyPullback, LazyPushforward
from pytensor_lazy_pullback.unlowered import LazyPullbackNotExpandedError
from pytensor_lazy_pullback.rewriting import (
    LazyPullbackExpansionError,
    expand_inner_graphs,
    expand_lazy_pullback,
    expand_lazy_pullbacks,
)
from pytensor_lazy_pullback import xtensor as _xtensor  # noqa: F401  (registrations)

__all__ = [
    "LazyPullback",
    "LazyPullbackExpansionError",
    "LazyPullbackNotExpandedError",
    "LazyPushforward",
    "disable",
    "enable",
    "expand_inner_graphs",
    "expand_lazy_pullback",
    "expand_lazy_pullbacks",
    "integration_disabled",
    "is_enabled",
]

__version__ = "0.1.0"

enable()
