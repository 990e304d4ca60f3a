"""VGG (Simonyan & Zisserman 2015)."""
from __future__ import annotations

from jaxseq import _checks
from jaxseq import nn
from jaxseq.models._common import checked_input

# Configuration "D": filters of the 3x3 convolutions, "M" for a 2x2 max pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M")


def vgg16(num_classes: int = 1000, *, in_channels: int = 3, dropout: float = 0.5
          ) -> nn.Layer:
  """VGG-16 (configuration D, without batch norm; torchvision's ``vgg16``, 138,357,544
  parameters)::

      [conv 3x3 same, ReLU] x (2, 2, 3, 3, 3) with a 2x2 max pool after each group
      -> adaptive avg pool 7x7 -> FC 4096, ReLU, dropout -> FC 4096, ReLU, dropout
      -> FC num_classes

  Input ``(H, W, in_channels)``, H, W >= 32 (224 in the paper).
  """
  num_classes = _checks.positive_int("num_classes", num_classes)
  in_channels = _checks.positive_int("in_channels", in_channels)
  dropout = _checks.probability("dropout", dropout)
  layers = []
  for item in VGG16:
    if item == "M":
      layers.append(nn.MaxPool(2))
    else:
      layers += [nn.Conv(item, (3, 3), padding=1), nn.Relu]
  model = nn.serial(
      *layers, nn.AdaptiveAvgPool(7), nn.Flatten,
      nn.Dense(4096), nn.Relu, nn.Dropout(dropout),
      nn.Dense(4096), nn.Relu, nn.Dropout(dropout),
      nn.Dense(num_classes))
  return checked_input(model, "vgg16", rank=3, channels=in_channels)
