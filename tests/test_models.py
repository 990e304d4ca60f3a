"""jaxseq.models against PyTorch definitions of the same architectures (written here after
torchvision's, which is not installable next to this torch), published parameter counts,
and a NumPy text CNN."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn

import jaxseq.nn as nn
from jaxseq import models

RNG = np.random.default_rng(0)

# ------------------------------------------------------------------ PyTorch references


class NHWC(tnn.Module):
  """Channels-last before Flatten, so FC weights line up with jaxseq's (H, W, C) order."""

  def forward(self, x):
    return x.permute(0, 2, 3, 1)


def torch_lenet5(in_channels=1, channels=(6, 16), hidden=(120, 84), num_classes=10,
                 nhwc=False):
  return tnn.Sequential(
      tnn.Conv2d(in_channels, channels[0], 5), tnn.ReLU(), tnn.MaxPool2d(2),
      tnn.Conv2d(channels[0], channels[1], 5), tnn.ReLU(), tnn.MaxPool2d(2),
      *([NHWC()] if nhwc else []), tnn.Flatten(),
      tnn.Linear(channels[1] * 25, hidden[0]), tnn.ReLU(),
      tnn.Linear(hidden[0], hidden[1]), tnn.ReLU(), tnn.Linear(hidden[1], num_classes))


