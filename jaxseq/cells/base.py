"""The ``Cell`` record and what every dense cell shares."""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq import initializers

Params = Any      # a dict pytree of arrays
Carry = Any       # an array or a NamedTuple of arrays
Initializer = Callable[..., jax.Array]


class InitFn(Protocol):
  def __call__(self, key: jax.Array, input_size: int) -> Params:
    """Returns fresh parameters for inputs with ``input_size`` features."""


class InitialCarryFn(Protocol):
  def __call__(self, params: Params, batch_shape: tuple[int, ...] = ()) -> Carry:
    """Returns the zero carry for inputs with leading ``batch_shape``."""


class StepFn(Protocol):
  def __call__(self, params: Params, carry: Carry, x_t: jax.Array) -> tuple[Carry, jax.Array]:
    """One time step: ``x_t`` is ``(*batch_shape, input_size)``; returns ``(carry, y_t)``."""


class Cell(NamedTuple):
  """One recurrent time step as pure functions (the optax ``GradientTransformation`` pattern).

  Attributes:
    init: ``init(key, input_size) -> params``, a plain dict of arrays.
    initial_carry: ``initial_carry(params, batch_shape) -> carry`` (zeros).
    step: ``step(params, carry, x_t) -> (carry, y_t)``.
    spec: static description of the cell (``name``, ``hidden_size``, ``output_size``, the
      factory's options, ``feature_ndim``: the rank of one step's input without batch axes).
      Used for error messages and weight interop; ``None`` for hand-made cells.
  """
  init: InitFn
  initial_carry: InitialCarryFn
  step: StepFn
  spec: Optional[Mapping[str, Any]] = None


class LSTMState(NamedTuple):
  """Carry of LSTM-type cells: hidden state ``h`` and cell state ``c``."""
  h: jax.Array
  c: jax.Array


def gate_blocks(init: Initializer, key: jax.Array, rows: int, hidden_size: int,
                num_gates: int, dtype) -> jax.Array:
  """A ``(rows, num_gates * hidden_size)`` kernel made of per-gate blocks from ``init``."""
  keys = jax.random.split(key, num_gates)
  return jnp.concatenate([init(k, (rows, hidden_size), dtype) for k in keys], axis=-1)


def dense_params(key: jax.Array, input_size: int, hidden_size: int, num_gates: int, *,
                 kernel_init: Initializer, recurrent_init: Initializer,
                 bias_init: Initializer, use_bias: bool, param_dtype,
                 recurrent_size: int | None = None, hidden_bias: bool = False) -> dict:
  """The params every dense cell has: ``w_ih (D, G*H)``, ``w_hh (H', G*H)``, ``b (G*H,)``.

  ``hidden_bias`` adds ``b_hn (H,)``, the bias inside a reset-after gate's product.
  """
  input_size = _checks.positive_int("input_size", input_size)
  k_ih, k_hh, k_b, k_bn = jax.random.split(key, 4)
  params = {"w_ih": gate_blocks(kernel_init, k_ih, input_size, hidden_size, num_gates,
                                param_dtype),
            "w_hh": gate_blocks(recurrent_init, k_hh, recurrent_size or hidden_size,
                                hidden_size, num_gates, param_dtype)}
  if use_bias:
    params["b"] = bias_init(k_b, (num_gates * hidden_size,), param_dtype)
    if hidden_bias:
      params["b_hn"] = bias_init(k_bn, (hidden_size,), param_dtype)
  return params


def default_inits(hidden_size: int, kernel_init, recurrent_init, bias_init):
  default = initializers.torch_default(hidden_size)
  return kernel_init or default, recurrent_init or default, bias_init or default


def check_input(name: str, w_ih: jax.Array, x_t: Any) -> None:
  """Cheap per-step check of a step input against the input kernel."""
  if not hasattr(x_t, "shape") or not x_t.ndim:
    _checks.fail("x_t", "an array of shape (*batch_shape, input_size)", repr(x_t), TypeError)
  if x_t.shape[-1] != w_ih.shape[0]:
    _checks.fail("x_t", f"feature size {w_ih.shape[0]} (the input size of these {name} params)",
                 f"shape {tuple(x_t.shape)}")
  if not jnp.issubdtype(x_t.dtype, jnp.floating):
    _checks.fail("x_t", "a floating-point array", f"dtype {x_t.dtype}", TypeError)


def cast(dtype, *arrays):
  """Casts arrays to the compute dtype (``None``: JAX's usual promotion)."""
  if dtype is None:
    return arrays
  return tuple(None if a is None else jnp.asarray(a, dtype) for a in arrays)


def common_options(hidden_size: int, use_bias: bool, dtype, param_dtype) -> int:
  hidden_size = _checks.positive_int("hidden_size", hidden_size)
  if not isinstance(use_bias, bool):
    _checks.fail("use_bias", "a bool", repr(use_bias), TypeError)
  for argument, value in (("dtype", dtype), ("param_dtype", param_dtype)):
    if value is not None:
      try:
        jnp.dtype(value)
      except TypeError:
        _checks.fail(argument, "a floating dtype", repr(value), TypeError)
      if not jnp.issubdtype(value, jnp.floating):
        _checks.fail(argument, "a floating dtype", repr(value), TypeError)
  return hidden_size


def zeros_carry(hidden_size: int, dtype):
  """``initial_carry`` for cells whose carry is one ``(*batch, H)`` array."""
  def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> jax.Array:
    return jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype or params["w_hh"].dtype)
  return initial_carry
