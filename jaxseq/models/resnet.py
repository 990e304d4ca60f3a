"""Residual networks (He, Zhang, Ren & Sun 2016), as torchvision's (v1.5: stride on 3x3)."""
from __future__ import annotations

from typing import Sequence

from jaxseq import _checks
from jaxseq import nn
from jaxseq.models._common import checked_input, name_arg


def _conv(features: int, size: int, strides: int = 1) -> nn.Layer:
  # No bias before batch norm (its beta is the bias); He init for ReLU networks.
  return nn.Conv(features, (size, size), strides=strides, padding=size // 2,
                 use_bias=False, kernel_init=nn.variance_scaling(2.0))


def _conv_bn(features: int, size: int, strides: int = 1) -> list[nn.Layer]:
  return [_conv(features, size, strides), nn.BatchNorm()]


def _block_options(features, strides, project) -> tuple[int, int, bool]:
  return (_checks.positive_int("features", features),
          _checks.positive_int("strides", strides), _checks.boolean("project", project))


def basic_block(features: int, strides: int = 1, project: bool = False) -> nn.Layer:
  """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` (ResNet-18/34).

  ``project`` gives the shortcut a strided 1x1 conv and batch norm (needed when the block
  changes the shape); otherwise it is the identity.
  """
  features, strides, project = _block_options(features, strides, project)
  body = nn.serial(*_conv_bn(features, 3, strides), nn.Relu, *_conv_bn(features, 3))
  shortcut = nn.serial(*_conv_bn(features, 1, strides)) if project else None
  name = f"BasicBlock {features}" + (f", s={strides}" if strides != 1 else "")
  return nn.serial(nn.residual(body, shortcut, name=name), nn.Relu)


def bottleneck_block(features: int, strides: int = 1, project: bool = False,
                     expansion: int = 4) -> nn.Layer:
  """``1x1 (features) -> 3x3 (features, strided) -> 1x1 (expansion * features)`` with
  batch norm and ReLU, plus the shortcut, then ReLU (ResNet-50 and deeper)."""
  features, strides, project = _block_options(features, strides, project)
  expansion = _checks.positive_int("expansion", expansion)
  body = nn.serial(*_conv_bn(features, 1), nn.Relu,
                   *_conv_bn(features, 3, strides), nn.Relu,
                   *_conv_bn(expansion * features, 1))
  shortcut = nn.serial(*_conv_bn(expansion * features, 1, strides)) if project else None
  name = f"Bottleneck {features}->{expansion * features}" + (
      f", s={strides}" if strides != 1 else "")
  return nn.serial(nn.residual(body, shortcut, name=name), nn.Relu)


def resnet(stage_sizes: Sequence[int], *, bottleneck: bool = False,
           num_classes: int = 1000, in_channels: int = 3, name: str = "resnet") -> nn.Layer:
  """A ResNet for ImageNet-sized inputs::

      conv 7x7/2 64, BN, ReLU -> maxpool 3/2 -> stages of blocks with 64, 128, 256, 512
      filters (the first block of stages 2-4 has stride 2) -> global avg pool
      -> FC num_classes

  Args:
    stage_sizes: blocks per stage (``(2, 2, 2, 2)`` is ResNet-18).
    bottleneck: bottleneck blocks (expansion 4) instead of basic blocks.
    num_classes: logits.
    in_channels: input channels.
    name: display name.
  """
  stage_sizes = _checks.positive_ints("stage_sizes", stage_sizes,
                                      what="blocks per stage, (2, 2, 2, 2) for ResNet-18")
  bottleneck = _checks.boolean("bottleneck", bottleneck)
  num_classes = _checks.positive_int("num_classes", num_classes)
  in_channels = _checks.positive_int("in_channels", in_channels)
  name = name_arg(name)
  expansion = 4 if bottleneck else 1
  layers = [*_conv_bn(64, 7, 2), nn.Relu, nn.MaxPool(3, 2, padding=1)]
  channels = 64
  for stage, blocks in enumerate(stage_sizes):
    features = 64 * 2 ** stage
    for i in range(blocks):
      strides = 2 if stage > 0 and i == 0 else 1
      project = strides != 1 or channels != features * expansion
      block = bottleneck_block if bottleneck else basic_block
      layers.append(block(features, strides, project))
      channels = features * expansion
  model = nn.serial(*layers, nn.GlobalAvgPool, nn.Dense(num_classes))
  return checked_input(model, name, rank=3, channels=in_channels)


def resnet18(num_classes: int = 1000, *, in_channels: int = 3) -> nn.Layer:
  """ResNet-18: basic blocks (2, 2, 2, 2); 11,689,512 parameters (torchvision)."""
  return resnet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                name="resnet18")


def resnet34(num_classes: int = 1000, *, in_channels: int = 3) -> nn.Layer:
  """ResNet-34: basic blocks (3, 4, 6, 3); 21,797,672 parameters (torchvision)."""
  return resnet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels,
                name="resnet34")


def resnet50(num_classes: int = 1000, *, in_channels: int = 3) -> nn.Layer:
  """ResNet-50: bottleneck blocks (3, 4, 6, 3); 25,557,032 parameters (torchvision)."""
  return resnet((3, 4, 6, 3), bottleneck=True, num_classes=num_classes,
                in_channels=in_channels, name="resnet50")
