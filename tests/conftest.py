"""Shared test fixtures."""
import os

# Most of the suite's time is XLA:CPU compiling many small programs; LLVM's codegen at -O0
# compiles them about a third faster (measured on tests/test_model_language.py: 101 s ->
# 65 s on 2 cores), and the tests check values, not speed. XLA's HLO passes still run; set
# XLA_FLAGS with another level to test the default codegen. Read when the CPU backend
# starts, i.e. before any test runs.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
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