def torch_alexnet(num_classes=1000):
  return tnn.Sequential(
      tnn.Conv2d(3, 64, 11, 4, 2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
      tnn.Conv2d(64, 192, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
      tnn.Conv2d(192, 384, 3, padding=1), tnn.ReLU(),
      tnn.Conv2d(384, 256, 3, padding=1), tnn.ReLU(),
      tnn.Conv2d(256, 256, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(3, 2),
      tnn.AdaptiveAvgPool2d(6), tnn.Flatten(),
      tnn.Dropout(), tnn.Linear(256 * 36, 4096), tnn.ReLU(),
      tnn.Dropout(), tnn.Linear(4096, 4096), tnn.ReLU(), tnn.Linear(4096, num_classes))


def torch_vgg16(num_classes=1000):
  layers, c = [], 3
  for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
            512, 512, 512, "M"):
    if v == "M":
      layers.append(tnn.MaxPool2d(2, 2))
    else:
      layers += [tnn.Conv2d(c, v, 3, padding=1), tnn.ReLU()]
      c = v
  return tnn.Sequential(
      *layers, tnn.AdaptiveAvgPool2d(7), tnn.Flatten(),
      tnn.Linear(512 * 49, 4096), tnn.ReLU(), tnn.Dropout(),
      tnn.Linear(4096, 4096), tnn.ReLU(), tnn.Dropout(), tnn.Linear(4096, num_classes))


class TorchBasicBlock(tnn.Module):
  expansion = 1

  def __init__(self, c_in, c, stride=1, downsample=None):
    super().__init__()
    self.conv1 = tnn.Conv2d(c_in, c, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(c)
    self.conv2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(c)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(tnn.Module):
  expansion = 4

  def __init__(self, c_in, c, stride=1, downsample=None):
    super().__init__()
    self.conv1 = tnn.Conv2d(c_in, c, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(c)
    self.conv2 = tnn.Conv2d(c, c, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(c)
    self.conv3 = tnn.Conv2d(c, 4 * c, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(4 * c)
    self.downsample = downsample

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def torch_resnet(block, sizes, num_classes=1000):
  layers = [tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64), tnn.ReLU(),
            tnn.MaxPool2d(3, 2, 1)]
  c_in = 64
  for stage, n in enumerate(sizes):
    c = 64 * 2 ** stage
    for i in range(n):
      stride = 2 if stage > 0 and i == 0 else 1
      down = None
      if stride != 1 or c_in != c * block.expansion:
        down = tnn.Sequential(tnn.Conv2d(c_in, c * block.expansion, 1, stride, bias=False),
                              tnn.BatchNorm2d(c * block.expansion))
      layers.append(block(c_in, c, stride, down))
      c_in = c * block.expansion
  return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                        tnn.Linear(c_in, num_classes))


def basic_conv(c_in, c, k, stride=1):
  return tnn.Sequential(tnn.Conv2d(c_in, c, k, stride, k // 2, bias=False),
                        tnn.BatchNorm2d(c, eps=0.001), tnn.ReLU())


class TorchInception(tnn.Module):
  def __init__(self, c_in, c1, c3r, c3, c5r, c5, pool):
    super().__init__()
    self.b1 = basic_conv(c_in, c1, 1)
    self.b2 = tnn.Sequential(basic_conv(c_in, c3r, 1), basic_conv(c3r, c3, 3))
    self.b3 = tnn.Sequential(basic_conv(c_in, c5r, 1), basic_conv(c5r, c5, 3))  # sic
    self.b4 = tnn.Sequential(tnn.MaxPool2d(3, 1, 1, ceil_mode=True), basic_conv(c_in, pool, 1))

  def forward(self, x):
    return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def torch_googlenet(num_classes=1000):
  pool = lambda k: tnn.MaxPool2d(k, 2, ceil_mode=True)
  return tnn.Sequential(
      basic_conv(3, 64, 7, 2), pool(3), basic_conv(64, 64, 1), basic_conv(64, 192, 3), pool(3),
      TorchInception(192, 64, 96, 128, 16, 32, 32),
      TorchInception(256, 128, 128, 192, 32, 96, 64), pool(3),
      TorchInception(480, 192, 96, 208, 16, 48, 64),
      TorchInception(512, 160, 112, 224, 24, 64, 64),
      TorchInception(512, 128, 128, 256, 24, 64, 64),
      TorchInception(512, 112, 144, 288, 32, 64, 64),
      TorchInception(528, 256, 160, 320, 32, 128, 128), pool(2),
      TorchInception(832, 256, 160, 320, 32, 128, 128),
      TorchInception(832, 384, 192, 384, 48, 128, 128),
      tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(0.2), tnn.Linear(1024, num_classes))


# ------------------------------------------------------------------ parameter counts

ZOO = [  # jaxseq model, PyTorch reference, input shape, torchvision's published count
    (models.lenet5, torch_lenet5, (32, 32, 1), 61_706),
    (models.alexnet, torch_alexnet, (224, 224, 3), 61_100_840),
    (models.vgg16, torch_vgg16, (224, 224, 3), 138_357_544),
    (models.resnet18, lambda: torch_resnet(TorchBasicBlock, (2, 2, 2, 2)), (224, 224, 3),
     11_689_512),
    (models.resnet34, lambda: torch_resnet(TorchBasicBlock, (3, 4, 6, 3)), (224, 224, 3),
     21_797_672),
    (models.resnet50, lambda: torch_resnet(TorchBottleneck, (3, 4, 6, 3)), (224, 224, 3),
     25_557_032),
    (models.googlenet, torch_googlenet, (224, 224, 3), 6_624_904),
]


def _count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("factory,reference,input_shape,published", ZOO,
                         ids=[z[0].__name__ for z in ZOO])
def test_zoo_parameter_counts_and_shapes(factory, reference, input_shape, published):
  model = factory()
  # eval_shape: nothing is allocated (VGG-16 has 138M parameters).
  params, state = jax.eval_shape(lambda k: model.init(k, input_shape), jax.random.PRNGKey(0))
  with torch.device("meta"):
    module = reference()
  assert _count(params) == sum(p.numel() for p in module.parameters()) == published
  assert nn.summary(model, input_shape).total_params == published
  # Batch-norm running statistics are state (PyTorch buffers), not parameters.
  assert _count(state) == sum(b.numel() for name, b in module.named_buffers()
                              if not name.endswith("num_batches_tracked"))
  # Shape inference agrees with what XLA computes, and with PyTorch's output.
  x = jax.ShapeDtypeStruct((2,) + input_shape, jnp.float32)
  logits, _ = jax.eval_shape(lambda p, s, x: model.apply(p, s, x), params, state, x)
  assert logits.shape == (2,) + model.output_shape(input_shape)
  with torch.device("meta"):
    out = module(torch.empty(2, input_shape[-1], *input_shape[:-1]))
  assert tuple(out.shape) == logits.shape


# ------------------------------------------------------------------ forward parity


def _layers_of(params, state):
  """The (params, state) dicts of conv / dense / batch-norm layers in definition order."""
  if isinstance(params, dict) and ("kernel" in params or "scale" in params):
    yield params, state
  elif isinstance(params, dict):
    for k in params:  # residual: body, then shortcut (PyTorch's downsample comes last)
      yield from _layers_of(params[k], state[k])
  elif isinstance(params, list):
    for p, s in zip(params, state):
      yield from _layers_of(p, s)


def _load_into_torch(params, state, module):
  """Copies jaxseq params (with random BN statistics) into ``module``; returns the state
  with the same statistics."""
  targets = [m for m in module.modules()
             if isinstance(m, (tnn.Conv2d, tnn.BatchNorm2d, tnn.Linear))]
  pairs = list(_layers_of(params, state))
  assert len(pairs) == len(targets)
  with torch.no_grad():
    for (p, s), m in zip(pairs, targets):
      if isinstance(m, tnn.BatchNorm2d):
        s["mean"] = RNG.normal(0, 0.1, s["mean"].shape).astype(np.float32)
        s["var"] = RNG.uniform(0.5, 1.5, s["var"].shape).astype(np.float32)
        p["scale"] = RNG.uniform(0.5, 1.5, p["scale"].shape).astype(np.float32)
        p["bias"] = RNG.normal(0, 0.1, p["bias"].shape).astype(np.float32)
        m.weight.copy_(torch.tensor(p["scale"]))
        m.bias.copy_(torch.tensor(p["bias"]))
        m.running_mean.copy_(torch.tensor(s["mean"]))
        m.running_var.copy_(torch.tensor(s["var"]))
        continue
      kernel = np.asarray(p["kernel"])
      if isinstance(m, tnn.Conv2d):
        m.weight.copy_(torch.tensor(np.transpose(kernel, (3, 2, 0, 1))))
      else:
        m.weight.copy_(torch.tensor(kernel.T))
      if "bias" in p:
        p["bias"] = RNG.normal(0, 0.1, p["bias"].shape).astype(np.float32)
        m.bias.copy_(torch.tensor(p["bias"]))
  return params, state


def _numpy_init(model, input_shape):
  """Random params of the model's shapes, made in NumPy (He-scaled kernels): the weights
  are overwritten anyway, and compiling a ResNet's init takes seconds."""
  shapes = jax.eval_shape(lambda k: model.init(k, input_shape), jax.random.PRNGKey(0))
  return jax.tree.map(lambda s: (RNG.standard_normal(s.shape) * math.sqrt(
      2 / math.prod(s.shape[:-1] or (1,)))).astype(np.float32), shapes)


def _compare(model, module, input_shape, batch=2, train=False, numpy_init=True):
  if numpy_init:
    params, state = _numpy_init(model, input_shape)
  else:
    params, state = model.init(jax.random.PRNGKey(0), input_shape)
  params, state = _load_into_torch(params, state, module)
  old_state = jax.tree.map(np.copy, state)
  x = RNG.standard_normal((batch,) + input_shape).astype(np.float32)
  y, new_state = jax.jit(lambda p, s, x: model.apply(p, s, x, train=train))(params, state, x)
  with torch.no_grad():
    expected = module.train(train)(torch.tensor(np.moveaxis(x, -1, 1)))
  if expected.ndim == 4:
    expected = expected.permute(0, 2, 3, 1)
  np.testing.assert_allclose(y, expected.numpy(), rtol=2e-3, atol=2e-4)
  # Running statistics move only in training, as PyTorch's buffers.
  for (_, s_old), (_, s_new), m in zip(_layers_of(params, old_state),
                                       _layers_of(params, new_state),
                                       [m for m in module.modules() if isinstance(
                                           m, (tnn.Conv2d, tnn.BatchNorm2d, tnn.Linear))]):
    if isinstance(m, tnn.BatchNorm2d):
      np.testing.assert_allclose(s_new["mean"], m.running_mean.numpy(), rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(s_new["var"], m.running_var.numpy(), rtol=1e-4, atol=1e-5)
      assert np.array_equal(s_new["mean"], s_old["mean"]) != train


def test_lenet5_forward_matches_torch():
  _compare(models.lenet5(in_channels=3, channels=(8, 16)),
           torch_lenet5(3, (8, 16), nhwc=True), (32, 32, 3), numpy_init=False)


@pytest.mark.parametrize("train", [False, True])
def test_residual_blocks_match_torch(train):
  down = lambda c_in, c: tnn.Sequential(tnn.Conv2d(c_in, c, 1, 2, bias=False),
                                        tnn.BatchNorm2d(c))
  _compare(models.basic_block(8, strides=2, project=True),
           TorchBasicBlock(4, 8, 2, down(4, 8)), (6, 6, 4), train=train)
  _compare(models.bottleneck_block(3, strides=2, project=True),
           TorchBottleneck(5, 3, 2, down(5, 12)), (7, 7, 5), train=train)
  _compare(models.bottleneck_block(3), TorchBottleneck(12, 3), (5, 5, 12), train=train)


def test_resnet18_and_inception_forward_match_torch():
  _compare(models.resnet18(num_classes=7), torch_resnet(TorchBasicBlock, (2, 2, 2, 2), 7),
           (32, 32, 3), batch=1)
  _compare(models.inception(4, 3, 5, 2, 3, 2), TorchInception(6, 4, 3, 5, 2, 3, 2),
           (5, 7, 6), train=True)


# ------------------------------------------------------------------ text CNN


def test_text_cnn_matches_numpy_max_over_time():
  vocab, classes, embed, widths, filters, T = 20, 3, 5, (2, 3, 4), 4, 7
  model = models.text_cnn(vocab, classes, embed_dim=embed, widths=widths, filters=filters)
  params, state = model.init(jax.random.PRNGKey(0), (T,))
  for branch in params[1]:
    branch[0]["bias"] = RNG.standard_normal(filters).astype(np.float32)
  params[3]["bias"] = RNG.standard_normal(classes).astype(np.float32)
  ids = RNG.integers(0, vocab, (2, T))
  apply = jax.jit(model.apply, static_argnames="train")
  logits, _ = apply(params, state, ids)

  e = np.asarray(params[0]["embedding"])[ids]                     # (2, T, E)
  pooled = []
  for w, branch in zip(widths, params[1]):
    kernel, bias = np.asarray(branch[0]["kernel"]), branch[0]["bias"]  # (w, E, F)
    c = np.stack([sum(e[:, t + j] @ kernel[j] for j in range(w)) + bias
                  for t in range(T - w + 1)], axis=1)              # (2, T - w + 1, F)
    pooled.append(np.maximum(c, 0).max(axis=1))
  z = np.concatenate(pooled, axis=-1)
  assert z.shape == (2, filters * len(widths))
  np.testing.assert_allclose(logits, z @ np.asarray(params[3]["kernel"]) + params[3]["bias"],
                             rtol=1e-4, atol=1e-5)
  assert model.output_shape((T,)) == (classes,)
  assert [r.output_shape for r in nn.summary(model, (T,)).rows] == [
      (T,), (T, embed), (filters * len(widths),), (classes,)]
  # Dropout on the pooled features: only with train=True and a key.
  np.testing.assert_allclose(apply(params, state, ids, train=True)[0], logits, rtol=1e-6)
  dropped, _ = apply(params, state, ids, train=True, key=jax.random.PRNGKey(1))
  assert not np.allclose(dropped, logits)


def test_models_reject_bad_input():
  with pytest.raises(ValueError, match=r"input_shape: expected 3 axes.*size 1.*lenet5"):
    models.lenet5().init(jax.random.PRNGKey(0), (32, 32, 3))
  model = models.text_cnn(10, widths=(3, 5), embed_dim=4, filters=2)
  params, state = model.init(jax.random.PRNGKey(0), (6,))
  with pytest.raises(TypeError, match=r"x: expected an integer array"):
    model.apply(params, state, np.ones((2, 6), np.float32))
  with pytest.raises(ValueError, match=r"input_shape: expected spatial size >= 5"):
    model.init(jax.random.PRNGKey(0), (4,))
  with pytest.raises(ValueError, match=r"x: expected \(N, \.\.\.\) with 3 axes"):
    models.resnet18().apply(None, None, np.ones((2, 32, 32), np.float32))
