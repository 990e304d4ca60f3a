"""What every model of the zoo shares: a checked input and its classifier head."""
from __future__ import annotations

import dataclasses

import jax

from jaxseq import _checks
from jaxseq.nn.layers import Layer, _batched, input_shape_of


def checked_input(model: Layer, name: str, *, rank: int, channels: int | None = None
                  ) -> Layer:
  """``model`` with its input checked first: ``rank`` axes per example (without the
  batch), the last one of size ``channels`` (when given), so a wrong input fails with the
  model's name rather than deep inside a layer.
  """
  if channels is not None:
    channels = _checks.positive_int("in_channels", channels)
  what = f"{rank} axes per example" + ("" if channels is None else
                                       f", the last of size {channels} (channels)")

  def check_shape(input_shape):
    input_shape = input_shape_of("input_shape", input_shape)
    if len(input_shape) != rank or (channels is not None and input_shape[-1] != channels):
      _checks.fail("input_shape", f"{what} for {name}", repr(input_shape))
    return input_shape

  def output_shape(input_shape):
    return model.output_shape(check_shape(input_shape))

  def init(key: jax.Array, input_shape):
    return model.init(key, check_shape(input_shape))

  def apply(params, state, x, *, train=False, key=None):
    x = _batched("x", x)
    if x.ndim != rank + 1 or (channels is not None and x.shape[-1] != channels):
      _checks.fail("x", f"(N, ...) with {what} for {name}", f"shape {tuple(x.shape)}")
    return model.apply(params, state, x, train=train, key=key)

  return Layer(init, apply, output_shape, dataclasses.replace(model.spec, name=name))


def name_arg(value) -> str:
  """A display name: a string."""
  if not isinstance(value, str):
    _checks.fail("name", "a str (the display name)", repr(value), TypeError)
  return value
