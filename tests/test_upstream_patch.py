"""The in-tree form: the generated PyTensor patch passes PyTensor's own suites, alone.

Runs ``scripts/upstream_check.py``: generates the patch against the sdist of the
installed pytensor (cached in ``$PYTENSOR_SUITES_CACHE`` or
``~/.cache/pytensor-lazy-pullback/sdists``), checks that it applies cleanly to the
oldest and newest 3.3.x sdists, installs the patched PyTensor **without** this
package into a venv (cached by the patch's hash), and runs there PyTensor's
``tests/test_gradient.py`` and ``tests/test_rop.py`` (no new failure compared
with the unpatched PyTensor), the patch's own tests (all pass) and the demo.
Deselect with ``-m "not upstream_patch"``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
EXIT_UNREACHABLE = 3  # scripts/upstream_check.py: not cached, index unreachable


@pytest.mark.upstream_patch
def test_upstream_patch_passes_pytensors_suites_without_the_addon():
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "upstream_check.py")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=2400,
    )
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    if proc.returncode == EXIT_UNREACHABLE:
        reason = next(
            (line for line in proc.stdout.splitlines() if line.startswith("SKIP:")),
            "the package index is unreachable and the sdists are not cached",
        )
        pytest.skip(reason)
    assert proc.returncode == 0, (
        f"scripts/upstream_check.py exited {proc.returncode}:\n"
        + "\n".join(proc.stdout.splitlines()[-40:])
    )
    assert "upstream patch OK" in proc.stdout


def test_generator_refuses_a_tree_that_is_not_pytensor(tmp_path):
    out = tmp_path / "out.patch"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "upstream.py"), str(tmp_path), str(out)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a PyTensor source tree" in proc.stderr
    assert not out.exists()


def test_generator_names_a_changed_anchor_and_writes_nothing(tmp_path):
    """A PyTensor tree whose hooked function changed shape: one line, nothing written."""
    gradient = tmp_path / "pytensor" / "gradient.py"
    gradient.parent.mkdir()
    (tmp_path / "pytensor" / "__init__.py").write_text("")
    gradient.write_text("def _populate_grad_dict(graph, wrt):\n    pass\n")
    (tmp_path / "pytensor" / "tensor").mkdir()
    (tmp_path / "pytensor" / "tensor" / "__init__.py").write_text(
        "from pytensor.gradient import grad, hessian, jacobian\n"
    )
    out = tmp_path / "out.patch"
    before = gradient.read_text()
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "upstream.py"), str(tmp_path), str(out)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "pytensor/gradient.py" in line and "_populate_grad_dict" in line
    assert not out.exists()
    assert gradient.read_text() == before


def test_every_test_file_is_carried_or_left_out_with_a_reason():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import upstream
    finally:
        sys.path.remove(str(SCRIPTS))
    files = {path.name for path in Path(__file__).parent.glob("test_*.py")}
    carried, left_out = set(upstream.TESTS), set(upstream.LEFT_OUT_TESTS)
    assert not carried & left_out
    assert files == carried | left_out, (
        f"not in scripts/upstream.py TESTS nor LEFT_OUT_TESTS: {sorted(files - carried - left_out)}; "
        f"named there but missing: {sorted((carried | left_out) - files)}"
    )
