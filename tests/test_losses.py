"""Sequence losses against naive NumPy: per-step losses written from their definitions,
masked with loops over lengths, reduced by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import losses

B, T, K = 3, 5, 4
LENGTHS = np.array([5, 0, 2], np.int32)
rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(B, T, K)).astype(np.float32) * 3
LABELS = rng.integers(0, K, size=(B, T)).astype(np.int32)
SOFT = rng.dirichlet(np.ones(K), size=(B, T)).astype(np.float32)
PREDICTIONS = rng.normal(size=(B, T, K)).astype(np.float32)
TARGETS = rng.normal(size=(B, T, K)).astype(np.float32)
MASK = rng.uniform(size=(B, T)) < 0.6


def numpy_cross_entropy(logits, labels):
  """-log softmax(logits)[label], or -sum(p * log softmax) for label distributions."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  if labels.ndim == logits.ndim:
    return -(labels * log_softmax).sum(-1)
  out = np.empty(labels.shape)
  for index in np.ndindex(labels.shape):
    out[index] = -log_softmax[index + (labels[index],)]
  return out


def numpy_squared_error(predictions, targets):
  return 0.5 * ((predictions.astype(np.float64) - targets) ** 2).sum(-1)


def numpy_reduce(per_step, valid, reduction):
  per_step = np.where(valid, per_step, 0.0)
  if reduction == "none":
    return per_step
  if reduction == "sum":
    return per_step.sum()
  return per_step.sum() / max(valid.sum(), 1)


def valid_from_lengths(lengths, num_steps):
  valid = np.zeros(np.shape(lengths) + (num_steps,), bool)
  for index in np.ndindex(np.shape(lengths)):
    valid[index][:lengths[index]] = True
  return valid


CASES = {
    "ce-int": (losses.softmax_cross_entropy, LOGITS, LABELS, numpy_cross_entropy),
    "ce-soft": (losses.softmax_cross_entropy, LOGITS, SOFT, numpy_cross_entropy),
    "squared": (losses.squared_error, PREDICTIONS, TARGETS, numpy_squared_error),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("valid_by", ["lengths", "mask", "all"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_numpy(case, valid_by, reduction):
  loss, inputs, targets, per_step = CASES[case]
  kwargs = {"lengths": {"lengths": LENGTHS}, "mask": {"mask": MASK}, "all": {}}[valid_by]
  valid = {"lengths": valid_from_lengths(LENGTHS, T), "mask": MASK,
           "all": np.ones((B, T), bool)}[valid_by]
  expected = numpy_reduce(per_step(inputs, targets), valid, reduction)
  actual = loss(inputs, targets, reduction=reduction, **kwargs)
  assert actual.shape == np.shape(expected)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_time_major_and_extra_batch_axes(case):
  loss, inputs, targets, per_step = CASES[case]
  lengths = np.array([[3, 0], [5, 1]], np.int32)
  x = np.concatenate([inputs, inputs[:1]])[:4].reshape((2, 2) + inputs.shape[1:])
  y = np.concatenate([targets, targets[:1]])[:4].reshape((2, 2) + targets.shape[1:])
  expected = numpy_reduce(per_step(x, y), valid_from_lengths(lengths, T), "none")
  np.testing.assert_allclose(loss(x, y, lengths=lengths, reduction="none"), expected,
                             rtol=1e-5, atol=1e-6)
  time_first = lambda a: np.moveaxis(a, 2, 0)
  actual = loss(time_first(x), time_first(y), lengths=lengths, reduction="none",
                time_major=True)
  np.testing.assert_allclose(actual, time_first(expected), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      loss(time_first(x), time_first(y), lengths=lengths, time_major=True),
      expected.sum() / lengths.sum(), rtol=1e-5)


def test_mean_over_no_valid_step_is_zero_with_zero_gradient():
  lengths = np.zeros(B, np.int32)
  value, grad = jax.value_and_grad(
      lambda x: losses.squared_error(x, TARGETS, lengths=lengths))(PREDICTIONS)
  assert value == 0.0
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("garbage", [np.nan, np.inf, -1e30])
def test_garbage_in_padding_reaches_neither_value_nor_gradient(case, garbage):
  loss, inputs, targets, _ = CASES[case]
  padded = ~valid_from_lengths(LENGTHS, T)
  dirty_inputs = np.where(padded[..., None], garbage, inputs).astype(np.float32)
  dirty_targets = targets.copy()
  if targets.dtype.kind == "f":
    dirty_targets[padded] = garbage
  value_and_grad = jax.value_and_grad(lambda x, y: loss(x, y, lengths=LENGTHS))
  value, grad = value_and_grad(inputs, targets)
  dirty_value, dirty_grad = value_and_grad(dirty_inputs, dirty_targets)
  np.testing.assert_allclose(dirty_value, value, rtol=1e-6)
  np.testing.assert_allclose(dirty_grad, grad, rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(dirty_grad)[padded] == 0)


def test_gradient_of_mean_cross_entropy_is_softmax_minus_one_hot():
  """Closed form: d/dlogits of the mean over N valid steps = (softmax - onehot) / N."""
  grad = jax.grad(lambda x: losses.softmax_cross_entropy(x, LABELS, lengths=LENGTHS))(LOGITS)
  logits = LOGITS.astype(np.float64)
  softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = (softmax - np.eye(K)[LABELS]) / LENGTHS.sum()
  expected[~valid_from_lengths(LENGTHS, T)] = 0
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_sequence_mask():
  np.testing.assert_array_equal(losses.sequence_mask(LENGTHS, T),
                                valid_from_lengths(LENGTHS, T))
  np.testing.assert_array_equal(losses.sequence_mask(LENGTHS, T, time_major=True),
                                valid_from_lengths(LENGTHS, T).T)


@pytest.mark.parametrize("time_major", [False, True])
def test_last_valid_matches_numpy_indexing(time_major):
  ys = rng.normal(size=(2, 3, T, K)).astype(np.float32)
  lengths = np.array([[0, 1, 5], [3, 0, 2]], np.int32)
  expected = np.zeros((2, 3, K), np.float32)
  for i in range(2):
    for j in range(3):
      if lengths[i, j] > 0:
        expected[i, j] = ys[i, j, lengths[i, j] - 1]
  ys_in = np.moveaxis(ys, 2, 0) if time_major else ys
  np.testing.assert_array_equal(losses.last_valid(ys_in, lengths, time_major=time_major),
                                expected)
  np.testing.assert_array_equal(losses.last_valid(ys_in, time_major=time_major),
                                ys[:, :, -1])


def test_last_valid_unbatched_and_jitted():
  ys = rng.normal(size=(T, K)).astype(np.float32)
  np.testing.assert_array_equal(losses.last_valid(ys, np.int32(3)), ys[2])
  np.testing.assert_array_equal(losses.last_valid(ys, np.int32(0)), np.zeros(K))
  jitted = jax.jit(losses.last_valid)
  np.testing.assert_array_equal(jitted(ys[None], jnp.array([4])), ys[None, 3])
  grad = jax.grad(lambda y: losses.last_valid(y, np.array([2, 0])).sum())(
      np.stack([ys, ys]))
  expected = np.zeros((2, T, K))
  expected[0, 1] = 1.0
  np.testing.assert_array_equal(grad, expected)
