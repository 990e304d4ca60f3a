"""jaxseq.tasks: the generators' statistics and structure against NumPy oracles and closed
forms, the digits against scikit-learn, and the registry."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxseq import tasks

KEY = jax.random.PRNGKey(0)
Z = 5.0  # tolerance in standard errors (CLT) for Monte-Carlo means


def assert_mean_close(samples, expected, name):
  """The sample mean equals ``expected`` within Z standard errors."""
  samples = np.asarray(samples, np.float64)
  se = samples.std(ddof=1) / math.sqrt(samples.size)
  assert abs(samples.mean() - expected) < Z * se, (name, samples.mean(), expected, se)


def assert_uniform(values, support, name):
  """Chi-square goodness of fit of integer ``values`` to the uniform law on ``support``."""
  counts = np.array([(np.asarray(values) == v).sum() for v in support])
  assert counts.sum() == np.asarray(values).size, (name, "values outside the support")
  assert stats.chisquare(counts).pvalue > 1e-4, (name, counts)


# ----------------------------------------------------------------------------- adding


def test_adding_arjovsky_structure_and_one_sixth_baseline():
  n, T = 100_000, 10
  x, y = tasks.adding(KEY, n, T)
  x, y = np.asarray(x), np.asarray(y)
  assert x.shape == (n, T, 2) and x.dtype == np.float32
  assert y.shape == (n, 1) and y.dtype == np.float32
  values, markers = x[..., 0], x[..., 1]
  assert values.min() >= 0.0 and values.max() < 1.0
  assert set(np.unique(markers)) == {0.0, 1.0}
  # exactly one marker in each half
  np.testing.assert_array_equal(markers[:, :T // 2].sum(1), 1)
  np.testing.assert_array_equal(markers[:, T // 2:].sum(1), 1)
  assert_uniform(markers[:, :T // 2].argmax(1), range(T // 2), "first marker")
  assert_uniform(markers[:, T // 2:].argmax(1), range(T - T // 2), "second marker")
  # target: the sum of the two marked values (NumPy oracle)
  np.testing.assert_allclose(y[:, 0], (values * markers).sum(1), rtol=1e-6)
  # the constant prediction 1 has MSE Var(U1 + U2) = 1/6
  assert_mean_close((1.0 - y[:, 0]) ** 2, 1 / 6, "constant-predictor MSE")
  assert tasks.ADDING_BASELINE == pytest.approx(1 / 6)
  assert tasks.adding_baseline(T) == pytest.approx(1 / 6)


def test_adding_hochreiter1997_structure_and_baseline():
  n, T = 100_000, 20
  x, y = tasks.adding(KEY, n, T, variant="hochreiter1997")
  x, y = np.asarray(x), np.asarray(y)[:, 0]
  values, markers = x[..., 0], x[..., 1]
  assert values.min() >= -1.0 and values.max() < 1.0
  marked = markers == 1.0
  np.testing.assert_array_equal(marked.sum(1), 2)
  first = marked.argmax(1)
  last = T - 1 - marked[:, ::-1].argmax(1)
  # one marker in the first ten steps, both in the first half
  assert (first < 10).all() and (last < T // 2).all()
  # -1 at the first and the last step unless marked, 0 elsewhere
  ends = np.zeros(T, bool)
  ends[[0, T - 1]] = True
  np.testing.assert_array_equal(markers[~marked & ends[None]], -1.0)
  np.testing.assert_array_equal(markers[~marked & ~ends[None]], 0.0)
  # a marked first step carries value 0
  np.testing.assert_array_equal(values[marked[:, 0], 0], 0.0)
  np.testing.assert_allclose(y, 0.5 + (values * marked).sum(1) / 4, rtol=1e-6, atol=1e-7)
  # P(step 0 marked) = 1/10 + (9/10) / (T/2 - 1)
  assert_mean_close(marked[:, 0], 0.1 + 0.9 / (T // 2 - 1), "P(first step marked)")
  # the closed-form baseline is the MSE of the best constant, E[y] = 1/2
  assert_mean_close(y, 0.5, "mean target")
  assert_mean_close((y - 0.5) ** 2, tasks.adding_baseline(T, "hochreiter1997"),
                    "constant-predictor MSE")
  assert tasks.adding_baseline(100, "hochreiter1997") == pytest.approx(
      (1.9 - 0.9 / 49) / 48)


# ----------------------------------------------------------------------------- copy


def memoryless_xent(x, y):
  """Cross-entropy per step of: blank for sure, except uniform over the 8 symbols at the 10
  steps after the marker (read from the input). NumPy, from the task's definition."""
  ids = x.argmax(-1)
  n, steps = ids.shape
  marker_at = (ids == 9).argmax(1)
  t = np.arange(steps)[None]
  recall = (t > marker_at[:, None]) & (t <= marker_at[:, None] + 10)
  probs = np.zeros((n, steps, 10))
  probs[..., 0] = np.where(recall, 0.0, 1.0)
  probs[..., 1:9] = np.where(recall, 1 / 8, 0.0)[..., None]
  picked = np.take_along_axis(probs, y[..., None], axis=-1)[..., 0]
  with np.errstate(divide="ignore"):
    return -np.log(picked).mean()


