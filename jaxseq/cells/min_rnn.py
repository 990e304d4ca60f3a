r"""Minimal GRU and LSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We
Needed?"): every gate depends on the input alone, so the state update is linear in the state,

    h_t = a_t \odot h_{t-1} + b_t,      (a_t, b_t) functions of x_t only,

and a whole sequence runs in parallel over time: the input half is one GEMM over T·B rows,
the coefficients ``a_t, b_t`` of all steps are one elementwise op, and what is left is the
linear recurrence above (``linear_recurrence``), an associative scan of depth O(log T) or a
``lax.scan`` of one multiply-add per step.

Log space. The paper's Appendix evaluates the recurrence in log space (Heinsen 2023:
``h = exp(a* + logcumsumexp(log b - a*))`` with ``a* = cumsum(log a)``), because the closed
form ``h_t = A_t (h_0 + sum_k b_k / A_k)``, ``A_t = prod_{s<=t} a_s``, under- and overflows in
linear space; log space needs ``b_t > 0`` and ``h_0 > 0``, so its candidate state is
``g(Linear(x_t))`` with the positive ``g`` below instead of ``Linear(x_t)``. jaxseq never
divides by ``A_t``: its scans compose the pairs ``(a, b), (a', b') -> (a' a, a' b + b')``,
whose entries stay bounded (``0 < a < 1``), so linear space is stable for candidates of any
sign and needs no ``g``. The default cell is the paper's main-text model
(``h~_t = Linear(x_t)``); ``activation=positive_g`` is the model of its log-space code, with
the same equations in the step, the reference scan and the parallel kernel. On this CPU the
log-space form measured 20-250x slower than the sequential scan
(``benchmarks/results/min_rnn.md``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq import _checks
from jaxseq import initializers
from jaxseq import specs
from jaxseq.cells.base import (Cell, Initializer, Kernel, cast, check_callable, common_options,
                               dense_check, dense_input_size, dense_project, gate_blocks,
                               split_cell, step_shape)

Activation = Callable[[jax.Array], jax.Array]

SCANS = ("auto", "sequential", "associative")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MinGRUSpec(specs.CellSpec):
  """``min_gru``: ``activation`` on the candidate (``None``: identity), ``scan`` as given."""
  activation: Optional[Activation] = None
  scan: str = "auto"
  name: str = "min_gru"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MinLSTMSpec(specs.CellSpec):
  """``min_lstm``: ``activation`` on the candidate (``None``: identity), ``scan`` as given."""
  activation: Optional[Activation] = None
  scan: str = "auto"
  name: str = "min_lstm"


def positive_g(x: jax.Array) -> jax.Array:
  r"""The paper's ``g`` (Appendix): ``x + 1/2`` for ``x >= 0``, ``\sigma(x)`` below.
  Continuous, increasing and positive, so candidates ``g(Linear(x_t))`` keep ``h_t > 0`` from
  a positive ``h_0`` (what the log-space form needs)."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


# ----------------------------------------------------------------------------- the scan


def linear_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array, reverse: bool = False,
                      scan: str = "auto", unroll: int | bool = 1) -> jax.Array:
  r"""All states of ``h_t = a_t \odot h_{t-1} + b_t``, ``h_{-1} = h0``, over the leading axis.

  Args:
    a, b: ``(T, *shape)`` coefficients.
    h0: ``(*shape)`` initial state.
    reverse: run from ``t = T-1`` down to 0 (``h_t = a_t h_{t+1} + b_t``, ``h_T = h0``).
    scan: ``"associative"``: ``lax.associative_scan`` over the pairs ``(a_t, b_t)``, depth
      O(log T), for accelerators; ``"sequential"``: ``lax.scan`` of the multiply-add, the
      fastest measured on a 2-core CPU (the associative scan 2-10x slower, a chunked two-level
      scan no faster: ``benchmarks/results/min_rnn.md``); ``"auto"``: sequential on CPU,
      associative on other backends (``jax.default_backend()``, read when traced; the
      accelerator choice follows the paper and is not measured here).
    unroll: ``lax.scan``'s unroll factor for the sequential scan.

  Returns:
    ``(T, *shape)``: ``h_t`` for every ``t``.

  The derivative is a ``jax.custom_jvp`` whose tangent is the same recurrence,
  ``dh_t = a_t dh_{t-1} + (da_t h_{t-1} + db_t)``: forward mode is that rule, and reverse
  mode is JAX's transpose of it, the reverse recurrence ``\lambda_t = \bar h_t + a_{t+1}
  \lambda_{t+1}`` with ``\bar a_t = \lambda_t h_{t-1}``, ``\bar b_t = \lambda_t``: only ``a``
  and ``h`` are kept for the backward pass.
  """
  _checks.choice("scan", scan, SCANS)
  if scan == "auto":
    scan = "sequential" if jax.default_backend() == "cpu" else "associative"
  dtype = jnp.result_type(a, b, h0)
  a, b, h0 = (jnp.asarray(v, dtype) for v in (a, b, h0))
  return _linear_recurrence(a, b, h0, reverse, scan, unroll)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _linear_recurrence(a, b, h0, reverse, scan, unroll):
  return _evaluate(a, b, h0, reverse, scan, unroll)


