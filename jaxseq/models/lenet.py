"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), in its modern form."""
from __future__ import annotations

from typing import Callable, Sequence

import jax

from jaxseq import _checks
from jaxseq import nn
from jaxseq.models._common import checked_input


def lenet5(in_channels: int = 1, channels: Sequence[int] = (6, 16),
           hidden: Sequence[int] = (120, 84), num_classes: int = 10, *,
           activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
           pool: str = "max") -> nn.Layer:
  """LeNet-5 on ``(32, 32, in_channels)`` images::

      conv 5x5 -> pool 2 -> conv 5x5 -> pool 2 -> flatten -> FC -> FC -> FC (logits)

  With the defaults on 32x32x1 it has 61,706 parameters (the original's C5 is this FC
  120 on the 5x5x16 map; its F6 is FC 84). ``lenet5(in_channels=3, channels=(8, 16))`` is
  the lectures' exercise network: 28x28x8, 14x14x8, 10x10x16, 5x5x16, 120, 84, 10.

  Args:
    in_channels: channels of the input images.
    channels: filters of the two 5x5 convolutions.
    hidden: widths of the two hidden fully connected layers.
    num_classes: outputs (logits; apply a softmax in the loss).
    activation: after every conv and hidden FC layer (``jnp.tanh`` as in 1998).
    pool: ``"max"`` (modern) or ``"avg"`` (the original's subsampling, without its
      trainable coefficients).

  Returns:
    A ``jaxseq.nn.Layer``: ``params, state = model.init(key, (32, 32, in_channels))``,
    ``logits, state = model.apply(params, state, x)``; other image sizes work as long as
    the feature maps stay positive.
  """
  in_channels = _checks.positive_int("in_channels", in_channels)
  channels = _checks.positive_ints("channels", channels, 2,
                                   "filters of the two convolutions")
  hidden = _checks.positive_ints("hidden", hidden, 2, "widths of the hidden FC layers")
  num_classes = _checks.positive_int("num_classes", num_classes)
  activation = _checks.function("activation", activation,
                                "a callable (an elementwise activation such as jnp.tanh)")
  pool_layer = {"max": nn.MaxPool, "avg": nn.AvgPool}[_checks.choice("pool", pool,
                                                                     ("max", "avg"))]
  act = nn.Activation(activation, getattr(activation, "__name__", "activation"))
  model = nn.serial(
      nn.Conv(channels[0], (5, 5)), act, pool_layer(2),
      nn.Conv(channels[1], (5, 5)), act, pool_layer(2),
      nn.Flatten,
      nn.Dense(hidden[0]), act,
      nn.Dense(hidden[1]), act,
      nn.Dense(num_classes))
  return checked_input(model, "lenet5", rank=3, channels=in_channels)
