"""Elman recurrent network (Elman 1990)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxseq import specs
from jaxseq.cells.base import (Cell, Initializer, cast, check_callable, common_options,
                               default_inits, dense_check, dense_params, dense_project,
                               fused_cell, zeros_carry)


def simple_rnn(hidden_size: int, activation: Callable[[jax.Array], jax.Array] = jnp.tanh, *,
               use_bias: bool = True, kernel_init: Initializer | None = None,
               recurrent_init: Initializer | None = None,
               bias_init: Initializer | None = None, dtype=None,
               param_dtype=jnp.float32) -> Cell:
  r"""Elman RNN cell (Elman 1990)::

      h_t = \phi(x_t W_{ih} + h_{t-1} W_{hh} + b)

  ``activation`` is any ``\phi``: ``jnp.tanh`` (default), ``jax.nn.relu`` (with
  ``recurrent_init=initializers.identity()`` and zero bias this is the IRNN of Le et al.
  2015) or ``lambda x: x`` (a linear RNN). The output is ``y_t = h_t``.

  Params: ``w_ih (D, H)``, ``w_hh (H, H)``, ``b (H,)`` (no ``b`` when ``use_bias=False``).
  Defaults follow PyTorch's ``nn.RNN``: every entry ~ U(-1/sqrt(H), 1/sqrt(H)).

  Example::

      cell = jaxseq.simple_rnn(64)
      params = cell.init(jax.random.PRNGKey(0), input_size=3)
      ys, h_T = jaxseq.unroll(cell, params, xs)          # xs: (B, T, 3)
  """
  hidden_size = common_options(hidden_size, use_bias, dtype, param_dtype)
  check_callable("activation", activation)
  kernel_init, recurrent_init, bias_init = default_inits(hidden_size, kernel_init,
                                                         recurrent_init, bias_init)

  def init(key: jax.Array, input_size: int) -> dict:
    return dense_params(key, input_size, hidden_size, 1, kernel_init=kernel_init,
                        recurrent_init=recurrent_init, bias_init=bias_init,
                        use_bias=use_bias, param_dtype=param_dtype)

  def equations(params: dict, h: jax.Array, gx: jax.Array, recurrent):
    (h,), w_hh = cast(dtype, h), params["w_hh"]
    h = activation(gx + recurrent(h, w_hh))
    return h, h

  spec = specs.SimpleRNNSpec(hidden_size=hidden_size, output_size=hidden_size,
                             activation=activation, use_bias=use_bias)
  initialize_carry = zeros_carry(hidden_size, dtype)
  return fused_cell(init, initialize_carry, dense_project(dtype), equations, spec,
                    dense_check("simple_rnn", initialize_carry),
                    input_sums=[(0, 0, hidden_size, 0)])
