"""gradflow.grad_norms(..., log=True): log-norms that do not underflow.

Oracles: the default path (one ``jax.grad`` through the perturbed model, itself checked
against brute force in test_gradflow.py) in float64, where float64 does not underflow;
the decay rate of that float64 curve; the top Lyapunov exponent from ``gradflow.lyapunov``
(the QR algorithm on forward tangents, an independent computation).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxseq
from jaxseq import gradflow

F64 = jnp.float64


def _wide(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, F64), tree)


def _float64_log_norms(model, params, xs, loss_fn, **options):
  """log of the default path's norms, computed in float64 from the same float32 values."""
  with jax.enable_x64(True):
    norms = gradflow.grad_norms(model, _wide(params), _wide(xs), loss_fn, **options)
    with np.errstate(divide="ignore"):
      return jax.tree.map(lambda n: np.log(np.asarray(n, np.float64)), norms)


def _tanh_rnn(hidden, gain, input_size=1, bias=0.0, seed=0):
  """A float32 tanh RNN with ``W_hh ~ N(0, gain^2 / H)`` and ``N(0, bias^2)`` biases."""
  rng = np.random.default_rng(seed)
  params = {"w_ih": rng.normal(size=(input_size, hidden)),
            "w_hh": rng.normal(scale=gain / np.sqrt(hidden), size=(hidden, hidden)),
            "b": bias * rng.normal(size=hidden)}
  return jaxseq.simple_rnn(hidden), jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def _lags_from_zero(norms):
  """The lags (from the last step) where a norm curve is exactly 0."""
  return np.nonzero(np.asarray(norms)[::-1] == 0)[0]


# ----------------------------------------------------------------------------- float64


