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
  # the readout is a jaxseq.nn.Dense: params {"kernel": (H, K), "bias": (K,)}
  assert set(params) == {"rnn", "readout"} and set(params["readout"]) == {"kernel", "bias"}
  assert params["readout"]["kernel"].shape == (5, task.output_size)
  params["readout"]["bias"] = jnp.arange(task.output_size, dtype=jnp.float32) * 0.1 - 0.2
  x, y = task.sample(KEY, 6, 10)
  ys, _ = unroll(cell, params["rnn"], x)
  w, b = np.asarray(params["readout"]["kernel"]), np.asarray(params["readout"]["bias"])
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
  assert params["readout"]["kernel"].shape == (3, 4)
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
  with pytest.raises(ValueError, match=r"^resume: expected a checkpoint of this run, got one "
                     r"that differs in seed \(1 in the checkpoint, 2 now\)"):
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
    (dict(learning_rate=float("inf")), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate="1e-3"), "learning_rate"),
    (dict(clip_norm=0.0), "clip_norm"),
    (dict(clip_norm=float("inf")), "clip_norm"),
    (dict(checkpoint_dir=3), "checkpoint_dir"),
    (dict(progress="yes"), "progress"),
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


# ----------------------------------------------------------------------------- defaults


def test_every_task_has_defaults_that_cover_its_default_length():
  assert set(train_lib.DEFAULTS) == set(tasks.TASKS)
  for name, settings in train_lib.DEFAULTS.items():
    assert settings.length <= settings.max_length, name
    bounds = [up_to for up_to, _ in settings.steps]
    assert bounds == sorted(bounds) and bounds[-1] >= settings.max_length, name
    assert train_lib.defaults(name) is settings
    assert settings.learning_rate > 0 and settings.batch_size > 0


def test_steps_for_picks_the_first_covering_entry():
  settings = train_lib.TaskDefaults(length=5, max_length=20, steps=((10, 7), (20, 9)),
                                    batch_size=2, learning_rate=0.1)
  assert [settings.steps_for(T) for T in (1, 10, 11, 20, 50)] == [7, 7, 9, 9, 9]


def test_train_takes_the_tasks_defaults_for_what_it_is_not_given(monkeypatch):
  tiny = train_lib.TaskDefaults(length=4, max_length=8, steps=((4, 3), (8, 5)), batch_size=2,
                                learning_rate=0.05)
  monkeypatch.setitem(train_lib.DEFAULTS, "adding", tiny)
  cell = simple_rnn(3)
  result = train_lib.train("adding", cell, eval_every=100, progress=False)
  assert [entry[0] for entry in result.history] == [3]          # steps_for(length 4)
  longer = train_lib.train("adding", cell, length=7, eval_every=100, progress=False)
  assert [entry[0] for entry in longer.history] == [5]          # steps_for(7)
  # the same run with every default spelled out is the same run
  explicit = train_lib.train("adding", cell, length=4, steps=3, batch_size=2,
                             learning_rate=0.05, eval_every=100, progress=False)
  assert explicit.history == result.history
  assert tree_equal(explicit.params, result.params)


def test_cell_for_applies_the_tasks_init_only_when_none_is_given():
  # copy: the LSTM defaults to chrono with T_max = the sequence's steps, delay + 20
  choice = train_lib.cell_for("copy", "lstm", length=30)
  assert choice.task_default_init
  assert choice.options["chrono_t_max"] == 50.0
  assert choice.description == "lstm(H=128, init default, chrono T_max=50)"
  params = choice.cell.init(KEY, 10)
  H = 128
  b_f = np.asarray(params["b"][H:2 * H])   # chrono: b_f = log U[1, T_max - 1], b_i = -b_f
  assert b_f.min() >= 0.0 and b_f.max() <= np.log(49.0) + 1e-6
  np.testing.assert_allclose(params["b"][:H], -b_f, rtol=1e-6)
  # any init option of the caller replaces the task's
  mine = train_lib.cell_for("copy", "lstm", length=30, forget_bias=1.0, hidden_size=8)
  assert not mine.task_default_init and mine.options["chrono_t_max"] is None
  assert mine.description == "lstm(H=8, init default, forget bias 1)"
  assert not train_lib.cell_for("copy", "gru", length=30).task_default_init
  assert not train_lib.cell_for("adding", "lstm").task_default_init


@pytest.mark.parametrize("metric, status, words", [
    (0.01, "solved", "solved (0.06x the baseline)"),
    (0.05, "learning", "not solved: 0.3x the baseline (solved below 0.1x)"),
    (0.17, "at baseline", "at baseline (1x the baseline; solved below 0.1x)"),
    (float("nan"), "diverged", "diverged (nan)"),
])
def test_verdict_against_the_baseline(metric, status, words):
  judged = train_lib.verdict(metric, 1 / 6)
  assert judged.status == status and judged.text == words


# ----------------------------------------------------------------------------- progress


def test_progress_bar_only_on_a_terminal_unless_asked(capsys):
  options = dict(length=3, steps=2, batch_size=2, eval_every=100)
  cell = simple_rnn(2)
  train_lib.train("adding", cell, **options)   # stderr is captured: not a terminal
  assert capsys.readouterr().err == ""
  train_lib.train("adding", cell, progress=True, **options)
  assert "adding" in capsys.readouterr().err


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path):
  path = tmp_path / "a-file"
  path.write_text("not a folder")
  with pytest.raises(ValueError, match="^checkpoint_dir: expected a folder.*which is a file"):
    train_lib.train("adding", simple_rnn(2), length=3, steps=2, checkpoint_dir=path)
  with pytest.raises(ValueError, match="^checkpoint_dir: expected a folder.*under the file"):
    train_lib.train("adding", simple_rnn(2), length=3, steps=2, checkpoint_dir=path / "run")
  assert path.read_text() == "not a folder"


def test_a_failed_run_writes_no_checkpoint(tmp_path):
  folder = tmp_path / "run"
  with pytest.raises(ValueError, match="^learning_rate: expected"):
    train_lib.train("adding", simple_rnn(2), length=3, steps=2, learning_rate=float("inf"),
                    checkpoint_dir=folder)
  assert not folder.exists()


@pytest.mark.parametrize("change, named", [
    (dict(cell=lstm(3)), r"cell\.name \('simple_rnn' in the checkpoint, 'lstm' now\)"),
    (dict(cell=simple_rnn(4)), r"cell\.hidden_size \(3 in the checkpoint, 4 now\)"),
    (dict(optimizer="sgd"), r"optimizer \('adam' in the checkpoint, 'sgd' now\)"),
    (dict(learning_rate=0.5), r"learning_rate \(0\.1 in the checkpoint, 0\.5 now\)"),
    (dict(task="temporal_order", length=10),
     r"task \('adding' in the checkpoint, 'temporal_order' now\)"),
])
def test_resume_with_other_settings_names_what_differs(tmp_path, change, named):
  options = dict(task="adding", cell=simple_rnn(3), length=10, steps=2, batch_size=2,
                 learning_rate=0.1, progress=False, checkpoint_dir=tmp_path)
  train_lib.train(options.pop("task"), options.pop("cell"), **options)
  options = dict(task="adding", cell=simple_rnn(3), length=10, steps=4, batch_size=2,
                 learning_rate=0.1, progress=False, checkpoint_dir=tmp_path, resume=True)
  options.update(change)
  with pytest.raises(ValueError, match="^resume: expected a checkpoint of this run, got one "
                     "that differs in .*" + named):
    train_lib.train(options.pop("task"), options.pop("cell"), **options)
