"""Input validation shared by every public entry point.

Every check runs in Python on static shapes and dtypes, before tracing reaches XLA, and
fails with a message of the form ``"<argument>: expected <what>, got <what>"``.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def fail(argument: str, expected: str, received: Any, error: type = ValueError):
  raise error(f"{argument}: expected {expected}, got {received}")


def require(module: str, package: str, purpose: str):
  """Imports an optional dependency, or says which extra installs it."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(f"{purpose} needs {package}: pip install {package} "
                      "(or pip install 'jaxseq[examples]')") from error


def positive_int(argument: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    fail(argument, "a positive int", repr(value), TypeError)
  if value <= 0:
    fail(argument, "a positive int", repr(value))
  return int(value)


def optional_positive_int(argument: str, value: Any) -> int | None:
  return None if value is None else positive_int(argument, value)


def probability(argument: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
    fail(argument, "a float in [0, 1)", repr(value), TypeError)
  if not 0.0 <= value < 1.0:
    fail(argument, "a float in [0, 1)", repr(value))
  return float(value)


def choice(argument: str, value: Any, choices: Sequence[Any]) -> Any:
  if value not in choices:
    fail(argument, "one of " + ", ".join(repr(c) for c in choices), repr(value))
  return value


def float_array(argument: str, x: Any) -> jax.Array:
  """Returns ``x`` as a JAX array, insisting on a floating dtype, which it keeps: a float16
  or bfloat16 array stays one. What it is computed in is the callee's rule: a cell's
  ``dtype`` (``jnp.float16`` and ``jnp.bfloat16`` alike), else JAX's promotion with the
  params (a float16 input to float32 params gives float32, as ``x @ w`` does)."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    if isinstance(x, (list, tuple, float, int)) and not isinstance(x, bool):
      x = np.asarray(x)
    else:
      fail(argument, "an array", type(x).__name__, TypeError)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    fail(argument, "a floating-point array (cast with .astype(jnp.float32))",
         f"dtype {x.dtype}", TypeError)
  return jnp.asarray(x)


def _shape_tree(tree: Any) -> Any:
  return jax.tree.map(lambda a: tuple(np.shape(a)), tree)


def _describe(tree: Any) -> str:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return "{" + ", ".join(f"{jax.tree_util.keystr(p)}: {tuple(np.shape(a))}"
                         for p, a in leaves) + "}"


describe = _describe


@functools.lru_cache(maxsize=256)
def _expected_params(init, input_size):
  return jax.eval_shape(lambda: init(jax.random.PRNGKey(0), input_size))


def _same_shapes(a: Any, b: Any) -> bool:
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and _shape_tree(a) == _shape_tree(b))


same_shapes = _same_shapes


def cell_params(cell, params: Any, input_shape: Any) -> None:
  """Checks that ``params`` are this cell's parameters for one step's input: an int
  (dense features) or the shape ``(*spatial, C)`` without batch axes."""
  if isinstance(input_shape, (tuple, list)):
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) == 1:
      input_shape = input_shape[0]
  expected = _expected_params(cell.init, input_shape)
  if _same_shapes(expected, params):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        fail("params", "floating-point arrays (cast with .astype(jnp.float32))",
             f"{jax.tree_util.keystr(path)} of dtype {jnp.result_type(leaf)}", TypeError)
    return
  name = getattr(cell.spec, "name", "this cell")
  # Is it the feature size of xs that is wrong, not the params? Try the sizes in params.
  sizes = {d for a in jax.tree.leaves(params) for d in np.shape(a)}
  size_of = input_shape if isinstance(input_shape, int) else input_shape[-1]
  for size in sorted(sizes):
    candidate = size if isinstance(input_shape, int) else input_shape[:-1] + (size,)
    if _same_shapes(_expected_params(cell.init, candidate), params):
      fail("xs", f"feature size {size} (the input size of these {name} params)",
           f"feature size {size_of}")
  peephole = params.get("p_o") if isinstance(params, dict) else None
  if not isinstance(input_shape, int) and hasattr(peephole, "shape") and peephole.ndim >= 2:
    frame = tuple(peephole.shape[:-1])
    if _same_shapes(_expected_params(cell.init, frame + input_shape[-1:]), params):
      fail("xs", f"frames of spatial shape {frame} (the size of these {name} params' "
           "peephole weights)", f"one step's input shape {input_shape}")
  fail("params", f"params of {name} for input {'size' if isinstance(input_shape, int) else 'shape'} "
       f"{input_shape}, shaped {_describe(expected)}", _describe(params))


def carry(cell, params: Any, carry_value: Any, input_shape: tuple[int, ...]) -> None:
  """Checks a carry against the cell's zero carry for one step's ``input_shape`` (batch
  axes included)."""
  expected = jax.eval_shape(lambda p: cell.initialize_carry(p, tuple(input_shape)), params)
  if not _same_shapes(expected, carry_value):
    fail("carry", f"a carry shaped {_describe(expected)} for inputs of shape "
         f"{tuple(input_shape)}", _describe(carry_value))


def lengths(value: Any, batch_shape: tuple[int, ...], num_steps: int) -> jax.Array | None:
  """Validates per-example sequence lengths; values are checked when they are concrete."""
  if value is None:
    return None
  if not hasattr(value, "dtype"):
    value = np.asarray(value)
  if not jnp.issubdtype(value.dtype, jnp.integer):
    fail("lengths", "an integer array", f"dtype {value.dtype}", TypeError)
  if tuple(value.shape) != tuple(batch_shape):
    fail("lengths", f"shape {tuple(batch_shape)} (the batch shape of xs)",
         f"shape {tuple(value.shape)}")
  if not isinstance(value, jax.core.Tracer):
    concrete = np.asarray(value)
    if concrete.size and (concrete.min() < 0 or concrete.max() > num_steps):
      fail("lengths", f"values in [0, {num_steps}] (the number of time steps)",
           f"values in [{concrete.min()}, {concrete.max()}]")
  return jnp.asarray(value)


def boolean(argument: str, value: Any) -> bool:
  """A bool (NumPy's too); a truthy string such as ``"False"`` is rejected, not obeyed."""
  if not isinstance(value, (bool, np.bool_)):
    fail(argument, "a bool (True or False)", repr(value), TypeError)
  return bool(value)


def number(argument: str, value: Any, expected: str = "a finite float",
           valid: Any = None) -> float:
  """A finite real number (an int or float, not a bool or a string), and ``valid(value)``
  when given; ``expected`` describes both for the message."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.integer, np.floating)):
    fail(argument, expected, repr(value), TypeError)
  number_ = float(value)
  if not math.isfinite(number_) or (valid is not None and not valid(number_)):
    fail(argument, expected, repr(value))
  return number_


def positive_float(argument: str, value: Any) -> float:
  return number(argument, value, "a positive finite float", lambda v: v > 0)


def function(argument: str, value: Any, what: str = "a callable") -> Any:
  """A callable (an activation, a gate function)."""
  if not callable(value):
    fail(argument, what, repr(value), TypeError)
  return value


def initializer(argument: str, value: Any) -> Any:
  """``None`` (the default initializer) or a callable ``init(key, shape, dtype)``."""
  if value is not None and not callable(value):
    fail(argument, "an initializer, a callable init(key, shape, dtype) (or None for the "
         "default)", repr(value), TypeError)
  return value


def positive_ints(argument: str, value: Any, length: int | None = None,
                  what: str = "") -> tuple[int, ...]:
  """A list or tuple of positive ints (exactly ``length`` of them, when given)."""
  count = "a non-empty tuple of" if length is None else f"a tuple of {length}"
  expected = f"{count} positive ints" + (f" ({what})" if what else "")
  if not isinstance(value, (tuple, list)):
    fail(argument, expected, repr(value), TypeError)
  if len(value) != length if length is not None else not value:
    fail(argument, expected, repr(value))
  return tuple(positive_int(f"{argument}[{i}]", v) for i, v in enumerate(value))


def nonnegative_int(argument: str, value: Any) -> int:
  """An int >= 0 (bools are not ints here)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    fail(argument, "a non-negative int", repr(value), TypeError)
  if value < 0:
    fail(argument, "a non-negative int", repr(value))
  return int(value)


def prng_key(key: Any) -> None:
  """A single PRNG key (what turns dropout on), or ``None``: a typed key of shape ``()`` or
  a raw uint32 key of shape ``(k,)``; cheap, as every layer of a deep model sees it."""
  if key is None:
    return
  expected = "a single PRNG key from jax.random.PRNGKey or jax.random.key"
  if not (hasattr(key, "dtype") and hasattr(key, "shape")):
    fail("key", expected, type(key).__name__, TypeError)
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  if not (key.ndim == 0 if typed else (key.ndim == 1 and key.dtype == jnp.uint32)):
    fail("key", expected, f"an array of dtype {key.dtype} and shape {tuple(key.shape)}",
         TypeError)


def init_key(key: Any) -> None:
  """The key an ``init`` draws from: a single PRNG key, never ``None``."""
  if key is None:
    fail("key", "a single PRNG key from jax.random.PRNGKey or jax.random.key", "None",
         TypeError)
  prng_key(key)


def float_dtype(argument: str, value: Any) -> Any:
  """A floating dtype (``jnp.float32``, ``jnp.bfloat16``, ``"float16"``...)."""
  expected = "a floating dtype (jnp.float32, jnp.bfloat16, ...)"
  if value is None:
    fail(argument, expected, "None", TypeError)
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    fail(argument, expected, repr(value), TypeError)
  if not jnp.issubdtype(dtype, jnp.floating):
    fail(argument, expected, repr(value) if isinstance(value, str) else dtype.name, TypeError)
  return value


def param_dict(params: Any, required: Sequence[str], layer: str) -> None:
  """``params`` is a dict holding at least the entries ``required`` (a layer's params)."""
  expected = f"the params of {layer}, a dict with keys {sorted(required)}"
  if not hasattr(params, "keys"):
    fail("params", expected, type(params).__name__, TypeError)
  if any(name not in params for name in required):
    fail("params", expected, sorted(params.keys()))
