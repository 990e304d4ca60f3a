"""Numerics through the public API: long sequences stay finite, bfloat16 compute tracks
float32 within a stated tolerance, float64 works end to end, equal keys give bitwise-equal
results, and mixed-precision convolution promotes instead of failing.

Tolerances, stated once:

* bfloat16 compute (``jaxseq.lstm(H, dtype=jnp.bfloat16)``, the LSTM cell state kept in
  float32), float32 params, T = 1000: every output within ``BF16_MAX`` = 0.04 of the
  float32 run (5 bfloat16 ulps at 1.0, ulp = 2**-7; gated outputs lie in [-1, 1]) and
  ``BF16_MEAN`` = 0.004 on average (half an ulp). Measured: max ~0.007 (LSTM), ~0.013
  (GRU, MGU); mean ~0.0007 / 0.0017.
* float64 against float32 from the same params: 1e-5 (float32 rounding over T = 20).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq
import jaxseq.nn as nn
from jaxseq import losses

KEY = jax.random.PRNGKey(0)
GATED = ("lstm", "gru", "mgu")
BF16_MAX, BF16_MEAN = 0.04, 0.004


def _cell(name, hidden_size, **options):
  return getattr(jaxseq, name)(hidden_size, **options)


def _leaves_equal(a, b):
  """Bitwise equality of two pytrees (same structure, same dtypes, same bits)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


# ---------------------------------------------------------------- long sequences


@pytest.mark.parametrize("name", GATED)
def test_unroll_over_100k_steps_stays_finite_in_float32(name):
  """T = 100,000 steps, inputs ~ N(0, 3^2) (saturating the gates often): no NaN/inf, and
  the gated outputs stay in [-1, 1]."""
  cell = _cell(name, 8)
  params = cell.init(KEY, 3)
  xs = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (2, 100_000, 3), jnp.float32)
  ys, carry = jaxseq.unroll(cell, params, xs)
  ys = np.asarray(ys)
  assert ys.shape == (2, 100_000, 8) and ys.dtype == np.float32
  assert np.isfinite(ys).all()
  assert np.abs(ys).max() <= 1.0
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(carry))


def test_lstm_cell_state_under_constant_drive_over_100k_steps_stays_finite():
  """A constant input drives the LSTM's cell state c the same way at every step, the case
  where c grows (it is not squashed); 100,000 steps must not overflow."""
  cell = jaxseq.lstm(4, chrono_t_max=100_000.0)  # forget gates near 1: long memory
  params = cell.init(KEY, 2)
  xs = jnp.full((1, 100_000, 2), 5.0, jnp.float32)
  ys, carry = jaxseq.unroll(cell, params, xs)
  assert np.isfinite(np.asarray(ys)).all()
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(carry))


# ---------------------------------------------------------------- bfloat16 compute


@pytest.mark.parametrize("name", GATED)
def test_bfloat16_compute_tracks_float32_over_1000_steps(name):
  reference = _cell(name, 16)
  half = _cell(name, 16, dtype=jnp.bfloat16)
  params = reference.init(KEY, 8)  # float32 params, shared by both runs
  xs = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (4, 1000, 8), jnp.float32)
  ys32, _ = jaxseq.unroll(reference, params, xs)
  ys16, carry16 = jaxseq.unroll(half, params, xs)
  assert ys16.dtype == jnp.bfloat16
  if name == "lstm":  # the cell state stays float32 (it integrates over time)
    assert carry16.c.dtype == jnp.float32
  error = np.abs(np.asarray(ys16, np.float32) - np.asarray(ys32))
  assert error.max() <= BF16_MAX, error.max()
  assert error.mean() <= BF16_MEAN, error.mean()


