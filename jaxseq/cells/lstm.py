"""Long short-term memory: standard, peephole, coupled input-forget, projection."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq import initializers
from jaxseq.cells.base import (Cell, Initializer, LSTMState, cast, check_input,
                               common_options, default_inits, dense_params)

Activation = Callable[[jax.Array], jax.Array]


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
    if not callable(fn):
      _checks.fail(argument, "a callable", repr(fn), TypeError)
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

  def initial_carry(params: dict, batch_shape: tuple[int, ...] = ()) -> LSTMState:
    batch_shape = tuple(batch_shape)
    h_dtype = dtype or params["w_hh"].dtype
    return LSTMState(h=jnp.zeros(batch_shape + (out_size,), h_dtype),
                     c=jnp.zeros(batch_shape + (H,), state_dtype or h_dtype))

  def step(params: dict, carry: LSTMState, x_t: jax.Array):
    check_input("lstm", params["w_ih"], x_t)
    h, c = carry
    x_t, h, w_ih, w_hh, b = cast(dtype, x_t, h, params["w_ih"], params["w_hh"],
                                 params.get("b"))
    z = x_t @ w_ih + h @ w_hh
    if b is not None:
      z = z + b
    pre = dict(zip(gates, jnp.split(z, num_gates, axis=-1)))
    if peephole:
      p = {name: params[name] for name in ("p_i", "p_f", "p_o") if name in params}
      if not coupled:
        pre["i"] = pre["i"] + p["p_i"] * c
      pre["f"] = pre["f"] + p["p_f"] * c
    f = gate_fn(pre["f"])
    i = 1.0 - f if coupled else gate_fn(pre["i"])
    g = cell_fn(pre["g"])
    c = f.astype(c.dtype) * c + (i * g).astype(c.dtype)
    o_pre = pre["o"] + p["p_o"] * c if peephole else pre["o"]
    o = gate_fn(o_pre)
    (h, w_hr) = cast(dtype, o * hidden_fn(c), params.get("w_hr"))
    if w_hr is not None:
      h = h @ w_hr
    return LSTMState(h, c), h

  spec = dict(name="lstm", hidden_size=H, output_size=out_size, peephole=peephole,
              coupled=coupled, proj_size=proj_size, gate_fn=gate_fn, cell_fn=cell_fn,
              hidden_fn=hidden_fn, use_bias=use_bias, feature_ndim=1)
  return Cell(init, initial_carry, step, spec)
