"""Flax linen weight interop: ``SimpleCell``, ``LSTMCell``, ``OptimizedLSTMCell``,
``GRUCell``, ``MGUCell`` (and ``ConvLSTMCell``) to jaxseq cells and params.

Flax is imported only when ``from_flax`` is called.

Example::

    rnn = flax.linen.RNN(flax.linen.LSTMCell(64))
    variables = rnn.init(key, xs)                           # {"params": {"cell": {...}}}
    cell, params = jaxseq.interop.from_flax(rnn.cell, variables["params"]["cell"])
    ys, carry = jaxseq.unroll(cell, params, xs)             # == rnn.apply(variables, xs)
    c, h = jaxseq.interop.carry_to_flax(cell, carry)        # Flax's (c, h) order

Flax keeps one ``Dense`` per gate and input/hidden side, named ``i<gate>``/``h<gate>``, each
``{"kernel": (in, H), "bias": (H,)}``; jaxseq concatenates the gate blocks along the
output axis (``w_ih (D, G*H)``, ``w_hh (H, G*H)``, ``b (G*H,)``). Flax puts a bias on only
one side of each sum, so the mapping is a concatenation, exact in both values and
gradients.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from jaxseq import _checks
from jaxseq import cells
from jaxseq.cells.base import Cell, LSTMState

# Cells whose jaxseq carry is ``LSTMState(h, c)`` and whose Flax carry is ``(c, h)``.
_LSTM_LIKE = ("lstm", "conv_lstm")


def from_flax(module: Any, variables: Mapping[str, Any]) -> tuple[Cell, dict]:
  r"""Converts a Flax linen recurrent cell and its variables into a jaxseq cell and params.

  ===============================  ==============================================================
  Flax module                      jaxseq cell
  ===============================  ==============================================================
  ``SimpleCell``                   ``simple_rnn(H, activation=activation_fn)``;
                                   ``residual=True`` (``h' = \phi(W_i x + b_i + W_h h + h)``) is
                                   exact as ``w_hh = W_h + I``
  ``LSTMCell``,                    ``lstm(H, gate_fn=gate_fn, cell_fn=activation_fn,
  ``OptimizedLSTMCell``            hidden_fn=activation_fn)``; gates ``i, f, g, o``, ``b`` is the
                                   hidden-side biases ``hi, hf, hg, ho``
  ``GRUCell``                      ``gru(H, reset_after=True, gate_fn, activation)``; ``b`` is
                                   ``ir, iz, in`` biases, ``b_hn`` the ``hn`` bias
  ``MGUCell``                      ``mgu(H, reset_after=True, gate_fn, activation)``; ``b`` is
                                   ``if, in`` biases, ``b_hn`` the ``hn`` bias
  ``ConvLSTMCell``                 ``conv_lstm(F, kernel_size, peephole=False)``, any frame size       
  ===============================  ==============================================================

  The module's ``dtype`` and ``param_dtype`` carry over. jaxseq cells start from a zero carry;
  a Flax cell with a non-zero ``carry_init`` needs its carry passed explicitly
  (``unroll(cell, params, xs, carry=carry_from_flax(cell, flax_carry))``). For a cell inside
  ``nn.RNN``, pass ``rnn.cell`` and ``variables["params"]["cell"]``; ``nn.RNN``'s
  ``time_major``/``seq_lengths`` are ``unroll``'s ``time_major``/``lengths``. Its
  ``reverse=True`` is ``unroll``'s ``reverse=True`` only with ``keep_order=True``: jaxseq
  keeps the outputs aligned with the inputs (``ys[t]`` is computed at ``xs[t]``), while
  with Flax's default ``keep_order=False`` the outputs come back in processing order,
  each sequence's valid steps flipped in time: Flax's ``ys[b, t]`` is jaxseq's
  ``ys[b, lengths[b] - 1 - t]`` for ``t < lengths[b]`` (``jnp.flip(ys, axis=-2)`` without
  ``seq_lengths``; ``flax.linen.recurrent.flip_sequences(ys, lengths, num_batch_dims=1,
  time_major=False)`` with them). The final carries agree either way. At padded steps
  jaxseq's outputs are zero, Flax's are whatever its cell computed there.

  Args:
    module: a ``flax.linen`` cell instance (its attributes configure the jaxseq cell).
    variables: ``{"params": {...}}`` as returned by ``module.init``, or the params dict
      itself; a pytree of arrays (a ``FrozenDict`` too).

  Returns:
    ``(cell, params)``: ``cell.step(params, carry, x)`` computes what ``module.apply`` does,
    with the carry in jaxseq's convention (see ``carry_from_flax``).

  Raises:
    TypeError: ``module`` is not a supported Flax cell.
    ValueError: unsupported options (``MGUCell(reset_gate=False)``), or ``variables`` not
      shaped like this module's params.
    """
  from flax import linen as nn  # pylint: disable=import-outside-toplevel

  if isinstance(variables, Mapping) and "params" in variables:
    params = variables["params"]
  else:
    params = variables
  if not isinstance(params, Mapping):
    _checks.fail("variables", "a dict {'params': {...}} or a params dict",
                 type(variables).__name__, TypeError)

  if isinstance(module, nn.ConvLSTMCell):
    from jaxseq.interop._flax_conv import from_flax_conv_lstm  # pylint: disable=import-outside-toplevel
    return from_flax_conv_lstm(module, params)

  if isinstance(module, nn.SimpleCell):
    H = _hidden_size(module, params, ("h",))
    w_hh = _kernel(params, "h", H, H, module)
    if module.residual:
      w_hh = w_hh + jnp.eye(H, dtype=w_hh.dtype)
    cell = cells.simple_rnn(H, activation=module.activation_fn, **_options(module))
    return cell, {"w_ih": _kernel(params, "i", None, H, module), "w_hh": w_hh,
                  "b": _bias(params, "i", H, module)}

  if isinstance(module, (nn.LSTMCell, nn.OptimizedLSTMCell)):
    gates = "ifgo"
    H = _hidden_size(module, params, [f"h{g}" for g in gates])
    cell = cells.lstm(H, gate_fn=module.gate_fn, cell_fn=module.activation_fn,
                      hidden_fn=module.activation_fn, **_options(module))
    return cell, {"w_ih": _concat_kernels(params, [f"i{g}" for g in gates], H, module),
                  "w_hh": _concat_kernels(params, [f"h{g}" for g in gates], H, module),
                  "b": _concat_biases(params, [f"h{g}" for g in gates], H, module)}

  if isinstance(module, nn.GRUCell):
    H = _hidden_size(module, params, ("hr", "hz", "hn"))
    cell = cells.gru(H, reset_after=True, gate_fn=module.gate_fn,
                     activation=module.activation_fn, **_options(module))
    return cell, {"w_ih": _concat_kernels(params, ["ir", "iz", "in"], H, module),
                  "w_hh": _concat_kernels(params, ["hr", "hz", "hn"], H, module),
                  "b": _concat_biases(params, ["ir", "iz", "in"], H, module),
                  "b_hn": _bias(params, "hn", H, module)}

  if isinstance(module, nn.MGUCell):
    if not module.reset_gate:
      _checks.fail("module", "an MGUCell with reset_gate=True (jaxseq's mgu always gates "
                   "the candidate)", "reset_gate=False")
    H = _hidden_size(module, params, ("hf", "hn"))
    cell = cells.mgu(H, reset_after=True, gate_fn=module.gate_fn,
                     activation=module.activation_fn, **_options(module))
    return cell, {"w_ih": _concat_kernels(params, ["if", "in"], H, module),
                  "w_hh": _concat_kernels(params, ["hf", "hn"], H, module),
                  "b": _concat_biases(params, ["if", "in"], H, module),
                  "b_hn": _bias(params, "hn", H, module)}

  _checks.fail("module", "a flax.linen SimpleCell, LSTMCell, OptimizedLSTMCell, GRUCell, "
               "MGUCell or ConvLSTMCell (for nn.RNN pass rnn.cell and "
               "variables['params']['cell'])", type(module).__name__, TypeError)


def carry_from_flax(cell: Cell, carry: Any) -> Any:
  """A Flax cell's carry in jaxseq's convention: LSTM ``(c, h)`` -> ``LSTMState(h, c)``.

  Args:
    cell: the jaxseq cell returned by ``from_flax``.
    carry: the Flax carry (``module.initialize_carry(...)`` or a returned carry).

  Returns:
    The carry for ``cell.step``/``unroll``; other cells' carries pass through unchanged.
  """
  if getattr(cell.spec, "name", None) in _LSTM_LIKE:
    if not isinstance(carry, (tuple, list)) or len(carry) != 2:
      _checks.fail("carry", "Flax's LSTM carry, a pair (c, h)", type(carry).__name__,
                   TypeError)
    c, h = carry
    return LSTMState(h=jnp.asarray(h), c=jnp.asarray(c))
  return jnp.asarray(carry)


def carry_to_flax(cell: Cell, carry: Any) -> Any:
  """A jaxseq carry in Flax's convention: ``LSTMState(h, c)`` -> ``(c, h)``.

  Args:
    cell: the jaxseq cell returned by ``from_flax``.
    carry: a carry of ``cell`` (for instance the one ``unroll`` returns).

  Returns:
    The carry as the matching Flax cell takes and returns it.
  """
  if getattr(cell.spec, "name", None) in _LSTM_LIKE:
    if not isinstance(carry, LSTMState):
      _checks.fail("carry", "an LSTMState(h, c)", type(carry).__name__, TypeError)
    return (carry.c, carry.h)
  return carry


def _options(module: Any) -> dict:
  return dict(dtype=module.dtype, param_dtype=module.param_dtype)


def _entry(params: Mapping, name: str, leaf: str, module: Any):
  entry = params.get(name)
  if not isinstance(entry, Mapping) or leaf not in entry:
    _checks.fail("variables", f"{type(module).__name__} params with a '{name}' entry holding "
                 f"'{leaf}'", f"entries {sorted(params)}"
                 + ("" if not isinstance(entry, Mapping) else f", '{name}': {sorted(entry)}"))
  return jnp.asarray(entry[leaf])


def _hidden_size(module: Any, params: Mapping, hidden_names) -> int:
  kernel = _entry(params, hidden_names[0], "kernel", module)
  if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
    _checks.fail("variables", f"'{hidden_names[0]}' kernel of shape (H, H)",
                 f"shape {tuple(kernel.shape)}")
  H = kernel.shape[1]
  if H != module.features:
    _checks.fail("variables", f"params of a cell with features={module.features}",
                 f"hidden size {H}")
  return H


def _kernel(params: Mapping, name: str, rows: int | None, H: int, module: Any):
  kernel = _entry(params, name, "kernel", module)
  if kernel.ndim != 2 or kernel.shape[1] != H or (rows is not None and kernel.shape[0] != rows):
    expected = f"({'D' if rows is None else rows}, {H})"
    _checks.fail("variables", f"'{name}' kernel of shape {expected}",
                 f"shape {tuple(kernel.shape)}")
  return kernel


def _concat_kernels(params: Mapping, names, H: int, module: Any):
  first = _kernel(params, names[0], None, H, module)
  kernels = [first] + [_kernel(params, n, first.shape[0], H, module) for n in names[1:]]
  return jnp.concatenate(kernels, axis=-1)


def _concat_biases(params: Mapping, names, H: int, module: Any):
  return jnp.concatenate([_bias(params, name, H, module) for name in names])


def _bias(params: Mapping, name: str, H: int, module: Any):
  bias = _entry(params, name, "bias", module)
  if bias.shape != (H,):
    _checks.fail("variables", f"'{name}' bias of shape ({H},)", f"shape {tuple(bias.shape)}")
  return bias
