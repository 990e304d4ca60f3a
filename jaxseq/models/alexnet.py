"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), as torchvision's single-GPU variant."""
from __future__ import annotations

from jaxseq import _checks
from jaxseq import nn
from jaxseq.models._common import checked_input


def alexnet(num_classes: int = 1000, *, in_channels: int = 3, dropout: float = 0.5
            ) -> nn.Layer:
  """AlexNet on 224x224 images (torchvision's ``alexnet``, 61,100,840 parameters)::

      conv 11x11/4 64 -> maxpool 3/2 -> conv 5x5 192 -> maxpool 3/2 -> conv 3x3 384
      -> conv 3x3 256 -> conv 3x3 256 -> maxpool 3/2 -> adaptive avg pool 6x6
      -> dropout, FC 4096 -> dropout, FC 4096 -> FC num_classes

  ReLU after every conv and hidden FC layer. Input ``(H, W, in_channels)``, H, W >= 63.
  """
  num_classes = _checks.positive_int("num_classes", num_classes)
  in_channels = _checks.positive_int("in_channels", in_channels)
  dropout = _checks.probability("dropout", dropout)
  model = nn.serial(
      nn.Conv(64, (11, 11), strides=4, padding=2), nn.Relu, nn.MaxPool(3, 2),
      nn.Conv(192, (5, 5), padding=2), nn.Relu, nn.MaxPool(3, 2),
      nn.Conv(384, (3, 3), padding=1), nn.Relu,
      nn.Conv(256, (3, 3), padding=1), nn.Relu,
      nn.Conv(256, (3, 3), padding=1), nn.Relu, nn.MaxPool(3, 2),
      nn.AdaptiveAvgPool(6), nn.Flatten,
      nn.Dropout(dropout), nn.Dense(4096), nn.Relu,
      nn.Dropout(dropout), nn.Dense(4096), nn.Relu,
      nn.Dense(num_classes))
  return checked_input(model, "alexnet", rank=3, channels=in_channels)
