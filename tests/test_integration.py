"""The add-on's integration into PyTensor: ``enable``/``disable`` and the version check.

An unsupported or unrecognised PyTensor fails the import clearly and leaves
PyTensor unchanged; ``enable`` and ``disable`` are idempotent and reversible,
also for functions imported while enabled.  (Left out of the in-tree patch,
which has no switch.)
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest

import pytensor_lazy_pullback as plp
from pytensor_lazy_pullback import integration


def test_unrecognised_pytensor_version_fails_import_clearly(monkeypatch):
    plp.disable()
    try:
        monkeypatch.setattr(pytensor, "__version__", "3.9.0")
        with pytest.raises(ImportError, match=r"pytensor 3\.9\.0 is outside the supported range"):
            plp.enable()
        assert not plp.is_enabled()
        # The rest of PyTensor is unaffected.
        t = pt.vector("t")
        assert pt.grad((t**2).sum(), t).eval({t: np.ones(2)}).tolist() == [2.0, 2.0]
    finally:
        monkeypatch.undo()
        plp.enable()


def test_changed_internals_fail_import_clearly(monkeypatch):
    plp.disable()
    try:
        monkeypatch.setattr(gradient, "_populate_grad_dict", lambda graph, wrt: None)
        with pytest.raises(ImportError, match=r"_populate_grad_dict has parameters"):
            plp.enable()
        assert not plp.is_enabled()
    finally:
        monkeypatch.undo()
        plp.enable()


@pytest.mark.parametrize("version", ["2.0.0", "3.4.0", "0+unknown", "3.3.9.dev0", "3.3.8+4.g1a2b3c"])
def test_import_on_unsupported_version_in_fresh_process(version):
    """Any version that is not a supported release: ImportError, and PyTensor unchanged."""
    code = textwrap.dedent(
        f"""
        import pytensor
        import pytensor.gradient as gradient
        import pytensor.tensor as pt
        from pytensor.compile import optdb
        from pytensor.graph.replace import _vectorize_node
        from pytensor.xtensor.basic import Rename
        from pytensor.xtensor.rewriting.utils import lower_xtensor_db
        from pytensor.xtensor.type import XTensorType
        from pytensor.xtensor import vectorization

        def state():
            return (
                dict(vars(gradient)), dict(vars(pt)), dict(vars(vectorization)),
                dict(vars(Rename)), dict(vars(XTensorType)),
                sorted(optdb._names), sorted(lower_xtensor_db._names),
                dict(_vectorize_node.registry),
            )

        before = state()
        pytensor.__version__ = {version!r}
        try:
            import pytensor_lazy_pullback
        except ImportError as err:
            print("ImportError:", err)
        print("unchanged", state() == before)
        t = pt.vector("t")
        print("plain grad ok", pt.grad((t ** 2).sum(), t).eval({{t: [1.0, 2.0]}}).tolist())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "ImportError: pytensor_lazy_pullback cannot integrate" in out.stdout, out.stderr
    assert "unchanged True" in out.stdout
    assert "plain grad ok [2.0, 4.0]" in out.stdout


def test_enable_disable_idempotent_and_reversible():
    original = integration._originals["_populate_grad_dict"]
    plp.enable()
    plp.enable()
    assert gradient._populate_grad_dict is not original
    assert gradient._populate_grad_dict.__wrapped__ is original
    with plp.integration_disabled():
        assert gradient._populate_grad_dict is original
        x = px.xtensor("x", dims=("a",), shape=(2,))
        with pytest.raises(NotImplementedError, match="pullback not implemented"):
            pt.grad(px.math.exp(x).sum().values, x)
    assert plp.is_enabled()


def test_functions_imported_while_enabled_behave_like_pytensors_while_disabled():
    from pytensor.gradient import jacobian, pushforward  # the rebound versions

    t = pt.vector("t", shape=(3,))
    v = pt.vector("v", shape=(3,))
    x = px.xtensor("x", dims=("a",), shape=(3,))
    with plp.integration_disabled():
        jvp = pushforward((t**2).sum(), t, v)
        np.testing.assert_allclose(jvp.eval({t: [1.0, 2.0, 3.0], v: [1.0, 1.0, 1.0]}), 12.0)
        jac = jacobian(t**2, t)
        np.testing.assert_allclose(jac.eval({t: [1.0, 2.0, 3.0]}), np.diag([2.0, 4.0, 6.0]))
        # PyTensor's own behaviour on labelled arguments, not the add-on's.
        with pytest.raises(Exception) as pytensors:
            pushforward((x**2).sum(), x, x)
        assert not isinstance(pytensors.value, KeyError)
    jvp = pushforward((x**2).sum(), x, x)  # enabled again: the labelled version
    np.testing.assert_allclose(jvp.eval({x: [1.0, 2.0, 3.0]}), 28.0)


def test_disable_restores_rename_and_xtensortype():
    from pytensor.xtensor.basic import Rename
    from pytensor.xtensor.type import XTensorType

    pytensors_pullback = Rename.pullback.__wrapped__
    with plp.integration_disabled():
        assert Rename.pullback is pytensors_pullback
        assert "in_same_class" not in vars(XTensorType)
    assert Rename.pullback.__wrapped__ is pytensors_pullback
    assert "in_same_class" in vars(XTensorType)