@pytest.mark.parametrize("delay", [1, 7, 30])
def test_copy_memory_structure_and_baseline(delay):
  n = 2000
  x, y = tasks.copy_memory(KEY, n, delay)
  x, y = np.asarray(x), np.asarray(y)
  steps = delay + 20
  assert x.shape == (n, steps, 10) and x.dtype == np.float32
  assert y.shape == (n, steps) and np.issubdtype(y.dtype, np.integer)
  np.testing.assert_array_equal(x.sum(-1), 1.0)  # one-hot
  ids = x.argmax(-1)
  symbols = ids[:, :10]
  assert symbols.min() >= 1 and symbols.max() <= 8
  np.testing.assert_array_equal(ids[:, 10:10 + delay - 1], 0)
  np.testing.assert_array_equal(ids[:, 9 + delay], 9)
  np.testing.assert_array_equal(ids[:, 10 + delay:], 0)
  np.testing.assert_array_equal(y[:, :-10], 0)
  np.testing.assert_array_equal(y[:, -10:], symbols)
  assert_uniform(symbols, range(1, 9), "symbols")
  expected = 10 * math.log(8) / (delay + 20)
  assert tasks.copy_memory_baseline(delay) == pytest.approx(expected)
  assert memoryless_xent(x, y) == pytest.approx(tasks.copy_memory_baseline(delay), rel=1e-12)


def test_copy_memory_variable_delay():
  n, delay = 4000, 12
  x, y = tasks.copy_memory(KEY, n, delay, variable=True)
  x, y = np.asarray(x), np.asarray(y)
  assert x.shape == (n, delay + 20, 10) and y.shape == (n, delay + 20)
  ids = x.argmax(-1)
  np.testing.assert_array_equal((ids == 9).sum(1), 1)
  marker_at = (ids == 9).argmax(1)
  d = marker_at - 9
  assert_uniform(d, range(1, delay + 1), "delays")
  for i in range(200):
    np.testing.assert_array_equal(y[i, marker_at[i] + 1:marker_at[i] + 11], ids[i, :10])
    assert (y[i, :marker_at[i] + 1] == 0).all() and (y[i, marker_at[i] + 11:] == 0).all()
    assert (ids[i, 10:marker_at[i]] == 0).all() and (ids[i, marker_at[i] + 1:] == 0).all()
  assert memoryless_xent(x, y) == pytest.approx(tasks.copy_memory_baseline(delay), rel=1e-12)


# ----------------------------------------------------------------------------- temporal order


@pytest.mark.parametrize("variant, windows", [
    ("2bit", [(1, 2), (5, 6)]),
    ("3bit", [(1, 2), (3, 4), (6, 7)]),
])
def test_temporal_order_decodes_from_positions(variant, windows):
  n, T = 20_000, 43
  x, y = tasks.temporal_order(KEY, n, T, variant=variant)
  x, y = np.asarray(x), np.asarray(y)
  k = len(windows)
  assert x.shape == (n, T, 6) and y.shape == (n,)
  np.testing.assert_array_equal(x.sum(-1), 1.0)
  ids = x.argmax(-1)
  relevant = ids < 2
  np.testing.assert_array_equal(relevant.sum(1), k)
  # oracle decoder: the relevant symbols in order of position, as a binary number
  w = T // 10
  decoded = np.zeros(n, int)
  for b in range(n):
    positions = np.flatnonzero(relevant[b])
    for (lo, hi), p in zip(windows, positions):
      assert lo * w <= p < hi * w, (b, positions)
    for p in positions:
      decoded[b] = 2 * decoded[b] + ids[b, p]
  np.testing.assert_array_equal(decoded, y)
  assert_uniform(y, range(2 ** k), "classes")
  assert_uniform(ids[~relevant], range(2, 6), "distractors")
  name = tasks.TASKS["temporal_order"]
  assert name.baseline(T) == pytest.approx(math.log(4))


# ----------------------------------------------------------------------------- digits


