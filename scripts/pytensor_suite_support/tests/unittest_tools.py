"""Minimal stand-in for PyTensor's ``tests/unittest_tools.py``, which its sdist does not ship.

PyTensor's ``tests/test_gradient.py`` and ``tests/test_rop.py`` use exactly two names
from it: ``fetch_seed`` (a seed for ``np.random.default_rng``) and ``verify_grad``
(finite differences with a seeded generator).  ``scripts/pytensor_suites.py`` checks,
before running, that every ``utt.NAME`` the extracted files use is defined here.
"""

import os

import numpy as np

import pytensor.gradient

__all__ = ["fetch_seed", "verify_grad"]

DEFAULT_SEED = 666
"""Seed used unless ``$PYTENSOR_SUITES_SEED`` says otherwise."""


def fetch_seed(pseed=None):
    """The seed for the tests' random generators.

    ``pseed`` if given, else ``$PYTENSOR_SUITES_SEED``, else `DEFAULT_SEED`.
    """
    if pseed is None:
        pseed = os.environ.get("PYTENSOR_SUITES_SEED", DEFAULT_SEED)
    return int(pseed)


def verify_grad(fun, pt, n_tests=2, rng=None, *args, **kwargs):
    """`pytensor.gradient.verify_grad` with a generator seeded by `fetch_seed`.

    Looked up on ``pytensor.gradient`` at each call, so it differentiates with
    whatever ``grad`` machinery is in effect (with or without the add-on).
    """
    if rng is None:
        rng = np.random.default_rng(fetch_seed())
    pytensor.gradient.verify_grad(fun, pt, n_tests, rng, *args, **kwargs)
