"""Gated recurrent unit, reset-after (cuDNN/PyTorch) and reset-before (Cho et al. 2014)."""
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


def gru_update(gx: jax.Array, h: jax.Array, w_hh: jax.Array, b_hn: jax.Array | None,
               recurrent: Callable[[jax.Array, jax.Array], jax.Array], *, reset_after: bool,
               gate_fn: Activation, activation: Activation) -> jax.Array:
  """The GRU equations (see ``gru``) from the input half ``gx = x_t W + b`` (gates ``r, z,
  n`` on the last axis) and ``recurrent(h, w)``, the recurrent linear map: a matmul for
  ``gru``, a convolution for ``conv_gru``. Returns ``h_t``."""
  size = h.shape[-1]
  x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
  if reset_after:
    h_r, h_z, h_n = jnp.split(recurrent(h, w_hh), 3, axis=-1)
    h_n = add_bias(h_n, b_hn)
    r = gate_fn(x_r + h_r)
    z = gate_fn(x_z + h_z)
    n = activation(x_n + r * h_n)
  else:
    h_r, h_z = jnp.split(recurrent(h, w_hh[..., :2 * size]), 2, axis=-1)
    r = gate_fn(x_r + h_r)
    z = gate_fn(x_z + h_z)
    n = activation(x_n + recurrent(r * h, w_hh[..., 2 * size:]))
  return (1.0 - z) * n + z * h


def gru(hidden_size: int, *, reset_after: bool = True, gate_fn: Activation = jax.nn.sigmoid,
        activation: Activation = jnp.tanh, use_bias: bool = True,
        kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
        bias_init: Initializer | None = None, dtype=None, param_dtype=jnp.float32) -> Cell:
  r"""GRU cell (Cho et al. 2014)::

      r_t = \sigma(x_t W_r + h_{t-1} U_r + b_r)
      z_t = \sigma(x_t W_z + h_{t-1} U_z + b_z)
      n_t = \tanh(x_t W_n + b_n + r_t \odot (h_{t-1} U_n + b_{hn}))   reset_after=True
      n_t = \tanh(x_t W_n + (r_t \odot h_{t-1}) U_n + b_n)            reset_after=False
      h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

  ``reset_after=True`` is the cuDNN/PyTorch ``nn.GRU`` form (the reset gate multiplies the
  recurrent matmul's result, so that matmul can run for all gates at once);
  ``reset_after=False`` is the original form of Cho et al. 2014 (the reset gate multiplies
  ``h_{t-1}`` before the matmul). The output is ``y_t = h_t``.

  Params (gates in PyTorch's order ``r, z, n``): ``w_ih (D, 3H)``, ``w_hh (H, 3H)``,
  ``b (3H,)``; reset-after adds ``b_hn (H,)``. PyTorch's ``b_ih + b_hh`` equals ``b`` for the
  ``r, z`` blocks, its ``b_in`` is our ``b_n`` and its ``b_hn`` stays apart.
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
    return dense_params(key, input_size, H, 3, kernel_init=kernel_init,
                        recurrent_init=recurrent_init, bias_init=bias_init,
                        use_bias=use_bias, param_dtype=param_dtype, hidden_bias=reset_after)

  def equations(params: dict, h: jax.Array, gx: jax.Array, recurrent):
    (h,), w_hh, b_hn = cast(dtype, h), params["w_hh"], params.get("b_hn")
    h = gru_update(gx, h, w_hh, b_hn, recurrent, reset_after=reset_after, gate_fn=gate_fn,
                   activation=activation)
    return h, h

  spec = specs.GRUSpec(hidden_size=H, output_size=H, reset_after=reset_after,
                       gate_fn=gate_fn, activation=activation, use_bias=use_bias)
  initialize_carry = zeros_carry(H, dtype)
  # The recurrent products added straight to x W + b (r, z; n too when reset-before).
  sums = [(0, 0, 2 * H, 0)] if reset_after else [(0, 0, 2 * H, 0), (1, 0, H, 2 * H)]
  return fused_cell(init, initialize_carry, dense_project(dtype), equations, spec,
                    dense_check("gru", initialize_carry), input_sums=sums)
