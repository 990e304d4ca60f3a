"""Long short-term memory: standard, peephole, coupled input-forget, projection."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq import initializers
from jaxseq import specs
from jaxseq.cells.base import (Cell, Initializer, LSTMState, cast, check_callable,
                               check_number, common_options, default_inits, dense_check,
                               dense_params, dense_project, fused_cell,
                               step_shape)

Activation = Callable[[jax.Array], jax.Array]
PEEPHOLES = ("p_i", "p_f", "p_o")


def lstm_update(gx: jax.Array, carry: LSTMState, w_hh: jax.Array,
                recurrent: Callable[[jax.Array, jax.Array], jax.Array], *, gates: str,
                peepholes: dict | None, gate_fn: Activation, cell_fn: Activation,
                hidden_fn: Activation, forget_offset: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """The LSTM equations (see ``lstm``) from the input half ``gx = x_t W + b`` (gate blocks
  ``gates``, ``"ifgo"`` or coupled ``"fgo"``, on the last axis) and ``recurrent(h, w)``, the
  recurrent linear map: a matmul for ``lstm``, a convolution for ``conv_lstm``.

  ``peepholes`` holds ``p_i`` (unless coupled), ``p_f``, ``p_o`` or is ``None``;
  ``forget_offset`` is a constant added inside the forget gate. The cell state keeps its
  dtype (float32 under bfloat16 compute). Returns ``(o_t * hidden_fn(c_t), c_t)``.
  """
  h, c = carry
  z = gx + recurrent(h, w_hh)
  pre = dict(zip(gates, jnp.split(z, len(gates), axis=-1)))
  if peepholes is not None:
    if "i" in pre:
      pre["i"] = pre["i"] + peepholes["p_i"] * c
    pre["f"] = pre["f"] + peepholes["p_f"] * c
  f = gate_fn(pre["f"] + forget_offset if forget_offset else pre["f"])
  i = gate_fn(pre["i"]) if "i" in pre else 1.0 - f
  g = cell_fn(pre["g"])
  c = f.astype(c.dtype) * c + (i * g).astype(c.dtype)
  o = gate_fn(pre["o"] + peepholes["p_o"] * c if peepholes is not None else pre["o"])
  return o * hidden_fn(c), c


def lstm(hidden_size: int, *, peephole: bool = False, coupled: bool = False,
         proj_size: int | None = None, gate_fn: Activation = jax.nn.sigmoid,
         cell_fn: Activation = jnp.tanh, hidden_fn: Activation = jnp.tanh,
         use_bias: bool = True, kernel_init: Initializer | None = None,
         recurrent_init: Initializer | None = None, bias_init: Initializer | None = None,
         peephole_init: Initializer | None = None, forget_bias: float | None = None,
         chrono_t_max: float | None = None, dtype=None, param_dtype=jnp.float32) -> Cell:
  r"""LSTM cell with a forget gate (Hochreiter & Schmidhuber 1997; Gers et al. 2000)::

      i_t = \sigma(x_t W_i + h_{t-1} U_i + b_i  [+ p_i \odot c_{t-1}])
      f_t = \sigma(x_t W_f + h_{t-1} U_f + b_f  [+ p_f \odot c_{t-1}])
      g_t = \phi_c(x_t W_g + h_{t-1} U_g + b_g)
      c_t = f_t \odot c_{t-1} + i_t \odot g_t
      o_t = \sigma(x_t W_o + h_{t-1} U_o + b_o  [+ p_o \odot c_t])
      h_t = o_t \odot \phi_h(c_t)                [h_t \leftarrow h_t W_{hr}]

  ``\sigma = gate_fn`` (any squashing function, sigmoid by default), ``\phi_c = cell_fn``,
  ``\phi_h = hidden_fn`` (tanh by default).

  Variants:
    * ``peephole=True``: the bracketed diagonal peepholes of Gers & Schmidhuber (2000):
      ``i`` and ``f`` look at ``c_{t-1}``, ``o`` at ``c_t``.
    * ``coupled=True``: coupled input-forget gate, ``i_t = 1 - f_t`` (Greff et al. 2017,
      "CIFG"); there is no ``i`` block in the params.
    * ``proj_size=P``: LSTM with a recurrent projection layer (LSTMP, Sak et al. 2014;
      PyTorch's ``proj_size``): ``h_t`` is projected to ``P`` features and fed back.

  Params (gates concatenated along the output axis in PyTorch's order ``i, f, g, o``;
  ``f, g, o`` when coupled): ``w_ih (D, 4H)``, ``w_hh (H', 4H)``, ``b (4H,)``; peephole adds
  ``p_i, p_f, p_o (H,)`` (no ``p_i`` when coupled); ``proj_size`` adds ``w_hr (H, P)`` and
  makes ``H' = P``. The carry is ``LSTMState(h, c)`` with ``h (*batch, H')``,
  ``c (*batch, H)``; the output is ``y_t = h_t``.

  Initialisation: PyTorch's U(-1/sqrt(H), 1/sqrt(H)) unless given; kernel initializers
  are applied per gate block. ``forget_bias`` sets ``b_f`` to a constant (1.0: Gers et al.
  2000, Jozefowicz et al. 2015). ``chrono_t_max`` draws ``b_f ~ log U[1, T_max - 1]`` and sets
  ``b_i = -b_f`` (Tallec & Ollivier 2018).

  With ``dtype=jnp.bfloat16`` the gates are computed in bfloat16 while the cell state
  ``c`` stays float32.
  """
  hidden_size = common_options(hidden_size, use_bias, dtype, param_dtype)
  proj_size = _checks.optional_positive_int("proj_size", proj_size)
  for argument, value in (("peephole", peephole), ("coupled", coupled)):
    if not isinstance(value, bool):
      _checks.fail(argument, "a bool", repr(value), TypeError)
  for argument, fn in (("gate_fn", gate_fn), ("cell_fn", cell_fn), ("hidden_fn", hidden_fn)):
    check_callable(argument, fn)
  check_callable("peephole_init", peephole_init, optional=True)
  forget_bias = check_number("forget_bias", forget_bias)
  if chrono_t_max is not None:
    chrono_t_max = check_number("chrono_t_max", chrono_t_max)
  if forget_bias is not None and chrono_t_max is not None:
    raise ValueError("forget_bias, chrono_t_max: expected at most one of them, got both")
  if chrono_t_max is not None and not chrono_t_max > 2:
    _checks.fail("chrono_t_max", "a number > 2", repr(chrono_t_max))
  if not use_bias and (forget_bias is not None or chrono_t_max is not None):
    raise ValueError("forget_bias/chrono_t_max: expected use_bias=True, got use_bias=False")
  kernel_init, recurrent_init, bias_init = default_inits(hidden_size, kernel_init,
                                                         recurrent_init, bias_init)
  peephole_init = peephole_init or initializers.torch_default(hidden_size)
  gates = "fgo" if coupled else "ifgo"
  num_gates = len(gates)
  H = hidden_size
  out_size = proj_size or hidden_size
  state_dtype = None if dtype is None else jnp.promote_types(dtype, jnp.float32)

  def init(key: jax.Array, input_size: int) -> dict:
    k_dense, k_b, k_p, k_r = jax.random.split(key, 4)
    params = dense_params(k_dense, input_size, H, num_gates, kernel_init=kernel_init,
                          recurrent_init=recurrent_init, bias_init=bias_init,
                          use_bias=use_bias, param_dtype=param_dtype,
                          recurrent_size=out_size)
    if use_bias:
      b = params["b"]
      f = slice(gates.index("f") * H, (gates.index("f") + 1) * H)
      if forget_bias is not None:
        b = b.at[f].set(forget_bias)
      if chrono_t_max is not None:
        b_f = initializers.chrono(chrono_t_max)(k_b, (H,), param_dtype)
        b = b.at[f].set(b_f)
        if not coupled:
          b = b.at[0:H].set(-b_f)
      params["b"] = b
    if peephole:
      for name, k in zip(("p_i", "p_f", "p_o"), jax.random.split(k_p, 3)):
        if name == "p_i" and coupled:
          continue
        params[name] = peephole_init(k, (H,), param_dtype)
    if proj_size is not None:
      params["w_hr"] = kernel_init(k_r, (H, proj_size), param_dtype)
    return params

  def initialize_carry(params: dict, input_shape: tuple[int, ...]) -> LSTMState:
    batch_shape = step_shape(input_shape)[:-1]
    h_dtype = dtype or params["w_hh"].dtype
    return LSTMState(h=jnp.zeros(batch_shape + (out_size,), h_dtype),
                     c=jnp.zeros(batch_shape + (H,), state_dtype or h_dtype))

  def equations(params: dict, carry: LSTMState, gx: jax.Array, recurrent):
    h, c = carry
    (h,), w_hh = cast(dtype, h), params["w_hh"]
    peepholes = None
    if peephole:
      peepholes = dict(zip(PEEPHOLES, cast(dtype, *(params.get(n) for n in PEEPHOLES))))
    h, c = lstm_update(gx, LSTMState(h, c), w_hh, recurrent, gates=gates,
                       peepholes=peepholes, gate_fn=gate_fn, cell_fn=cell_fn,
                       hidden_fn=hidden_fn)
    (h,), w_hr = cast(dtype, h), params.get("w_hr")
    if w_hr is not None:
      h = recurrent(h, w_hr)
    return LSTMState(h, c), h

  spec = specs.LSTMSpec(hidden_size=H, output_size=out_size, peephole=peephole,
                        coupled=coupled, proj_size=proj_size, gate_fn=gate_fn,
                        cell_fn=cell_fn, hidden_fn=hidden_fn, use_bias=use_bias)
  # z = x W + b + h W_hh: the recurrent product of all gates is added straight to x W + b.
  return fused_cell(init, initialize_carry, dense_project(dtype), equations, spec,
                    dense_check("lstm", initialize_carry),
                    input_sums=[(0, 0, num_gates * H, 0)])
