"""GoogLeNet / Inception v1 (Szegedy et al. 2015), as torchvision's, without aux heads."""
from __future__ import annotations

from jaxseq import _checks
from jaxseq import nn
from jaxseq.models._common import checked_input, name_arg

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) per Inception module (Table 1).
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def _conv(features: int, size: int, strides: int = 1) -> nn.Layer:
  """Conv (no bias), batch norm (epsilon 1e-3), ReLU: torchvision's ``BasicConv2d``."""
  return nn.serial(nn.Conv(features, (size, size), strides=strides, padding=size // 2,
                           use_bias=False),
                   nn.BatchNorm(epsilon=1e-3), nn.Relu, name=f"Conv {features}, f={size}")


def inception(c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int,
              *, name: str = "Inception") -> nn.Layer:
  """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> "5x5";
  3x3 max pool (stride 1) -> 1x1. The "5x5" branch uses a 3x3 kernel, as torchvision's
  implementation (and its parameter count) does."""
  sizes = dict(c1=c1, c3_reduce=c3_reduce, c3=c3, c5_reduce=c5_reduce, c5=c5,
               pool_proj=pool_proj)
  for argument, value in sizes.items():
    _checks.positive_int(argument, value)
  name = name_arg(name)
  return nn.concat(
      _conv(c1, 1),
      nn.serial(_conv(c3_reduce, 1), _conv(c3, 3)),
      nn.serial(_conv(c5_reduce, 1), _conv(c5, 3)),
      nn.serial(nn.MaxPool(3, 1, padding=1), _conv(pool_proj, 1)),
      name=name)


def googlenet(num_classes: int = 1000, *, in_channels: int = 3, dropout: float = 0.2
              ) -> nn.Layer:
  """GoogLeNet without auxiliary classifiers (torchvision's ``googlenet(aux_logits=False)``,
  6,624,904 parameters)::

      conv 7x7/2 64 -> maxpool 3/2 -> conv 1x1 64 -> conv 3x3 192 -> maxpool 3/2
      -> inception 3a, 3b -> maxpool 3/2 -> 4a..4e -> maxpool 2/2 -> 5a, 5b
      -> global avg pool -> dropout -> FC num_classes

  Max pools between stages use ``ceil_mode`` as torchvision does.
  """
  num_classes = _checks.positive_int("num_classes", num_classes)
  in_channels = _checks.positive_int("in_channels", in_channels)
  dropout = _checks.probability("dropout", dropout)

  def pool(size):
    return nn.MaxPool(size, 2, ceil_mode=True)

  blocks = {k: inception(*v, name=f"Inception {k}") for k, v in INCEPTION.items()}
  model = nn.serial(
      _conv(64, 7, 2), pool(3), _conv(64, 1), _conv(192, 3), pool(3),
      blocks["3a"], blocks["3b"], pool(3),
      blocks["4a"], blocks["4b"], blocks["4c"], blocks["4d"], blocks["4e"], pool(2),
      blocks["5a"], blocks["5b"],
      nn.GlobalAvgPool, nn.Dropout(dropout), nn.Dense(num_classes))
  return checked_input(model, "googlenet", rank=3, channels=in_channels)
