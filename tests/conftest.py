"""Fixtures of the whole suite.

With PyTensor's default ``on_opt_error="warn"`` (as users run it), its
rewriters log an exception raised inside a rewrite and carry on; PyTensor's
own CI sets ``"raise"``, under which the in-tree copies of these tests run.
Nothing here fixes the value.  The autouse fixture below fails any test
during which such a failure was logged, so a rewrite error cannot pass
unnoticed; tests of errors set both values themselves (``on_opt_error``).
"""

import logging

import pytensor
import pytest

REWRITE_LOGGER = "pytensor.graph.rewriting"
"""Parent of the loggers of PyTensor's rewriters (``basic``, ``db``, ...)."""


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(autouse=True)
def fail_on_logged_rewrite_failure(request):
    """Fail the test if PyTensor logged a rewrite failure while it ran.

    A test marked ``checks_logged_rewrite_failures`` judges them itself (the
    fuzzer tolerates one that the reference, compiled alone, logs too: a
    PyTensor bug that is not ours).
    """
    handler = _Collect()
    logger = logging.getLogger(REWRITE_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    if handler.records and not request.node.get_closest_marker("checks_logged_rewrite_failures"):
        first = handler.records[0].getMessage()
        pytest.fail(
            f"PyTensor logged {len(handler.records)} rewrite failure record(s) during "
            f"this test; the first: {first}",
            pytrace=False,
        )


@pytest.fixture(params=["warn", "raise"])
def on_opt_error(request):
    """Run an error test under both values of ``pytensor.config.on_opt_error``."""
    with pytensor.config.change_flags(on_opt_error=request.param):
        yield request.param
