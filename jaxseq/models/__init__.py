"""Model zoo: classic CNNs as ``jaxseq.nn`` layers.

Every model is a ``jaxseq.nn.Layer``::

    model = jaxseq.models.resnet18(num_classes=10)
    params, state = model.init(key, (224, 224, 3))      # one example's shape, no batch
    logits, state = model.apply(params, state, x, train=False, key=None)
    print(jaxseq.nn.summary(model, (224, 224, 3)))

Inputs are channels-last images ``(N, H, W, C)`` (token ids ``(N, T)`` for ``text_cnn``).
Parameter counts equal torchvision's reference architectures.
"""
from jaxseq.models.alexnet import alexnet
from jaxseq.models.googlenet import googlenet, inception
from jaxseq.models.lenet import lenet5
from jaxseq.models.resnet import (basic_block, bottleneck_block, resnet, resnet18, resnet34,
                                  resnet50)
from jaxseq.models.text_cnn import text_cnn
from jaxseq.models.vgg import vgg16

__all__ = [
    "alexnet", "basic_block", "bottleneck_block", "googlenet", "inception", "lenet5",
    "resnet", "resnet18", "resnet34", "resnet50", "text_cnn", "vgg16",
]