@_linear_recurrence.defjvp
def _linear_recurrence_jvp(reverse, scan, unroll, primals, tangents):
  a, b, h0 = primals
  da, db, dh0 = tangents
  h = _linear_recurrence(a, b, h0, reverse, scan, unroll)
  if reverse:
    h_prev = jnp.concatenate([h[1:], h0[None]])
  else:
    h_prev = jnp.concatenate([h0[None], h[:-1]])
  # Linear in (da, db, dh0) with a fixed: JAX transposes it into the reverse recurrence.
  return h, _evaluate(a, da * h_prev + db, dh0, reverse, scan, unroll)


def _evaluate(a, b, h0, reverse, scan, unroll):
  if scan == "sequential":
    def body(h, ab_t):
      a_t, b_t = ab_t
      h = a_t * h + b_t
      return h, h
    return lax.scan(body, h0, (a, b), reverse=reverse, unroll=unroll)[1]
  # h0 enters as part of the first step's b; then h_t is the b of the prefix composition.
  first = a.shape[0] - 1 if reverse else 0
  b = jnp.asarray(b).at[first].add(a[first] * h0)
  def compose(earlier, later):
    return later[0] * earlier[0], later[0] * earlier[1] + later[1]
  return lax.associative_scan(compose, (a, b), reverse=reverse)[1]


# ----------------------------------------------------------------------------- the cells


def min_gru_coefficients(gx: jax.Array, activation: Activation | None = None):
  r"""``(a_t, b_t) = (1 - z_t, z_t \odot \tilde h_t)`` from ``gx = x_t W + b`` (gates ``z,
  h~``), with ``1 - z_t = \sigma(-k_z)`` computed as such (no cancellation near 1)."""
  k_z, k_h = jnp.split(gx, 2, axis=-1)
  candidate = k_h if activation is None else activation(k_h)
  return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * candidate


def min_lstm_coefficients(gx: jax.Array, activation: Activation | None = None):
  r"""``(a_t, b_t) = (f'_t, i'_t \odot \tilde h_t)`` from ``gx = x_t W + b`` (gates ``f, i,
  h~``). With ``d = \log i_t - \log f_t = softplus(-k_f) - softplus(-k_i)``,
  ``f' = f / (f + i) = \sigma(-d)`` and ``i' = \sigma(d)`` (the paper's log-space form):
  finite even where both gates underflow to 0."""
  k_f, k_i, k_h = jnp.split(gx, 3, axis=-1)
  d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
  candidate = k_h if activation is None else activation(k_h)
  return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * candidate


def min_gru(hidden_size: int, *, activation: Activation | None = None, use_bias: bool = True,
            kernel_init: Initializer | None = None, bias_init: Initializer | None = None,
            scan: str = "auto", dtype=None, param_dtype=jnp.float32) -> Cell:
  r"""minGRU (Feng et al. 2024, Sec. 3.1)::

      z_t = \sigma(x_t W_z + b_z)
      \tilde h_t = x_t W_h + b_h                    (activation(.) of it when given)
      h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

  No gate reads ``h_{t-1}``, so ``unroll`` evaluates a whole sequence in parallel over time
  (the cell's ``Kernel``: all gates at once, then ``linear_recurrence`` with ``scan``);
  ``step`` is one step of the same equations, for decoding. ``lengths`` and ``reverse``
  have ``unroll``'s meaning on both paths. The output is ``y_t = h_t``.

  Args:
    hidden_size: ``H``.
    activation: applied to the candidate ``\tilde h_t``; ``None`` (default) is the paper's
      main-text model; ``positive_g`` is the model of its log-space code (Appendix). See the
      module docstring: jaxseq's scan is stable in linear space either way.
    use_bias: include ``b``.
    kernel_init, bias_init: initializers; default PyTorch ``nn.Linear``'s
      ``U(-1/sqrt(D), 1/sqrt(D))`` (the paper's code uses ``nn.Linear``).
    scan: how the kernel runs the linear recurrence over time, ``"auto"``, ``"sequential"``
      or ``"associative"`` (see ``linear_recurrence``).
    dtype: compute dtype (``None``: JAX's promotion); param_dtype: parameter dtype.

  Params (gates ``z, h~``): ``w_ih (D, 2H)``, ``b (2H,)``; no recurrent weights.
  """
  return _min_cell("min_gru", 2, min_gru_coefficients, MinGRUSpec, hidden_size, activation,
                   use_bias, kernel_init, bias_init, scan, dtype, param_dtype)


