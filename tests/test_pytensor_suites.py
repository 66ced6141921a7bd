"""No regression in PyTensor itself: its own suites pass with the add-on and patched.

Runs ``scripts/pytensor_suites.py``, which takes the sdist of the installed
pytensor from the package index (cached in ``$PYTENSOR_SUITES_CACHE`` or
``~/.cache/pytensor-lazy-pullback/sdists``), runs its ``tests/test_gradient.py``
and ``tests/test_rop.py`` without and then with the add-on, and fails on any test
that fails only with the add-on (about a minute); and
``scripts/pytensor_gate.py`` on PyTensor's repository suites (the archive in
``../shared/pytensor-tests``), unpatched, with the add-on and on the patched
tree.  Deselect with ``-m "not pytensor_suites"``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
EXIT_UNREACHABLE = 3  # the checker scripts: sdist not cached, index unreachable


def run_checker(name: str, timeout: int, args: tuple[str, ...] = ()) -> str:
    """Run ``scripts/<name>`` and return its output; skip if the index is unreachable.

    Fails, with the end of the output, if the script exits with another non-zero status.
    """
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    if proc.returncode == EXIT_UNREACHABLE:
        reason = next(
            (line for line in proc.stdout.splitlines() if line.startswith("SKIP:")),
            "the package index is unreachable and the sdists are not cached",
        )
        pytest.skip(reason.removeprefix("SKIP: "))
    assert proc.returncode == 0, (
        f"scripts/{name} exited {proc.returncode}:\n" + "\n".join(proc.stdout.splitlines()[-40:])
    )
    return proc.stdout


@pytest.mark.pytensor_suites
def test_pytensor_gradient_suites_pass_with_the_addon():
    assert "no regression" in run_checker("pytensor_suites.py", timeout=1800)


GATE_SUITES = ("tests/xtensor", "tests/graph/test_replace.py", "tests/graph/rewriting")
"""What CI runs of PyTensor's repository suites (``scripts/pytensor_gate.py`` runs
more by default: the README's Upstream section says what CI leaves out)."""


@pytest.mark.pytensor_suites
def test_pytensors_xtensor_suites_pass_in_both_forms():
    """PyTensor's ``tests/xtensor`` (with the patch's own tests there, in the patched
    form), ``tests/graph/test_replace.py`` and ``tests/graph/rewriting`` (both edited
    by the patch), from the root of PyTensor's repository
    layout under its ``conftest.py``: no test fails with the add-on or on the patched
    tree that passes on PyTensor alone."""
    out = run_checker("pytensor_gate.py", timeout=2400, args=("--suites", *GATE_SUITES))
    assert "no regression" in out


@pytest.mark.pytensor_suites
def test_the_series_applies_step_by_step_and_its_core_passes():
    """Every patch of the series applies (``git am``) and imports in PyTensor's
    repository layout; after the core step (3, ``LazyPullback``) the tests it adds
    pass there and PyTensor's ``tests/xtensor``, ``test_gradient.py`` and
    ``test_rop.py`` have no new failure; ``scripts/pytensor_gate.py --series``
    checks every step so."""
    out = run_checker("pytensor_gate.py", timeout=2400, args=("--series", "--steps", "3"))
    assert "0003-lazy-pullback.patch: imports; passed=" in out
    assert "no regression" in out