@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "gru"])
def test_float32_log_norms_equal_float64_norms(name):
  hidden, d, batch = 5, 3, 3
  factories = {"simple_rnn": jaxseq.simple_rnn, "lstm": jaxseq.lstm, "gru": jaxseq.gru}
  num_steps = 500 if name == "gru" else 300  # GRUs forget more slowly
  cell = factories[name](hidden)
  params = cell.init(jax.random.PRNGKey(0), d)
  params["b"] = jax.random.uniform(jax.random.PRNGKey(1), params["b"].shape, minval=-1,
                                   maxval=1)
  xs = jax.random.normal(jax.random.PRNGKey(2), (batch, num_steps, d))
  xs = xs.at[1, 250:].set(jnp.inf)  # padding is never read
  lengths = jnp.array([num_steps, 250, 0])
  v = jax.random.normal(jax.random.PRNGKey(3), (hidden,))

  def loss_fn(ys):  # the last output (0 for the shorter examples), and a tiny early term
    return jnp.sum(v * jnp.tanh(ys[:, -1])) + 1e-20 * jnp.sum(ys[:, :5] ** 2)

  options = dict(lengths=lengths, per_leaf=True, per_example=True)
  logs = gradflow.grad_norms(cell, params, xs, loss_fn, log=True, **options)
  expected = _float64_log_norms(cell, params, xs, loss_fn, **options)
  for got, want in zip(jax.tree.leaves(logs), jax.tree.leaves(expected)):
    assert got.dtype == jnp.float32 and got.shape == (batch, num_steps)
    # -inf at the same places: padding (and LSTM's c at the last step, which reaches no
    # output); finite elsewhere, down to e^-110 .. e^-200 where float32 has underflowed.
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    assert np.all(np.isneginf(got[1, 250:])) and np.all(np.isneginf(got[2]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-4)
  assert min(np.min(w[np.isfinite(w)]) for w in jax.tree.leaves(expected)) < -104

  # The norm over the batch and the carry's leaves together, and what float32 gives.
  combined = gradflow.grad_norms(cell, params, xs, loss_fn, lengths=lengths, log=True)
  squares = np.stack([2 * w for w in jax.tree.leaves(expected)])  # (leaves, batch, T)
  np.testing.assert_allclose(combined, 0.5 * logsumexp(squares, axis=(0, 1)), rtol=1e-5,
                             atol=2e-4)
  plain = gradflow.grad_norms(cell, params, xs, loss_fn, lengths=lengths)
  assert np.all(np.isfinite(combined)) and np.any(np.asarray(plain) == 0)


LAYERS = {
    # the lower layer's error over the whole sequence, through a concat merge
    "stack": lambda lstm, gru: jaxseq.stack(jaxseq.bidirectional(lstm), gru),
    # the residual path adds the upper layer's output error to its input error
    "residual": lambda lstm, gru: jaxseq.stack(gru, gru, residual=True),
    # the backward direction is a flipped bidirectional layer; a product merge
    "nested": lambda lstm, gru: jaxseq.bidirectional(jaxseq.bidirectional(gru),
                                                      merge="mul"),
    "time_major": lambda lstm, gru: jaxseq.stack(
        jaxseq.recurrent(lstm, time_major=True, reverse=True),
        jaxseq.recurrent(gru, time_major=True)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_log_norms_match_the_default_path(name, x64):
  layer = LAYERS[name](jaxseq.lstm(3, param_dtype=F64), jaxseq.gru(4, param_dtype=F64))
  params = layer.init(jax.random.PRNGKey(6), 4)
  batch, num_steps = 2, 6
  xs = jax.random.normal(jax.random.PRNGKey(4), (batch, num_steps, 4), F64)
  w = jax.random.normal(jax.random.PRNGKey(5), (num_steps, 4), F64)
  loss_fn = lambda ys: jnp.sum(w * jnp.tanh(ys[..., :4])) + 0.1 * jnp.sum(ys ** 2)
  if name == "time_major":
    xs, loss_fn = jnp.swapaxes(xs, 0, 1), lambda ys, f=loss_fn: f(jnp.swapaxes(ys, 0, 1))
  options = dict(lengths=jnp.array([6, 3]), per_leaf=True, per_example=True)
  logs = gradflow.grad_norms(layer, params, xs, loss_fn, log=True, **options)
  expected = _float64_log_norms(layer, params, xs, loss_fn, **options)
  assert jax.tree.structure(logs) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(logs), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_cell_with_output_beside_the_carry(x64):
  """A hand-made cell whose output is computed beside the carry: its error enters the
  step directly (only the later steps' paths reach carry_t)."""
  def init(key, d):
    return {"w": 0.5 * jax.random.normal(key, (d + 3, 3), F64)}

  def step(params, h, x):
    z = jnp.concatenate([x, h], -1) @ params["w"]
    return jnp.tanh(z), jnp.sin(z) + h

  cell = jaxseq.Cell(init, lambda params, shape: jnp.zeros(shape[:-1] + (3,), F64), step)
  params = cell.init(jax.random.PRNGKey(7), 2)
  xs = jax.random.normal(jax.random.PRNGKey(8), (2, 7, 2), F64)
  loss_fn = lambda ys: jnp.sum(jnp.cos(ys))
  options = dict(lengths=jnp.array([7, 4]), per_example=True)
  np.testing.assert_allclose(
      gradflow.grad_norms(cell, params, xs, loss_fn, log=True, **options),
      _float64_log_norms(cell, params, xs, loss_fn, **options), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- long lags


def test_float32_log_norms_at_ten_thousand_steps():
  num_steps = 10_000
  cell, params = _tanh_rnn(8, gain=0.9, bias=0.1)
  xs = jnp.asarray(0.5 * np.random.default_rng(1).normal(size=(2, num_steps, 1)),
                   jnp.float32)
  loss_fn = lambda ys: jnp.sum(ys[:, -1] ** 2)

  logs = np.asarray(gradflow.grad_norms(cell, params, xs, loss_fn, log=True))
  assert logs.dtype == np.float32 and np.all(np.isfinite(logs))
  assert logs.min() < -2000  # e^-2000: far below float32 (e^-103) and float64 (e^-745)

  # float32 without logs is exactly 0 from a few hundred steps back.
  assert 100 < _lags_from_zero(gradflow.grad_norms(cell, params, xs, loss_fn))[0] < 500
  # float64 reaches further; where it is above 1e-300 the two agree.
  reference = _float64_log_norms(cell, params, xs, loss_fn)
  covered = reference > np.log(1e-300)
  assert 1000 < covered.sum() < num_steps
  np.testing.assert_allclose(logs[covered], reference[covered], rtol=1e-5, atol=1e-3)
  lags = np.arange(num_steps)[::-1]
  rate, rate64 = (np.polyfit(lags[covered], curve[covered], 1)[0]
                  for curve in (logs, reference))
  assert abs(rate - rate64) < 1e-4 * abs(rate64)

  # Past float64's range the decay goes on at the rate of the top Lyapunov exponent of
  # the first example's trajectory over the same steps (forward tangents, QR).
  logs_0 = np.asarray(gradflow.grad_norms(cell, params, xs[:1], loss_fn, log=True))
  start, stop = 200, 7600
  assert logs_0[start] < np.log(1e-300) - 1000 and logs_0[stop] > np.log(1e-300) - 100
  exponent = gradflow.lyapunov(cell, params, xs[0, :stop + 1], k=1, warmup=start + 1)[0]
  assert abs((logs_0[start] - logs_0[stop]) / (stop - start) - exponent) < 2e-3


@pytest.mark.parametrize("gain, bias", [(0.5, 0.0), (0.8, 0.5)])
def test_log_norm_decay_rate_is_the_top_lyapunov_exponent(gain, bias):
  """Zero input: the state settles at a fixed point, where the step Jacobian is constant,
  and the error decays at the rate of its top exponent."""
  hidden, num_steps, warmup = 16, 1500, 300
  cell, params = _tanh_rnn(hidden, gain, bias=bias, seed=2)
  carry = jnp.asarray(0.5 * np.random.default_rng(3).normal(size=hidden), jnp.float32)
  xs = jnp.zeros((num_steps, 1))
  v = jnp.asarray(np.random.default_rng(4).normal(size=hidden), jnp.float32)
  logs = gradflow.grad_norms(cell, params, xs, lambda ys: jnp.sum(v * ys[-1]), carry,
                             log=True)
  exponent = gradflow.lyapunov(cell, params, xs, k=1, warmup=warmup, carry=carry)[0]
  assert exponent < -0.1
  per_step = gradflow.norm_ratios(logs, log=True)[warmup:num_steps - 100]
  assert abs(np.mean(per_step) - exponent) < 1e-2
  assert np.min(logs) < -300


def test_exploding_gradients_do_not_overflow():
  """A driven chaotic tanh RNN: the error grows at the top (positive) exponent, far past
  float32's range, where the default path overflows."""
  num_steps = 2000
  cell, params = _tanh_rnn(16, gain=3.0, seed=5)
  xs = jnp.asarray(np.random.default_rng(6).normal(size=(num_steps, 1)), jnp.float32)
  v = jnp.asarray(np.random.default_rng(7).normal(size=16), jnp.float32)
  loss_fn = lambda ys: jnp.sum(v * ys[-1])
  logs = np.asarray(gradflow.grad_norms(cell, params, xs, loss_fn, log=True))
  assert np.all(np.isfinite(logs)) and logs.max() > 150
  assert not np.all(np.isfinite(gradflow.grad_norms(cell, params, xs, loss_fn)))
  exponent = gradflow.lyapunov(cell, params, xs, k=1, warmup=300)[0]
  assert exponent > 0.05
  start, stop = 300, num_steps - 100
  assert abs((logs[start] - logs[stop]) / (stop - start) - exponent) < 2e-2


# ----------------------------------------------------------------------------- the rest


def test_norm_ratios_of_log_norms_are_differences():
  norms = np.random.default_rng(8).uniform(0.5, 2.0, size=(3, 7))
  log_ratios = gradflow.norm_ratios(np.log(norms), log=True)
  np.testing.assert_allclose(log_ratios, np.log(norms[:, :-1] / norms[:, 1:]), rtol=1e-5,
                             atol=1e-6)
  tree = gradflow.norm_ratios({"h": [-1000.0, -1001.5, -1004.0]}, log=True)
  np.testing.assert_allclose(tree["h"], [1.5, 2.5])
  with pytest.raises(TypeError, match="log: expected a bool"):
    gradflow.norm_ratios(norms, log="yes")


def test_log_must_be_a_bool():
  cell = jaxseq.simple_rnn(3)
  params = cell.init(jax.random.PRNGKey(0), 2)
  with pytest.raises(TypeError, match="log: expected a bool"):
    gradflow.grad_norms(cell, params, jnp.ones((2, 4, 2)), jnp.sum, log=1)
  with pytest.raises(ValueError, match="loss_fn: expected a function returning a real "
                     "scalar"):
    gradflow.grad_norms(cell, params, jnp.ones((2, 4, 2)), lambda ys: ys, log=True)