def min_lstm(hidden_size: int, *, activation: Activation | None = None, use_bias: bool = True,
             kernel_init: Initializer | None = None, bias_init: Initializer | None = None,
             scan: str = "auto", dtype=None, param_dtype=jnp.float32) -> Cell:
  r"""minLSTM (Feng et al. 2024, Sec. 3.2), with the normalised gates of its final form::

      f_t = \sigma(x_t W_f + b_f),   i_t = \sigma(x_t W_i + b_i)
      f'_t = f_t / (f_t + i_t),      i'_t = i_t / (f_t + i_t)
      \tilde h_t = x_t W_h + b_h                    (activation(.) of it when given)
      h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

  The state is ``h`` alone (no cell state, no output gate); the output is ``y_t = h_t``.
  Evaluated in parallel over time as ``min_gru`` is; the arguments are ``min_gru``'s.

  Params (gates ``f, i, h~``): ``w_ih (D, 3H)``, ``b (3H,)``; no recurrent weights.
  """
  return _min_cell("min_lstm", 3, min_lstm_coefficients, MinLSTMSpec, hidden_size, activation,
                   use_bias, kernel_init, bias_init, scan, dtype, param_dtype)


def _min_cell(name: str, num_gates: int, coefficients, spec_type, hidden_size, activation,
              use_bias, kernel_init, bias_init, scan, dtype, param_dtype) -> Cell:
  hidden_size = common_options(hidden_size, use_bias, dtype, param_dtype)
  check_callable("activation", activation, optional=True)
  check_callable("kernel_init", kernel_init, optional=True)
  check_callable("bias_init", bias_init, optional=True)
  _checks.choice("scan", scan, SCANS)
  H = hidden_size

  def init(key: jax.Array, input_size: int) -> dict:
    _checks.init_key(key)
    input_size = dense_input_size(input_size)
    default = initializers.uniform(1.0 / math.sqrt(input_size))   # nn.Linear's default
    k_w, k_b = jax.random.split(key)
    params = {"w_ih": gate_blocks(kernel_init or default, k_w, input_size, H, num_gates,
                                  param_dtype)}
    if use_bias:
      params["b"] = (bias_init or default)(k_b, (num_gates * H,), param_dtype)
    return params

  def initialize_carry(params: dict, input_shape: tuple[int, ...]) -> jax.Array:
    batch_shape = step_shape(input_shape)[:-1]
    return jnp.zeros(batch_shape + (H,), dtype or params["w_ih"].dtype)

  def recur(params: dict, h: jax.Array, gx: jax.Array):
    del params
    (h,) = cast(dtype, h)
    a, b = coefficients(gx, activation)
    h = a * h + b
    return h, h

  def run(params, carry, gxs, lengths, reverse, unroll):
    del params
    (h0,) = cast(dtype, carry)
    a, b = coefficients(gxs, activation)           # every step at once
    if lengths is not None:                         # padded steps keep the state: a=1, b=0
      valid = jnp.arange(gxs.shape[0]).reshape((-1,) + (1,) * lengths.ndim) < lengths
      valid = valid[..., None]
      a, b = jnp.where(valid, a, 1), jnp.where(valid, b, 0)
    hs = linear_recurrence(a, b, h0, reverse, scan, unroll)
    carry = hs[0] if reverse else hs[-1]
    return carry, (hs if lengths is None else jnp.where(valid, hs, 0))

  spec = spec_type(hidden_size=H, output_size=H, use_bias=use_bias, activation=activation,
                   scan=scan)
  return split_cell(init, initialize_carry, dense_project(dtype), recur, spec,
                    dense_check(name, initialize_carry), Kernel(recur, run))