def test_conv_promotes_bfloat16_input_with_float32_kernel():
  """nn.conv promotes mixed dtypes as the conv cells do (no raw conv_general_dilated dtype
  error); its value is float32 convolution of the bfloat16-rounded input."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
  bias = rng.standard_normal(5).astype(np.float32)
  x16 = jnp.asarray(x, jnp.bfloat16)
  y = nn.conv(x16, kernel, bias, padding="SAME", strides=2)
  assert y.dtype == jnp.float32
  y_rounded = nn.conv(np.asarray(x16, np.float32), kernel, bias, padding="SAME", strides=2)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_rounded), rtol=1e-6, atol=1e-6)
  # Against the float32 input: the bfloat16 rounding of x (relative 2**-8) over 27 terms.
  y32 = np.asarray(nn.conv(x, kernel, bias, padding="SAME", strides=2))
  scale = np.abs(x).max() * np.abs(kernel).sum(axis=(0, 1, 2)).max()
  assert np.abs(np.asarray(y) - y32).max() <= 2.0 ** -8 * scale
  # And a float32 input with a bfloat16 kernel, through the Conv layer.
  layer = nn.Conv(5, 3, param_dtype=jnp.bfloat16)
  params, state = layer.init(KEY, (9, 9, 3))
  out, _ = layer.apply(params, state, x)
  assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


# ---------------------------------------------------------------- float64


def _lstm_loss(cell, params, xs, labels, lengths, readout):
  ys, _ = jaxseq.unroll(cell, params, xs, lengths=lengths)
  logits = ys @ readout
  return losses.softmax_cross_entropy(logits, labels, lengths=lengths)


def test_float64_end_to_end_sequence(x64):
  """x64 on: a float64 LSTM through unroll with lengths, a readout, the masked loss and its
  gradient are float64 throughout, agree with the float32 run from the same params, and
  differ from it (the float64 path really computes in float64)."""
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((3, 20, 4))
  labels = rng.integers(0, 5, (3, 20))
  lengths = np.array([20, 9, 1])
  readout = rng.standard_normal((6, 5))
  cell64 = jaxseq.lstm(6, param_dtype=jnp.float64)
  params64 = cell64.init(KEY, 4)
  assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params64))
  cell32 = jaxseq.lstm(6)
  params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params64)
  results = {}
  for dtype, cell, params in ((jnp.float32, cell32, params32),
                              (jnp.float64, cell64, params64)):
    args = (jnp.asarray(xs, dtype), labels, lengths, jnp.asarray(readout, dtype))
    results[dtype] = jax.jit(jax.value_and_grad(lambda p: _lstm_loss(cell, p, *args)))(
        params)
  loss64, grads64 = results[jnp.float64]
  loss32, grads32 = results[jnp.float32]
  assert loss64.dtype == jnp.float64
  assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(grads64))
  np.testing.assert_allclose(float(loss32), float(loss64), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads32), jax.tree.leaves(grads64)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert float(loss32) != float(loss64)


def test_float64_gradients_match_finite_differences(x64):
  """In float64 the unroll's gradient agrees with central differences (jax's
  check_grads), which float32 cannot resolve."""
  from jax.test_util import check_grads
  cell = jaxseq.gru(3, param_dtype=jnp.float64)
  params = cell.init(KEY, 2)
  xs = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 2)))
  check_grads(lambda p, x: jaxseq.unroll(cell, p, x)[0].sum(), (params, xs), order=1,
              modes=["rev"], atol=1e-7, rtol=1e-7)


def test_float64_network_layers(x64):
  """A conv net in float64, batch statistics included, keeps float64 outputs and
  gradients."""
  model = nn.serial(nn.Conv(4, 3, param_dtype=jnp.float64), nn.BatchNorm(
      param_dtype=jnp.float64), nn.Relu, nn.MaxPool(2), nn.Flatten,
                    nn.Dense(3, param_dtype=jnp.float64))
  params, state = model.init(KEY, (8, 8, 2))
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8, 8, 2)))

  def loss(p):
    y, _ = model.apply(p, state, x, train=True)
    return jnp.sum(y ** 2), y

  (value, y), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert y.dtype == jnp.float64 and value.dtype == jnp.float64
  assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(grads))
  assert np.isfinite(float(value))


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", GATED)
def test_same_key_gives_bitwise_equal_params_outputs_and_gradients(name):
  def run():
    cell = _cell(name, 5)
    params = cell.init(jax.random.PRNGKey(42), 3)
    xs = jax.random.normal(jax.random.PRNGKey(7), (2, 30, 3))
    lengths = jnp.array([30, 11])
    ys, carry = jaxseq.unroll(cell, params, xs, lengths=lengths)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(jaxseq.unroll(cell, p, xs, lengths=lengths)[0]
                                               ** 2)))(params)
    return params, ys, carry, grads

  _leaves_equal(run(), run())


def test_same_key_gives_bitwise_equal_dropout_masks():
  layer = jaxseq.stack(jaxseq.lstm(4), jaxseq.gru(4), dropout=0.5)
  params = layer.init(KEY, 3)
  xs = jax.random.normal(jax.random.PRNGKey(3), (2, 10, 3))
  a = layer.apply(params, xs, key=jax.random.PRNGKey(9))
  b = layer.apply(params, xs, key=jax.random.PRNGKey(9))
  _leaves_equal(a, b)
  c = layer.apply(params, xs, key=jax.random.PRNGKey(10))
  assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))  # the key matters


def test_same_key_gives_bitwise_equal_network_init_and_training_step():
  model = nn.serial(nn.Conv(4, 3), nn.BatchNorm(), nn.Relu, nn.Flatten, nn.Dropout(0.5),
                    nn.Dense(2))

  def run():
    params, state = model.init(jax.random.PRNGKey(5), (6, 6, 1))
    x = jax.random.normal(jax.random.PRNGKey(6), (3, 6, 6, 1))

    def loss(p):
      y, new_state = model.apply(p, state, x, train=True, key=jax.random.PRNGKey(8))
      return jnp.sum(y ** 2), new_state

    (value, new_state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return params, state, value, new_state, grads

  _leaves_equal(run(), run())


# ---------------------------------------------------------------- Flax's reverse order


def test_flax_reverse_without_keep_order_is_our_reverse_flipped_per_sequence():
  """The mapping ``interop.from_flax`` documents: Flax's ``RNN(reverse=True)`` (default
  ``keep_order=False``) returns each sequence's valid steps flipped in time; with
  ``keep_order=True`` it is ``unroll(reverse=True)``. Final carries agree."""
  flax_nn = pytest.importorskip("flax.linen")
  from jaxseq import interop
  xs = jax.random.normal(KEY, (2, 6, 3))
  lengths = np.array([6, 4])
  valid = np.arange(6) < lengths[:, None]
  for keep_order in (False, True):
    rnn = flax_nn.RNN(flax_nn.LSTMCell(5), reverse=True, keep_order=keep_order,
                      return_carry=True)
    variables = rnn.init(KEY, xs, seq_lengths=lengths)
    flax_carry, flax_ys = rnn.apply(variables, xs, seq_lengths=lengths)
    cell, params = interop.from_flax(rnn.cell, variables["params"]["cell"])
    ys, carry = jaxseq.unroll(cell, params, xs, lengths=lengths, reverse=True)
    ys = np.asarray(ys)
    if not keep_order:  # flip each sequence's valid steps by hand: ys[b, L_b - 1 - t]
      ys = np.stack([np.concatenate([y[:n][::-1], y[n:]]) for y, n in zip(ys, lengths)])
    np.testing.assert_allclose(np.where(valid[..., None], ys, 0),
                               np.where(valid[..., None], np.asarray(flax_ys), 0), atol=1e-6)
    for a, b in zip(interop.carry_to_flax(cell, carry), flax_carry):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
