"""Shared test set-up."""
import pytest


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Training and prediction set Keras' global dtype policy (--precision); a test that ran
    them in-process must not leave bfloat16 to the next test's models."""
    yield
    import sys
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")