def test_sequential_digits_split_and_range():
  from sklearn.datasets import load_digits
  digits = load_digits()
  x_train, y_train = tasks.sequential_digits("train")
  x_test, y_test = tasks.sequential_digits("test")
  assert x_train.shape == (1437, 64, 1) and x_test.shape == (360, 64, 1)
  assert x_train.dtype == np.float32 and y_train.shape == (1437,)
  for x in (x_train, x_test):
    assert x.min() == 0.0 and x.max() == 1.0
  # train + test is a partition of the whole data set (as a multiset of (image, label))
  ours = np.concatenate([np.concatenate([x_train[..., 0], x_test[..., 0]]),
                         np.concatenate([y_train, y_test])[:, None]], axis=1)
  theirs = np.concatenate([digits.data / 16.0, digits.target[:, None]], axis=1)
  np.testing.assert_allclose(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)],
                             rtol=1e-6)
  # stratified: every class has 36 +- 1 test images
  counts = np.bincount(y_test, minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37
  # fixed: a second call returns the same split
  np.testing.assert_array_equal(tasks.sequential_digits("test")[0], x_test)


def test_permuted_digits_use_one_fixed_permutation():
  x, y = tasks.sequential_digits("train")
  xp, yp = tasks.sequential_digits("train", permute=True, seed=3)
  np.testing.assert_array_equal(y, yp)
  perm = tasks.digits_permutation(3)
  np.testing.assert_array_equal(np.sort(perm), np.arange(64))
  np.testing.assert_array_equal(xp, x[:, perm])
  np.testing.assert_array_equal(tasks.sequential_digits("train", permute=True, seed=3)[0], xp)
  assert not np.array_equal(tasks.digits_permutation(4), perm)
  # the same order for the test split
  xt, _ = tasks.sequential_digits("test")
  np.testing.assert_array_equal(tasks.sequential_digits("test", permute=True, seed=3)[0],
                                xt[:, perm])


# ----------------------------------------------------------------------------- registry


def test_registry_tasks_have_consistent_shapes_and_baselines():
  assert set(tasks.TASKS) == {"adding", "copy", "temporal_order", "sequential_digits",
                              "permuted_digits"}
  expected_baselines = {"adding": 1 / 6, "copy": 10 * math.log(8) / 32,
                        "temporal_order": math.log(4), "sequential_digits": math.log(10),
                        "permuted_digits": math.log(10)}
  for name, task in tasks.TASKS.items():
    assert task.name == name
    assert task.metric == ("mse" if task.kind == "regression_last" else "xent")
    length = 12
    steps = task.fixed_length or (length + 20 if name == "copy" else length)
    x, y = task.sample(KEY, 5, length)
    assert x.shape == (5, steps, task.input_size) and x.dtype == jnp.float32
    if task.kind == "regression_last":
      assert y.shape == (5, task.output_size) and y.dtype == jnp.float32
    elif task.kind == "classification_last":
      assert y.shape == (5,) and jnp.issubdtype(y.dtype, jnp.integer)
      assert 0 <= int(y.min()) and int(y.max()) < task.output_size
    else:
      assert y.shape == (5, steps) and int(y.max()) < task.output_size
    x_eval, y_eval = task.evaluation(KEY, length)
    assert x_eval.shape[1:] == x.shape[1:] and x_eval.shape[0] == y_eval.shape[0]
    np.testing.assert_array_equal(task.evaluation(KEY, length)[0], x_eval)
    assert task.baseline(length) == pytest.approx(expected_baselines[name])


def test_samplers_trace_under_jit():
  task = tasks.TASKS["copy"]
  eager = task.sample(KEY, 3, 5)
  jitted = jax.jit(task.sample, static_argnums=(1, 2))(KEY, 3, 5)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(a, b)
  # a digits batch is drawn without replacement from the training split
  x, y = tasks.TASKS["sequential_digits"].sample(KEY, 50, 64)
  x_train, y_train = tasks.sequential_digits("train")
  rows = {row.tobytes(): label for row, label in zip(x_train, y_train)}
  assert all(rows[row.tobytes()] == label for row, label in zip(np.asarray(x), np.asarray(y)))


@pytest.mark.parametrize("call, argument", [
    (lambda: tasks.adding(KEY, 4, 1), "length"),
    (lambda: tasks.adding(KEY, 0, 10), "batch_size"),
    (lambda: tasks.adding(KEY, 4, 10, variant="nosuch"), "variant"),
    (lambda: tasks.adding(KEY, 4, 19, variant="hochreiter1997"), "length"),
    (lambda: tasks.adding(KEY, 4, 10.0), "length"),
    (lambda: tasks.adding(np.zeros(3), 4, 10), "key"),
    (lambda: tasks.copy_memory(KEY, 4, 0), "delay"),
    (lambda: tasks.copy_memory(KEY, 4, 3, variable=1), "variable"),
    (lambda: tasks.temporal_order(KEY, 4, 9), "length"),
    (lambda: tasks.temporal_order(KEY, 4, 20, variant="4bit"), "variant"),
    (lambda: tasks.sequential_digits("validation"), "split"),
    (lambda: tasks.digits_permutation(-1), "seed"),
    (lambda: tasks.copy_memory_baseline(0), "delay"),
    (lambda: tasks.TASKS["sequential_digits"].sample(KEY, 5000, 64), "batch_size"),
])
def test_bad_arguments_fail_naming_the_argument(call, argument):
  with pytest.raises((ValueError, TypeError), match=rf"^{argument}: expected"):
    call()
