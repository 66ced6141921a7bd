"""No regression in PyTensor itself: its own gradient suites pass with the add-on.

Runs ``scripts/pytensor_suites.py``, which takes the sdist of the installed
pytensor from the package index (cached in ``$PYTENSOR_SUITES_CACHE`` or
``~/.cache/pytensor-lazy-pullback/sdists``), runs its ``tests/test_gradient.py``
and ``tests/test_rop.py`` without and then with the add-on, and fails on any test
that fails only with the add-on.  About a minute; deselect with
``-m "not pytensor_suites"``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
EXIT_UNREACHABLE = 3  # the checker scripts: sdist not cached, index unreachable


def run_checker(name: str, timeout: int) -> str:
    """Run ``scripts/<name>`` and return its output; skip if the index is unreachable.

    Fails, with the end of the output, if the script exits with another non-zero status.
    """
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name)],
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
        pytest.skip(reason)
    assert proc.returncode == 0, (
        f"scripts/{name} exited {proc.returncode}:\n" + "\n".join(proc.stdout.splitlines()[-40:])
    )
    return proc.stdout


@pytest.mark.pytensor_suites
def test_pytensor_gradient_suites_pass_with_the_addon():
    assert "no regression" in run_checker("pytensor_suites.py", timeout=1800)
