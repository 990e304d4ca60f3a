"""jaxseq.train: the model and its metrics against NumPy, the optimiser chain against a
closed form, learning below the baseline, determinism, and checkpoint/resume equality."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseq import tasks
from jaxseq import train as train_lib
from jaxseq.cells import lstm, simple_rnn
from jaxseq.layers import stack
from jaxseq.sequence import unroll

KEY = jax.random.PRNGKey(0)


def log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def tree_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b) and
          all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b)))


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("name", ["adding", "temporal_order", "copy"])
def test_model_readout_and_metric_against_numpy(name):
  task = tasks.TASKS[name]
  cell = simple_rnn(5)
  model = train_lib.make_model(task, cell)
  params = model.init(KEY)
  assert set(params) == {"rnn", "readout"} and set(params["readout"]) == {"w", "b"}
  assert params["readout"]["w"].shape == (5, task.output_size)
  params["readout"]["b"] = jnp.arange(task.output_size, dtype=jnp.float32) * 0.1 - 0.2
  x, y = task.sample(KEY, 6, 10)
  ys, _ = unroll(cell, params["rnn"], x)
  w, b = np.asarray(params["readout"]["w"]), np.asarray(params["readout"]["b"])
  ys = np.asarray(ys, np.float64)
  y = np.asarray(y)
  if task.kind == "classification_per_step":
    outputs = ys @ w + b
    expected = -np.take_along_axis(log_softmax(outputs), y[..., None], -1).mean()
  else:
    outputs = ys[:, -1] @ w + b
    if task.kind == "regression_last":
      expected = np.mean((outputs - y) ** 2)   # plain MSE, comparable with 1/6
    else:
      expected = -np.take_along_axis(log_softmax(outputs), y[:, None], -1).mean()
  predicted, metric, loss = jax.jit(  # one compilation for the three
      lambda p, x, y: (model.predict(p, x), model.metric(p, x, y), model.loss(p, x, y)))(
          params, x, y)
  np.testing.assert_allclose(predicted, outputs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metric, expected, rtol=1e-5)
  scale = 2.0 if task.metric == "mse" else 1.0   # squared_error's 1/2
  np.testing.assert_allclose(loss, expected / scale, rtol=1e-5)


def test_metric_names_match_the_task_kinds():
  for task in tasks.TASKS.values():
    assert task.metric in ("mse", "xent")
    assert (task.metric == "mse") == (task.kind == "regression_last")
  assert train_lib.metric_scale_of(tasks.TASKS["adding"]) == 2.0
  assert train_lib.metric_scale_of(tasks.TASKS["copy"]) == 1.0


def test_model_accepts_a_stacked_layer():
  model = train_lib.make_model("temporal_order", stack(simple_rnn(4), lstm(3)))
  params = jax.eval_shape(model.init, KEY)   # shapes only: nothing to compile
  assert params["readout"]["w"].shape == (3, 4)
  x, _ = tasks.temporal_order(KEY, 2, 10)
  assert jax.eval_shape(model.predict, params, x).shape == (2, 4)


def test_optimizer_clips_the_global_norm_first():
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}   # global norm 5
  params = jax.tree.map(jnp.zeros_like, grads)
  for clip, factor in ((1.0, 1 / 5), (10.0, 1.0), (None, 1.0)):
    sgd = train_lib.make_optimizer("sgd", 0.5, clip)
    updates, _ = sgd.update(grads, sgd.init(params), params)
    for key in grads:   # -lr * g * min(1, c / |g|)
      np.testing.assert_allclose(updates[key], -0.5 * factor * np.asarray(grads[key]),
                                 rtol=1e-6)
  custom = optax.sgd(0.5)
  chained = train_lib.make_optimizer(custom, clip_norm=1.0)
  updates, _ = chained.update(grads, chained.init(params), params)
  np.testing.assert_allclose(updates["b"], [[-0.5 * 4 / 5]], rtol=1e-6)
  for name in ("adam", "adamw", "rmsprop"):
    assert train_lib.make_optimizer(name, 1e-3).init(params) is not None


# ----------------------------------------------------------------------------- training


def test_lstm_learns_adding_below_baseline():
  result = train_lib.train("adding", lstm(16), length=10, steps=300, batch_size=64,
                           learning_rate=1e-2, eval_every=100, progress=False)
  assert result.baseline == pytest.approx(1 / 6)
  assert [entry[0] for entry in result.history] == [100, 200, 300]
  assert result.metric == result.history[-1][2]
  # measured: about 0.006 after 300 steps; the baseline is 0.167
  assert result.metric < 0.25 * result.baseline, result.history
  assert result.history[-1][1] < result.history[0][1]


def test_two_runs_are_identical_and_log_every_entry(capsys):
  # on the per-step task: copy, 3 + 20 steps, baseline 10 ln 8 / 23
  options = dict(length=3, steps=25, batch_size=8, eval_every=10, seed=3)
  logged = []
  first = train_lib.train("copy", lstm(4), progress=True,
                          log=lambda *entry: logged.append(entry), **options)
  cell = lstm(4)
  second = train_lib.train("copy", cell, progress=False, **options)   # compiled anew
  assert "copy" in capsys.readouterr().err   # tqdm's bar
  assert [entry[0] for entry in first.history] == [10, 20, 25]
  assert logged == first.history
  assert first.history == second.history
  assert tree_equal(first.params, second.params)
  assert first.baseline == pytest.approx(tasks.copy_memory_baseline(3))
  assert all(np.isfinite(entry[1:]).all() for entry in first.history)
  third = train_lib.train("copy", cell, progress=False, **{**options, "seed": 4})
  assert third.history != first.history


def test_resume_continues_to_the_uninterrupted_result(tmp_path):
  cell = simple_rnn(5)
  options = dict(length=6, batch_size=8, eval_every=15, seed=1, progress=False,
                 optimizer="rmsprop", learning_rate=3e-3)
  full = train_lib.train("adding", cell, steps=40, **options)
  assert [entry[0] for entry in full.history] == [15, 30, 40]
  folder = tmp_path / "run"
  # interrupted off the evaluation grid (step 20), then on it (step 30), then finished
  part = train_lib.train("adding", cell, steps=20, checkpoint_dir=folder, **options)
  assert [entry[0] for entry in part.history] == [15, 20]
  part = train_lib.train("adding", cell, steps=30, checkpoint_dir=folder, resume=True,
                         **options)
  assert part.history == full.history[:2]
  resumed = train_lib.train("adding", cell, steps=40, checkpoint_dir=folder, resume=True,
                            **options)
  assert resumed.history == full.history
  assert resumed.metric == full.metric
  assert tree_equal(resumed.params, full.params)
  # the guards
  with pytest.raises(ValueError, match="^checkpoint_dir: expected"):
    train_lib.train("adding", cell, steps=40, checkpoint_dir=folder, **options)
  with pytest.raises(ValueError, match="^resume: expected a checkpoint of this run"):
    train_lib.train("adding", cell, steps=40, checkpoint_dir=folder, resume=True,
                    **{**options, "seed": 2})
  with pytest.raises(ValueError, match="^steps: expected at least"):
    train_lib.train("adding", cell, steps=10, checkpoint_dir=folder, resume=True, **options)


@pytest.mark.parametrize("options, argument", [
    (dict(task="nosuchtask"), "task"),
    (dict(task=3), "task"),
    (dict(cell="lstm"), "cell"),
    (dict(length=0), "length"),
    (dict(steps=0), "steps"),
    (dict(batch_size=-1), "batch_size"),
    (dict(optimizer="nosuchopt"), "optimizer"),
    (dict(optimizer=3), "optimizer"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(clip_norm=0.0), "clip_norm"),
    (dict(eval_every=0), "eval_every"),
    (dict(seed=-1), "seed"),
    (dict(resume=True), "resume"),
    (dict(log="file.txt"), "log"),
    (dict(task="temporal_order", length=5), "length"),
])
def test_bad_arguments_fail_early_naming_the_argument(options, argument):
  call = dict(task="adding", cell=simple_rnn(2), length=5, steps=2, progress=False)
  call.update(options)
  with pytest.raises((ValueError, TypeError), match=rf"^{argument}: expected"):
    train_lib.train(call.pop("task"), call.pop("cell"), **call)
