"""Flax linen ``ConvLSTMCell`` to ``jaxseq.cells.conv.conv_lstm``.

Flax's cell (``flax/linen/recurrent.py``) computes, with two ``nn.Conv`` named ``ih`` and
``hh`` (kernels ``(*kernel_size, in, 4F)``, a bias on each) and gates split ``i, g, f, o``::

    i, g, f, o = split(ih(x_t) + hh(h_{t-1}))
    c_t = sigmoid(f + 1) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

That is ``conv_lstm(F, kernel_size, peephole=False, forget_offset=1.0)`` with the gate
blocks permuted to jaxseq's ``i, f, g, o``, ``w_ih = ih.kernel``, ``w_hh = hh.kernel`` and
``b = ih.bias + hh.bias``: exact in values, and in gradients up to that sum.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from jaxseq import _checks
from jaxseq.cells.base import Cell
from jaxseq.cells.conv import conv_lstm

_FLAX_GATES = "igfo"    # the order of Flax's jnp.split
_JAXSEQ_GATES = "ifgo"


def _permute_gates(a: jnp.ndarray, features: int) -> jnp.ndarray:
  """Reorders the last axis' gate blocks from Flax's ``i, g, f, o`` to ``i, f, g, o``."""
  blocks = {g: a[..., k * features:(k + 1) * features] for k, g in enumerate(_FLAX_GATES)}
  return jnp.concatenate([blocks[g] for g in _JAXSEQ_GATES], axis=-1)


def _padding(module: Any) -> str:
  padding = module.padding
  if isinstance(padding, str) and padding.upper() in ("SAME", "CIRCULAR"):
    return padding.upper()
  _checks.fail("module", "a ConvLSTMCell with padding 'SAME' or 'CIRCULAR' (the state must "
               "keep its spatial size)", f"padding={padding!r}")


def _conv_entry(params: Mapping, name: str, use_bias: bool, module: Any) -> dict:
  entry = params.get(name)
  leaves = ("kernel", "bias") if use_bias else ("kernel",)
  if not isinstance(entry, Mapping) or any(leaf not in entry for leaf in leaves):
    _checks.fail("variables", f"ConvLSTMCell params {{'ih': {{...}}, 'hh': {{...}}}} with "
                 f"{' and '.join(repr(l) for l in leaves)} in '{name}'",
                 f"entries {sorted(params)}" + (f", '{name}': {sorted(entry)}"
                                                if isinstance(entry, Mapping) else ""))
  return {leaf: jnp.asarray(entry[leaf]) for leaf in leaves}


def from_flax_conv_lstm(module: Any, params: Mapping[str, Any]) -> tuple[Cell, dict]:
  """Converts a ``flax.linen.ConvLSTMCell`` and its params into a jaxseq ``conv_lstm``.

  Args:
    module: the ``ConvLSTMCell`` (``features``, ``kernel_size``, ``padding`` ``'SAME'`` or
      ``'CIRCULAR'``, ``strides`` ``None`` or all 1, ``use_bias``, ``dtype``,
      ``param_dtype`` carry over).
    params: the module's params ``{"ih": {...}, "hh": {...}}``, or ``{"params": {...}}``.

  Returns:
    ``(cell, params)`` with ``cell.step(params, LSTMState(h, c), x)`` equal to
    ``module.apply({"params": ...}, (c, h), x)`` (Flax's carry is ``(c, h)``), on frames of
    any size (Flax's module does not know one either).

  Raises:
    TypeError: ``module`` is not a ``ConvLSTMCell``.
    ValueError: strides other than 1, a padding that changes the spatial size, or params
      not shaped like the module's.
  """
  from flax import linen as nn  # pylint: disable=import-outside-toplevel

  if not isinstance(module, nn.ConvLSTMCell):
    _checks.fail("module", "a flax.linen.ConvLSTMCell", type(module).__name__, TypeError)
  if isinstance(params, Mapping) and "params" in params:
    params = params["params"]
  if not isinstance(params, Mapping):
    _checks.fail("params", "a dict {'ih': ..., 'hh': ...} or {'params': {...}}",
                 type(params).__name__, TypeError)
  strides = module.strides
  if strides is not None and any(s != 1 for s in (
      [strides] * len(module.kernel_size) if isinstance(strides, int) else strides)):
    _checks.fail("module", "a ConvLSTMCell with strides None or 1 (the state must keep its "
                 "spatial size)", f"strides={strides!r}")
  padding = _padding(module)
  F = module.features
  kernel_size = tuple(module.kernel_size)
  ih = _conv_entry(params, "ih", module.use_bias, module)
  hh = _conv_entry(params, "hh", module.use_bias, module)
  expected = {"ih": None, "hh": kernel_size + (F, 4 * F)}
  for name, entry in (("ih", ih), ("hh", hh)):
    shape = tuple(entry["kernel"].shape)
    want = expected[name] or kernel_size + (shape[-2] if len(shape) >= 2 else -1, 4 * F)
    if shape != want:
      _checks.fail("params", f"'{name}' kernel of shape {want} (kernel_size {kernel_size}, "
                   f"features {F})", f"shape {shape}")
    if module.use_bias and tuple(entry["bias"].shape) != (4 * F,):
      _checks.fail("params", f"'{name}' bias of shape {(4 * F,)}",
                   f"shape {tuple(entry['bias'].shape)}")

  cell = conv_lstm(F, kernel_size, peephole=False,
                   padding=padding, use_bias=module.use_bias, forget_offset=1.0,
                   dtype=module.dtype, param_dtype=module.param_dtype)
  out = {"w_ih": _permute_gates(ih["kernel"], F), "w_hh": _permute_gates(hh["kernel"], F)}
  if module.use_bias:
    out["b"] = _permute_gates(ih["bias"] + hh["bias"], F)
  return cell, out
