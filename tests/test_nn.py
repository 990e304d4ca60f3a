"""jaxseq.nn: convolution and pooling against PyTorch and SciPy, the lectures' worked
examples by hand, layers against NumPy/PyTorch, shape inference against XLA's shapes."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as TF

import jaxseq.nn as nn

RNG = np.random.default_rng(0)


def _rand(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def _to_torch(x):  # (N, *spatial, C) -> (N, C, *spatial)
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _from_torch(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def _torch_kernel(kernel):  # (*window, C // groups, F) -> (F, C // groups, *window)
  return torch.tensor(np.moveaxis(np.asarray(kernel), (-1, -2), (0, 1)))


def _num_params(tree):
  return sum(math.prod(np.shape(a)) for a in jax.tree.leaves(tree))


# ------------------------------------------------------------------ conv vs PyTorch

# (spatial, C, F, groups, window, strides, padding, dilation); padding symmetric per axis.
CONV_CASES = [
    ((17,), 3, 5, 1, (4,), 2, 1, 2),
    ((16,), 4, 6, 2, (3,), 1, 0, 3),
    ((11, 13), 3, 4, 1, (3, 3), 1, 0, 1),
    ((11, 13), 4, 6, 2, (3, 2), (2, 1), (1, 2), 1),
    ((12, 10), 6, 6, 6, (3, 3), 1, 1, 2),           # depthwise, dilated
    ((12, 12), 4, 8, 4, (5, 5), 2, 2, (1, 2)),
    ((6, 7, 8), 2, 4, 2, (2, 3, 2), (1, 2, 1), 1, 1),
    ((5, 6, 5), 3, 2, 1, (3, 3, 3), 1, (0, 1, 2), (2, 1, 1)),
]


@pytest.mark.parametrize("spatial,c,f,groups,window,strides,padding,dilation", CONV_CASES)
def test_conv_matches_torch(spatial, c, f, groups, window, strides, padding, dilation):
  x = _rand(2, *spatial, c)
  kernel = _rand(*window, c // groups, f)
  bias = _rand(f)
  y = nn.conv(x, kernel, bias, strides=strides, padding=padding, dilation=dilation,
              groups=groups)
  torch_conv = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}[len(spatial)]
  expected = torch_conv(_to_torch(x), _torch_kernel(kernel), torch.from_numpy(bias),
                        stride=strides, padding=padding, dilation=dilation, groups=groups)
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv_asymmetric_same_and_causal_padding_match_torch():
  x, kernel, bias = _rand(2, 9, 10, 3), _rand(3, 4, 3, 5), _rand(5)
  pads = ((1, 2), (0, 3))
  y = nn.conv(x, kernel, bias, padding=pads, strides=(2, 1))
  padded = TF.pad(_to_torch(x), (0, 3, 1, 2))  # last axis first: (W lo, W hi, H lo, H hi)
  expected = TF.conv2d(padded, _torch_kernel(kernel), torch.from_numpy(bias), stride=(2, 1))
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-4, atol=1e-4)

  y = nn.conv(x, kernel, bias, padding="SAME", dilation=(2, 1))
  expected = TF.conv2d(_to_torch(x), _torch_kernel(kernel), torch.from_numpy(bias),
                       padding="same", dilation=(2, 1))
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-4, atol=1e-4)

  # CAUSAL: d(f - 1) zeros on the left; output t sees only inputs <= t.
  x1, k1 = _rand(2, 12, 3), _rand(3, 3, 4)
  y = nn.conv(x1, k1, padding="CAUSAL", dilation=2)
  expected = TF.conv1d(TF.pad(_to_torch(x1), (4, 0)), _torch_kernel(k1), dilation=2)
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-4, atol=1e-4)
  assert y.shape == (2, 12, 4)
  x2 = x1.copy()
  x2[:, 7:] += 1.0  # changing the future leaves the past untouched
  np.testing.assert_array_equal(nn.conv(x2, k1, padding="causal", dilation=2)[:, :7],
                                y[:, :7])


def test_conv_gradients_match_torch():
  x, kernel = _rand(2, 8, 9, 4), _rand(3, 3, 2, 6)
  g = jax.grad(lambda x, k: jnp.sum(jnp.sin(nn.conv(x, k, strides=2, padding=1,
                                                      groups=2))), (0, 1))(x, kernel)
  xt, kt = _to_torch(x).requires_grad_(), _torch_kernel(kernel).requires_grad_()
  torch.sin(TF.conv2d(xt, kt, stride=2, padding=1, groups=2)).sum().backward()
  np.testing.assert_allclose(g[0], _from_torch(xt.grad), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g[1], np.moveaxis(kt.grad.numpy(), (0, 1), (-1, -2)),
                             rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ pooling vs PyTorch

# (window, strides, padding, dilation, ceil_mode)
MAX_POOL_CASES = [
    (2, None, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (3, 2, 0, 1, True),
    ((2, 3), (1, 2), (1, 1), (2, 1), False),
]


@pytest.mark.parametrize("window,strides,padding,dilation,ceil_mode", MAX_POOL_CASES)
def test_max_pool_matches_torch(window, strides, padding, dilation, ceil_mode):
  x = _rand(2, 10, 11, 3)
  y = nn.max_pool(x, window, strides, padding, dilation=dilation, ceil_mode=ceil_mode)
  expected = TF.max_pool2d(_to_torch(x), window, strides, padding, dilation,
                           ceil_mode=ceil_mode)
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-6)


@pytest.mark.parametrize("window,strides,padding,count_include_pad", [
    (2, None, 0, True), (3, 2, 1, True), (3, 2, 1, False), ((3, 2), (2, 1), (1, 0), False)])
def test_avg_pool_matches_torch(window, strides, padding, count_include_pad):
  x = _rand(2, 10, 11, 3)
  y = nn.avg_pool(x, window, strides, padding, count_include_pad=count_include_pad)
  expected = TF.avg_pool2d(_to_torch(x), window, strides, padding,
                           count_include_pad=count_include_pad)
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-5, atol=1e-6)


def test_pool_gradients_adaptive_and_global_pools_match_torch():
  x = _rand(2, 9, 8, 3)
  g = jax.grad(lambda x: jnp.sum(nn.max_pool(x, 3, 2, 1) ** 2))(x)
  xt = _to_torch(x).requires_grad_()
  (TF.max_pool2d(xt, 3, 2, 1) ** 2).sum().backward()
  np.testing.assert_allclose(g, _from_torch(xt.grad), rtol=1e-5)

  y = nn.adaptive_avg_pool(x, (4, 3))  # 9 -> 4 and 8 -> 3: overlapping, uneven bins
  expected = TF.adaptive_avg_pool2d(_to_torch(x), (4, 3))
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(nn.global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(nn.global_max_pool(x), x.max(axis=(1, 2)))


# ------------------------------------------------------------------ true convolution vs SciPy


def test_flip_is_true_convolution_as_scipy():
  image, kernel = _rand(7, 8), _rand(3, 4)
  x, k = image[None, :, :, None], kernel[:, :, None, None]
  np.testing.assert_allclose(nn.conv(x, k, flip=True)[0, :, :, 0],
                             scipy.signal.convolve2d(image, kernel, mode="valid"),
                             rtol=1e-5, atol=1e-5)
  # "full" is VALID on the input padded by f - 1 on each side.
  np.testing.assert_allclose(nn.conv(x, k, padding=((2, 2), (3, 3)), flip=True)[0, :, :, 0],
                             scipy.signal.convolve2d(image, kernel, mode="full"),
                             rtol=1e-5, atol=1e-5)
  # Without flip it is cross-correlation, what CNNs call convolution.
  np.testing.assert_allclose(nn.conv(x, k)[0, :, :, 0],
                             scipy.signal.correlate2d(image, kernel, mode="valid"),
                             rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the lectures' examples


def test_vertical_edge_detector_on_step_image():
  image = np.array([[10, 10, 10, 0, 0, 0]] * 6, np.float32)
  kernel = np.array([[1, 0, -1]] * 3, np.float32)
  y = nn.conv(image[None, :, :, None], kernel[:, :, None, None])
  np.testing.assert_array_equal(y[0, :, :, 0], [[0, 30, 30, 0]] * 4)


def test_five_3x3x3_filters_with_bias_have_140_params():
  layer = nn.Conv(5, (3, 3))
  params, state = layer.init(jax.random.PRNGKey(0), (6, 6, 3))
  assert _num_params(params) == 5 * (3 * 3 * 3 + 1) == 140
  assert params["kernel"].shape == (3, 3, 3, 5) and params["bias"].shape == (5,)
  assert state == {} and layer.output_shape((6, 6, 3)) == (4, 4, 5)


def test_output_size_formula():
  assert nn.output_size(7, 3, 0, 2) == 3  # the lecture's 7x7, f=3, s=2 case
  assert nn.output_size(6, 3, 0, 1) == 4 and nn.output_size(6, 3, 1, 1) == 6
  for n in range(1, 12):
    for f in range(1, 5):
      for p in range(3):
        for s in range(1, 4):
          for d in range(1, 3):
            extent = d * (f - 1) + 1
            starts = [i for i in range(0, n + 2 * p) if i + extent <= n + 2 * p]
            if not starts:
              with pytest.raises(ValueError, match="n:"):
                nn.output_size(n, f, p, s, d)
              continue
            assert nn.output_size(n, f, p, s, d) == len(starts[::s])


def test_summary_of_the_exercise_network():
  from jaxseq.models import lenet5
  table = nn.summary(lenet5(in_channels=3, channels=(8, 16)), (32, 32, 3))
  rows = table.rows
  assert rows[0].output_shape == (32, 32, 3) and rows[0].activation_size == 3072
  assert [r.output_shape for r in rows[1:]] == [(28, 28, 8), (14, 14, 8), (10, 10, 16),
                                                (5, 5, 16), (120,), (84,), (10,)]
  assert [r.activation_size for r in rows[1:]] == [6272, 1568, 1600, 400, 120, 84, 10]
  conv = lambda f, c_in, c_out: f * f * c_in * c_out + c_out
  fc = lambda n_in, n_out: n_in * n_out + n_out
  expected = [conv(5, 3, 8), 0, conv(5, 8, 16), 0, fc(400, 120), fc(120, 84), fc(84, 10)]
  assert expected == [608, 0, 3216, 0, 48120, 10164, 850]
  assert [r.num_params for r in rows[1:]] == expected
  assert table.total_params == sum(expected) == 62958
  assert table.total_activations == 6272 + 1568 + 1600 + 400 + 120 + 84 + 10
  text = str(table)
  assert "48,120" in text and "62,958" in text and "28x28x8" in text
  assert len(nn.summary(lenet5(in_channels=3), (32, 32, 3), all_layers=True).rows) == 13


# ------------------------------------------------------------------ layers


def _apply(layer, x, **kw):
  params, state = layer.init(jax.random.PRNGKey(1), x.shape[1:])
  return layer.apply(params, state, x, **kw)


@pytest.mark.parametrize("layer,input_shape", [
    (nn.Conv(4, (3, 3), strides=2, padding="SAME", dilation=2), (9, 10, 3)),
    (nn.Conv(6, 3, padding=((0, 2), (1, 1)), groups=3), (8, 7, 3)),
    (nn.Conv(2, 4, padding="CAUSAL", dilation=3), (13, 2)),
    (nn.Conv(2, (2, 2, 3)), (4, 5, 6, 1)),
    (nn.MaxPool(3, 2, ceil_mode=True), (10, 11, 2)),
    (nn.AvgPool((2, 3), 1, "SAME"), (7, 5, 2)),
    (nn.AdaptiveAvgPool((3, 2)), (7, 5, 2)),
    (nn.serial(nn.Conv(3, 3), nn.Relu, nn.GlobalMaxPool, nn.Dense(5)), (9, 9, 2)),
    (nn.concat(nn.Conv(3, 1), nn.serial(nn.Conv(4, 3, padding=1), nn.BatchNorm())), (6, 6, 2)),
    (nn.residual(nn.Conv(2, 3, padding=1), nn.Conv(2, 1)), (5, 5, 3)),
    (nn.serial(nn.Flatten, nn.DropConnect(nn.Dense(7), 0.5), nn.Dropout(0.5)), (3, 4)),
])
def test_output_shape_is_the_computed_shape(layer, input_shape):
  params, state = jax.eval_shape(lambda k: layer.init(k, input_shape), jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((2,) + input_shape, jnp.float32)
  y, new_state = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, train=True), params,
                                state, x)
  assert y.shape == (2,) + layer.output_shape(input_shape)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_dense_and_serial_match_numpy():
  model = nn.serial(nn.Flatten, nn.Dense(4), nn.Tanh, nn.Dense(3))
  x = _rand(5, 2, 3)
  params, state = model.init(jax.random.PRNGKey(0), (2, 3))
  params[1]["bias"] = _rand(4)
  params[3]["bias"] = _rand(3)
  y, _ = model.apply(params, state, x)
  h = np.tanh(x.reshape(5, 6) @ params[1]["kernel"] + params[1]["bias"])
  np.testing.assert_allclose(y, h @ params[3]["kernel"] + params[3]["bias"], rtol=1e-5,
                             atol=1e-6)


def test_batch_norm_train_and_eval_match_numpy_and_torch():
  x = _rand(4, 3, 5, 2) * 3 + 1
  layer = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  params, state = layer.init(jax.random.PRNGKey(0), (3, 5, 2))
  params = {"scale": np.array([1.5, -0.5], np.float32), "bias": np.array([0.2, -1.0],
                                                                         np.float32)}
  state = {"mean": np.array([0.3, -0.2], np.float32), "var": np.array([2.0, 0.5], np.float32)}

  y, new_state = layer.apply(params, state, x, train=True)
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * params["scale"]
                             + params["bias"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new_state["mean"], 0.9 * state["mean"] + 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new_state["var"], 0.9 * state["var"] + 0.1 * x.reshape(-1, 2).var(
      axis=0, ddof=1), rtol=1e-5)

  y_eval, same = layer.apply(params, state, x, train=False)
  np.testing.assert_allclose(y_eval, (x - state["mean"]) / np.sqrt(state["var"] + 1e-5)
                             * params["scale"] + params["bias"], rtol=1e-4, atol=1e-5)
  assert same is state

  bn = torch.nn.BatchNorm2d(2, eps=1e-5, momentum=0.1)  # PyTorch's momentum = 1 - ours
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(params["scale"]))
    bn.bias.copy_(torch.from_numpy(params["bias"]))
    bn.running_mean.copy_(torch.from_numpy(state["mean"]))
    bn.running_var.copy_(torch.from_numpy(state["var"]))
  np.testing.assert_allclose(y_eval, _from_torch(bn.eval()(_to_torch(x))), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(y, _from_torch(bn.train()(_to_torch(x))), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new_state["mean"], bn.running_mean.numpy(), rtol=1e-5)
  np.testing.assert_allclose(new_state["var"], bn.running_var.numpy(), rtol=1e-5)


def test_dropout_is_deterministic_without_key_and_inverted_with_one():
  layer = nn.Dropout(0.3)
  x = np.abs(_rand(100, 100)) + 0.1
  for kw in ({"train": True}, {"train": False, "key": jax.random.PRNGKey(0)}, {}):
    np.testing.assert_array_equal(_apply(layer, x, **kw)[0], x)
  y, _ = _apply(layer, x, train=True, key=jax.random.PRNGKey(0))
  dropped = np.asarray(y) == 0
  assert abs(dropped.mean() - 0.3) < 0.02
  np.testing.assert_allclose(np.asarray(y)[~dropped], x[~dropped] / 0.7, rtol=1e-6)


def test_drop_connect_drops_weights_not_outputs():
  layer = nn.DropConnect(nn.Dense(200), 0.5)
  params, state = layer.init(jax.random.PRNGKey(0), (6,))
  params["bias"] = _rand(200)
  x = np.eye(6, dtype=np.float32)  # row i of the output is row i of the kernel + bias
  w, b = np.asarray(params["kernel"]), params["bias"]
  for kw in ({"train": True}, {"key": jax.random.PRNGKey(3)}):
    np.testing.assert_allclose(layer.apply(params, state, x, **kw)[0], w + b, rtol=1e-6)
  y, _ = layer.apply(params, state, x, train=True, key=jax.random.PRNGKey(3))
  kept = np.isclose(np.asarray(y), w / 0.5 + b, rtol=1e-5)
  dropped = np.isclose(np.asarray(y), b + 0 * w, rtol=1e-6)
  assert np.all(kept | dropped) and 0.4 < dropped.mean() < 0.6
  # One weight mask for the whole batch: two copies of an input get the same output.
  y2, _ = layer.apply(params, state, np.concatenate([x, x]), train=True,
                      key=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(y2[:6], y2[6:])


def test_residual_and_concat():
  layer = nn.residual(nn.Conv(2, 3, padding=1), nn.Conv(2, 1))
  x = _rand(2, 5, 5, 3)
  params, state = layer.init(jax.random.PRNGKey(0), (5, 5, 3))
  params["body"]["bias"], params["shortcut"]["bias"] = _rand(2), _rand(2)
  y, _ = layer.apply(params, state, x)
  body, skip = ({k: torch.tensor(np.asarray(v)) for k, v in params[part].items()}
                for part in ("body", "shortcut"))
  expected = (TF.conv2d(_to_torch(x), _torch_kernel(params["body"]["kernel"]), body["bias"],
                        padding=1)
              + TF.conv2d(_to_torch(x), _torch_kernel(params["shortcut"]["kernel"]),
                          skip["bias"]))
  np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="shortcut"):
    nn.residual(nn.Conv(4, 3)).init(jax.random.PRNGKey(0), (5, 5, 3))
  y, _ = _apply(nn.concat(nn.Identity, nn.Activation(jnp.square)), x)
  np.testing.assert_allclose(y, np.concatenate([x, x ** 2], -1), rtol=1e-6)


# ------------------------------------------------------------------ errors


def test_bad_input_raises_clear_errors():
  x = _rand(1, 6, 6, 4)
  with pytest.raises(ValueError, match=r"x: expected an array of rank 4"):
    nn.conv(x[0], _rand(3, 3, 4, 2))
  with pytest.raises(ValueError, match=r"x: expected 3 channels"):
    nn.conv(x, _rand(3, 3, 3, 2))
  with pytest.raises(ValueError, match=r"groups: expected a positive int dividing"):
    nn.conv(x, _rand(3, 3, 2, 6), groups=3)
  with pytest.raises(ValueError, match=r"padding: expected .*VALID.*got 'SMAE'"):
    nn.conv(x, _rand(3, 3, 4, 2), padding="SMAE")
  with pytest.raises(ValueError, match=r"padding: expected \"CAUSAL\" only"):
    nn.conv(x, _rand(3, 3, 4, 2), padding="CAUSAL")
  with pytest.raises(ValueError, match=r"padding\[1\]"):
    nn.conv(x, _rand(3, 3, 4, 2), padding=(1, (1, 2, 3)))
  with pytest.raises(ValueError, match=r"bias: expected shape \(2,\)"):
    nn.conv(x, _rand(3, 3, 4, 2), _rand(3))
  with pytest.raises(ValueError, match=r"x: expected spatial size"):
    nn.conv(x, _rand(7, 3, 4, 2))
  with pytest.raises(TypeError, match=r"x: expected a floating-point array"):
    nn.max_pool(np.ones((1, 4, 4, 1), np.int32), 2)
  with pytest.raises(ValueError, match=r"strides: expected"):
    nn.max_pool(x, 2, (1, 2, 3))
  with pytest.raises(ValueError, match=r"input_shape: expected rank 3"):
    nn.Conv(2, (3, 3)).init(jax.random.PRNGKey(0), (6, 6, 6, 1))
  with pytest.raises(ValueError, match=r"groups: expected a positive int dividing the input"):
    nn.Conv(4, 3, groups=2).init(jax.random.PRNGKey(0), (6, 6, 3))
  with pytest.raises(ValueError, match=r"x: expected an array \(N, \.\.\., 5\)"):
    _, _ = nn.Dense(2).apply({"kernel": np.ones((5, 2), np.float32)}, {}, x)
  with pytest.raises(TypeError, match=r"key: expected a single PRNG key"):
    nn.Dropout(0.5).apply({}, {}, x, train=True, key=np.ones(2, np.float32))
  with pytest.raises(TypeError, match=r"train: expected a bool"):
    nn.Relu.apply({}, {}, x, train=1)
  with pytest.raises(ValueError, match=r"rate: expected a float in \[0, 1\)"):
    nn.Dropout(1.0)
  with pytest.raises(ValueError, match=r"params: expected a list with one entry per layer"):
    nn.serial(nn.Relu, nn.Relu).apply([{}], [{}, {}], x)
