"""conftest.py for running PyTensor's own gradient tests with or without the add-on.

Copied as ``conftest.py`` next to the extracted ``tests/`` by
``scripts/pytensor_suites.py``, which sets:

``PYTENSOR_SUITES_MODE``
    ``plain`` (the add-on must not be imported), ``addon`` (it is imported here
    and must be enabled) or ``patched`` (a PyTensor with the in-tree patch of
    ``scripts/upstream.py``; the add-on must not even be importable).
``PYTENSOR_SUITES_REPO``
    The repository whose ``pytensor_lazy_pullback`` must be the one imported.
``PYTENSOR_SUITES_EVIDENCE``
    A JSON file this conftest writes at the end of the session: the mode, where
    the add-on came from, whether it was enabled at the start and at the end, and
    how many times ``pytensor.gradient._populate_grad_dict`` (the step of
    ``grad`` that the add-on wraps) was called.  The runner checks it.

A wrong state at start-up raises here, which makes pytest stop with an error.
"""

import functools
import json
import os
import sys
from pathlib import Path

import pytensor
import pytensor.gradient as gradient

MODE = os.environ.get("PYTENSOR_SUITES_MODE")
REPO = os.environ.get("PYTENSOR_SUITES_REPO")
EVIDENCE = os.environ.get("PYTENSOR_SUITES_EVIDENCE")
ADDON = "pytensor_lazy_pullback"

if MODE not in ("plain", "addon", "patched") or not REPO or not EVIDENCE:
    raise RuntimeError(
        "run this directory through scripts/pytensor_suites.py "
        "(PYTENSOR_SUITES_MODE/REPO/EVIDENCE are not set)"
    )

evidence = {
    "mode": MODE,
    "pytensor_version": pytensor.__version__,
    "pytensor_file": pytensor.__file__,
    "linker": str(pytensor.config.linker),
    "addon_file": None,
    "enabled_at_start": False,
    "enabled_at_end": False,
    "imported_at_end": False,
    "hook_calls": 0,
    "in_tree": False,
    "problems": [],
}

if MODE == "addon":
    import pytensor_lazy_pullback
    from pytensor_lazy_pullback import integration

    evidence["addon_file"] = pytensor_lazy_pullback.__file__
    if not Path(pytensor_lazy_pullback.__file__).resolve().is_relative_to(
        Path(REPO).resolve()
    ):
        raise RuntimeError(
            f"imported {ADDON} from {pytensor_lazy_pullback.__file__}, "
            f"not from the repository {REPO}"
        )
    if not pytensor_lazy_pullback.is_enabled():
        raise RuntimeError(f"{ADDON} was imported but is_enabled() is False")
    original = integration._originals["_populate_grad_dict"]
    if gradient._populate_grad_dict is original or (
        getattr(gradient._populate_grad_dict, "__wrapped__", None) is not original
    ):
        raise RuntimeError(
            f"{ADDON} is enabled but pytensor.gradient._populate_grad_dict is "
            f"{gradient._populate_grad_dict!r}, not the add-on's"
        )
    evidence["enabled_at_start"] = True
else:
    if ADDON in sys.modules:
        raise RuntimeError(f"{ADDON} is imported in the run without the add-on")
    if MODE == "patched":
        import importlib.util

        if importlib.util.find_spec(ADDON) is not None:
            raise RuntimeError(f"{ADDON} is importable in the run of the patched PyTensor")
        try:
            import pytensor.gradient_lazy  # noqa: F401  (added by the patch)
        except ImportError as err:
            raise RuntimeError(f"this PyTensor is not patched: {err}") from err
        evidence["in_tree"] = True
    if gradient._populate_grad_dict.__module__ != "pytensor.gradient":
        raise RuntimeError(
            "pytensor.gradient._populate_grad_dict is not PyTensor's own: "
            f"{gradient._populate_grad_dict!r}"
        )

# Count the calls of the gradient step that the add-on wraps (its wrapper in the
# add-on run, PyTensor's own otherwise): evidence that the tests went through it.
_hook = gradient._populate_grad_dict


@functools.wraps(_hook)
def _counting_populate_grad_dict(*args, **kwargs):
    evidence["hook_calls"] += 1
    return _hook(*args, **kwargs)


gradient._populate_grad_dict = _counting_populate_grad_dict


def pytest_sessionfinish(session, exitstatus):
    imported = ADDON in sys.modules
    evidence["imported_at_end"] = imported
    if MODE == "addon":
        enabled = sys.modules[ADDON].is_enabled()
        evidence["enabled_at_end"] = enabled
        if not enabled:
            evidence["problems"].append(f"{ADDON} was disabled during the run")
    elif imported:
        evidence["problems"].append(f"{ADDON} got imported during the run without it")
    if gradient._populate_grad_dict is not _counting_populate_grad_dict:
        evidence["problems"].append(
            "pytensor.gradient._populate_grad_dict was replaced during the run"
        )
    Path(EVIDENCE).write_text(json.dumps(evidence, indent=2))
