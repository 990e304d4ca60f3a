"""Minimal gated unit (Zhou, Wu, Zhang & Zhou 2016)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq import specs
from jaxseq.cells.base import (Cell, Initializer, add_bias, cast, check_callable, common_options,
                               default_inits, dense_check, dense_params, dense_project,
                               fused_cell, zeros_carry)

Activation = Callable[[jax.Array], jax.Array]


def mgu(hidden_size: int, *, reset_after: bool = False, gate_fn: Activation = jax.nn.sigmoid,
        activation: Activation = jnp.tanh, use_bias: bool = True,
        kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
        bias_init: Initializer | None = None, dtype=None, param_dtype=jnp.float32) -> Cell:
  r"""Minimal gated unit: a GRU whose reset and update gates are one gate ``f``.

  ``reset_after=False`` (default) is the paper (Zhou et al. 2016, eq. 9)::

      f_t = \sigma(x_t W_f + h_{t-1} U_f + b_f)
      n_t = \tanh(x_t W_n + (f_t \odot h_{t-1}) U_n + b_n)
      h_t = (1 - f_t) \odot h_{t-1} + f_t \odot n_t

  ``reset_after=True`` is Flax's ``MGUCell``: the gate multiplies the recurrent matmul's
  result and, as in GRUs, ``f`` keeps the old state::

      n_t = \tanh(x_t W_n + b_n + f_t \odot (h_{t-1} U_n + b_{hn}))
      h_t = (1 - f_t) \odot n_t + f_t \odot h_{t-1}

  Params (gates ``f, n``): ``w_ih (D, 2H)``, ``w_hh (H, 2H)``, ``b (2H,)``; reset-after adds
  ``b_hn (H,)``. The output is ``y_t = h_t``.
  """
  hidden_size = common_options(hidden_size, use_bias, dtype, param_dtype)
  if not isinstance(reset_after, bool):
    _checks.fail("reset_after", "a bool", repr(reset_after), TypeError)
  check_callable("gate_fn", gate_fn)
  check_callable("activation", activation)
  kernel_init, recurrent_init, bias_init = default_inits(hidden_size, kernel_init,
                                                         recurrent_init, bias_init)
  H = hidden_size

  def init(key: jax.Array, input_size: int) -> dict:
    return dense_params(key, input_size, H, 2, kernel_init=kernel_init,
                        recurrent_init=recurrent_init, bias_init=bias_init,
                        use_bias=use_bias, param_dtype=param_dtype, hidden_bias=reset_after)

  def equations(params: dict, h: jax.Array, gx: jax.Array, recurrent):
    (h,), w_hh, b_hn = cast(dtype, h), params["w_hh"], params.get("b_hn")
    x_f, x_n = jnp.split(gx, 2, axis=-1)
    if reset_after:
      h_f, h_n = jnp.split(recurrent(h, w_hh), 2, axis=-1)
      h_n = add_bias(h_n, b_hn)
      f = gate_fn(x_f + h_f)
      n = activation(x_n + f * h_n)
      h = (1.0 - f) * n + f * h
    else:
      f = gate_fn(x_f + recurrent(h, w_hh[:, :H]))
      n = activation(x_n + recurrent(f * h, w_hh[:, H:]))
      h = (1.0 - f) * h + f * n
    return h, h

  spec = specs.MGUSpec(hidden_size=H, output_size=H, reset_after=reset_after,
                       gate_fn=gate_fn, activation=activation, use_bias=use_bias)
  initialize_carry = zeros_carry(H, dtype)
  # The recurrent products added straight to x W + b (f; n too when reset-before).
  sums = [(0, 0, H, 0)] if reset_after else [(0, 0, H, 0), (1, 0, H, H)]
  return fused_cell(init, initialize_carry, dense_project(dtype), equations, spec,
                    dense_check("mgu", initialize_carry), input_sums=sums)
