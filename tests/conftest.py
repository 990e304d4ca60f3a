"""Shared test fixtures."""
import jax
import pytest
from hypothesis import settings

# jit compilation makes the first example slow; keep property tests small and untimed.
settings.register_profile("jaxseq", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("jaxseq")


@pytest.fixture
def x64():
  """Runs a test with 64-bit JAX types (for float64 oracles and check_grads)."""
  with jax.enable_x64(True):
    yield
