import pytensor
import pytest


@pytest.fixture(autouse=True, scope="session")
def _strict_rewrites():
    """Every test runs with rewrite failures raised, as the project requires."""
    previous = pytensor.config.on_opt_error
    pytensor.config.on_opt_error = "raise"
    yield
    pytensor.config.on_opt_error = previous
