r"""Training a recurrent cell on a ``jaxseq.tasks`` benchmark.

The model is ``jaxseq.recurrent(cell)`` followed by a dense readout ``o_t = h_t W + b``,
applied to the last output for many-to-one tasks and to every output for per-step tasks::

    params = {"rnn": <the cell's params>, "readout": {"w": (H, K), "b": (K,)}}

The loss is ``jaxseq.losses.squared_error`` (mean, with its 1/2 factor) for regression and
``jaxseq.losses.softmax_cross_entropy`` (mean) for classification; gradients are clipped by
their global norm (``optax.clip_by_global_norm``) before the optimiser. Every number the
loop reports is on the task's metric scale, so it reads against ``task.baseline``: plain
MSE ``mean((o - y)^2)`` (twice the 1/2-scaled loss, per output) or cross-entropy in nats.

Example::

    from jaxseq import lstm, tasks, train
    result = train.train(tasks.TASKS["adding"], lstm(32), length=50, steps=2000)
    result.metric, result.baseline      # e.g. 0.002 against 1/6

Runs are deterministic given ``seed``: step ``s`` trains on the batch drawn with
``jax.random.fold_in(data_key, s)``, so a run resumed from a checkpoint reproduces the
uninterrupted run exactly.
"""
from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxseq import _checks, initializers, losses
from jaxseq import layers as layers_lib
from jaxseq import tasks as tasks_lib
from jaxseq.cells.base import Cell

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "sgd": optax.sgd,
}
EVAL_SEED = 2016   # the evaluation set is the same for every training seed


class TrainResult(NamedTuple):
  """What ``train`` returns.

  Attributes:
    params: the trained ``{"rnn": ..., "readout": {"w", "b"}}``.
    history: ``[(step, train_loss, eval_metric), ...]`` at every ``eval_every`` steps and
      at the last step: ``train_loss`` is the mean training loss over the steps since the
      previous entry, ``eval_metric`` the metric on the task's evaluation set, both on
      the metric scale (plain MSE or cross-entropy).
    metric: the final evaluation metric.
    baseline: ``task.baseline(length)``, the metric of a predictor that learned nothing.
  """
  params: Any
  history: list
  metric: float
  baseline: float


class Model(NamedTuple):
  """Recurrent layer + dense readout for one task, as pure functions.

  Attributes:
    init: ``init(key) -> params``.
    predict: ``predict(params, x) -> outputs``: ``(B, K)`` for last-step tasks,
      ``(B, T, K)`` for per-step tasks (logits for classification).
    loss: ``loss(params, x, y) -> scalar``, the training objective.
    metric: ``metric(params, x, y) -> scalar``, the reported metric (``task.metric``).
  """
  init: Callable[[jax.Array], Any]
  predict: Callable[[Any, jax.Array], jax.Array]
  loss: Callable[[Any, jax.Array, jax.Array], jax.Array]
  metric: Callable[[Any, jax.Array, jax.Array], jax.Array]


def _task(task: tasks_lib.Task | str) -> tasks_lib.Task:
  if isinstance(task, str):
    return tasks_lib.TASKS[_checks.choice("task", task, list(tasks_lib.TASKS))]
  if not isinstance(task, tasks_lib.Task):
    _checks.fail("task", "a jaxseq.tasks.Task or a name in jaxseq.tasks.TASKS",
                 type(task).__name__, TypeError)
  _checks.choice("task.kind", task.kind, tasks_lib.KINDS)
  _checks.choice("task.metric", task.metric, tasks_lib.METRICS)
  return task


def metric_scale_of(task: tasks_lib.Task) -> float:
  """``metric = scale * loss``: ``2 / K`` for MSE (the loss has a 1/2 and sums over the
  ``K`` outputs), 1 for cross-entropy."""
  return 2.0 / task.output_size if task.metric == "mse" else 1.0


def make_model(task: tasks_lib.Task | str,
               cell: Cell | layers_lib.Layer) -> Model:
  r"""The model ``train`` fits: ``recurrent(cell)`` and a dense readout.

  Args:
    task: a ``Task`` or its registry name.
    cell: a ``Cell`` (run with ``jaxseq.recurrent``) or any sequence ``Layer``.

  Returns:
    A ``Model``. Readout init: ``w`` Glorot-uniform, ``b = 0``. The regression loss is
    ``\frac12`` MSE summed over the ``K`` outputs; its metric is plain MSE,
    ``2 \cdot loss / K``.
  """
  task = _task(task)
  layer = layers_lib._as_layer("cell", cell)
  num_outputs = task.output_size
  per_step = task.kind == "classification_per_step"

  def init(key: jax.Array) -> dict:
    key_rnn, key_readout = jax.random.split(key)
    rnn = layer.init(key_rnn, task.input_size)
    hidden = layers_lib.output_size(layer, rnn, task.input_size)
    w = initializers.glorot_uniform()(key_readout, (hidden, num_outputs), jnp.float32)
    return {"rnn": rnn, "readout": {"w": w, "b": jnp.zeros((num_outputs,), jnp.float32)}}

  def predict(params: dict, x: jax.Array) -> jax.Array:
    ys, _ = layer.apply(params["rnn"], x)
    if not per_step:
      ys = ys[:, -1]
    return ys @ params["readout"]["w"] + params["readout"]["b"]

  def loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    outputs = predict(params, x)
    if task.kind == "regression_last":
      return losses.squared_error(outputs[:, None], y[:, None])
    if task.kind == "classification_last":
      return losses.softmax_cross_entropy(outputs[:, None], y[:, None])
    return losses.softmax_cross_entropy(outputs, y)

  scale = metric_scale_of(task)

  def metric(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return scale * loss(params, x, y)

  return Model(init, predict, loss, metric)


def make_optimizer(optimizer: str | optax.GradientTransformation,
                   learning_rate: float | optax.Schedule = 1e-3,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """``optax.chain(clip_by_global_norm(clip_norm), optimizer)``.

  Args:
    optimizer: ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"`` (optax's defaults
      otherwise), or any ``optax.GradientTransformation`` (``learning_rate`` unused then).
    learning_rate: a float or an optax schedule.
    clip_norm: the global-norm bound; ``None`` for no clipping.
  """
  if isinstance(optimizer, str):
    _checks.choice("optimizer", optimizer, list(OPTIMIZERS))
    if not callable(learning_rate):
      if isinstance(learning_rate, bool) or not isinstance(learning_rate,
                                                           (int, float, np.floating)):
        _checks.fail("learning_rate", "a positive float or an optax schedule",
                     repr(learning_rate), TypeError)
      if not learning_rate > 0:
        _checks.fail("learning_rate", "a positive float", repr(learning_rate))
      learning_rate = float(learning_rate)
    optimizer = OPTIMIZERS[optimizer](learning_rate)
  elif not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    _checks.fail("optimizer", f"one of {', '.join(OPTIMIZERS)} or an "
                 "optax.GradientTransformation", type(optimizer).__name__, TypeError)
  if clip_norm is None:
    return optimizer
  if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float, np.floating)):
    _checks.fail("clip_norm", "a positive float or None", repr(clip_norm), TypeError)
  if not clip_norm > 0:
    _checks.fail("clip_norm", "a positive float or None", repr(clip_norm))
  return optax.chain(optax.clip_by_global_norm(float(clip_norm)), optimizer)


def _nonnegative_int(argument: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    _checks.fail(argument, "an int >= 0", repr(value), TypeError)
  if value < 0:
    _checks.fail(argument, "an int >= 0", repr(value))
  return int(value)


def _check_bool(argument: str, value: Any) -> bool:
  if not isinstance(value, bool):
    _checks.fail(argument, "a bool", repr(value), TypeError)
  return value


class _Checkpoints:
  """Orbax checkpoints of one run: arrays (params, optimiser state, data key) and JSON
  (step, history, losses since the last entry, the run's configuration)."""

  def __init__(self, directory: str | os.PathLike, config: dict):
    # heavy; only runs that checkpoint pay for it
    ocp = _checks.require("orbax.checkpoint", "orbax-checkpoint", "checkpointing")
    self._ocp = ocp
    self.config = config
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(os.path.abspath(os.fspath(directory)),
                                         options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, arrays: dict, history: list, pending: list) -> None:
    ocp = self._ocp
    meta = dict(step=step, history=[list(entry) for entry in history],
                pending_losses=list(pending), config=self.config)
    self.manager.save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, like: dict) -> tuple[dict, int, list, list]:
    ocp = self._ocp
    restored = self.manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    if meta["config"] != self.config:
      different = sorted(k for k in set(meta["config"]) | set(self.config)
                         if meta["config"].get(k) != self.config.get(k))
      got = ", ".join(f"{k}={meta['config'].get(k)!r}" for k in different)
      want = ", ".join(f"{k}={self.config.get(k)!r}" for k in different)
      _checks.fail("resume", f"a checkpoint of this run ({want})", f"one with {got}")
    history = [(int(s), float(l), float(m)) for s, l, m in meta["history"]]
    return restored["arrays"], int(meta["step"]), history, list(meta["pending_losses"])

  def close(self) -> None:
    self.manager.close()


_CACHE: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
_CACHE_SIZE = 8


def _compiled(task, cell, batch_size, length, optimizer, learning_rate, clip_norm):
  """``(transform, model, train_step, evaluate)``, the jitted functions reused by later
  calls with the same task, the same cell object and the same settings (compiling the
  step costs seconds on CPU; benchmarks and tests train one cell several times)."""
  key = (task, id(cell), batch_size, length, optimizer, learning_rate, clip_norm)
  try:
    hit = _CACHE.get(key)
  except TypeError:   # an unhashable setting: no caching
    key, hit = None, None
  if hit is not None and hit[0] is cell:
    _CACHE.move_to_end(key)
    return hit[1:]
  transform = make_optimizer(optimizer, learning_rate, clip_norm)
  model = make_model(task, cell)
  metric_scale = metric_scale_of(task)
  # Fail on a bad length or batch size here, in Python, rather than inside jit.
  jax.eval_shape(lambda k: task.sample(k, batch_size, length), jax.random.PRNGKey(0))

  @jax.jit
  def train_step(params, opt_state, key_data, step):
    x, y = task.sample(jax.random.fold_in(key_data, step), batch_size, length)
    loss, grads = jax.value_and_grad(model.loss)(params, x, y)
    updates, opt_state = transform.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss * metric_scale

  evaluate = jax.jit(model.metric)
  if key is not None:
    _CACHE[key] = (cell, transform, model, train_step, evaluate)   # holds cell: id stays unique
    while len(_CACHE) > _CACHE_SIZE:
      _CACHE.popitem(last=False)
  return transform, model, train_step, evaluate


@functools.lru_cache(maxsize=4)
def _evaluation_set(task: tasks_lib.Task, length: int) -> tuple[jax.Array, jax.Array]:
  """The task's evaluation set, drawn once per (task, length) and process: drawing it
  compiles the PRNG for its shape (seconds on CPU)."""
  return task.evaluation(jax.random.PRNGKey(EVAL_SEED), length)


def train(task: tasks_lib.Task | str, cell: Cell | layers_lib.Layer, *,
          length: int, steps: int, batch_size: int = 32,
          optimizer: str | optax.GradientTransformation = "adam",
          learning_rate: float | optax.Schedule = 1e-3,
          clip_norm: float | None = 1.0, eval_every: int | None = None,
          seed: int = 0, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = True,
          log: Callable[[int, float, float], None] | None = None) -> TrainResult:
  """Trains ``recurrent(cell)`` + readout on ``task`` with BPTT and a clipped optimiser.

  One jitted step draws its batch on the device (``task.sample``), computes the loss and
  its gradient, clips and applies the update. It is compiled once and reused by later
  calls with the same task, the same cell object and the same settings. Every
  ``eval_every`` steps (and after the last) the model is evaluated on
  ``task.evaluation(PRNGKey(EVAL_SEED), length)``, the same set for every seed.

  Args:
    task: a ``jaxseq.tasks.Task`` or a registry name (``"adding"``, ``"copy"``, ...).
    cell: a ``Cell`` or a sequence ``Layer`` (e.g. a ``jaxseq.stack``).
    length: the task's length (the delay for ``"copy"``; ignored by the digits, which
      are always 64 steps).
    steps: total optimiser steps (counting those done before a resume).
    batch_size: sequences per step.
    optimizer: ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"`` or an
      ``optax.GradientTransformation``.
    learning_rate: float or optax schedule, for a named optimizer.
    clip_norm: global gradient-norm bound, applied first; ``None`` disables it.
    eval_every: steps between evaluations and checkpoints (default 100).
    seed: seeds the initialisation and the training batches.
    checkpoint_dir: save Orbax checkpoints there at every evaluation and at the end.
      Without ``resume`` it must hold no checkpoint yet.
    resume: continue from the latest checkpoint in ``checkpoint_dir`` (from scratch when
      there is none); the run's task, length, batch size and seed must match. The result
      equals that of an uninterrupted run.
    progress: show a tqdm progress bar.
    log: called as ``log(step, train_loss, eval_metric)`` with every history entry.

  Returns:
    A ``TrainResult(params, history, metric, baseline)``.
  """
  task = _task(task)
  if not isinstance(cell, (Cell, layers_lib.Layer)):
    _checks.fail("cell", "a jaxseq Cell or Layer", type(cell).__name__, TypeError)
  length = _checks.positive_int("length", length)
  if task.fixed_length is not None:
    length = task.fixed_length
  steps = _checks.positive_int("steps", steps)
  batch_size = _checks.positive_int("batch_size", batch_size)
  eval_every = 100 if eval_every is None else _checks.positive_int("eval_every", eval_every)
  seed = _nonnegative_int("seed", seed)
  resume = _check_bool("resume", resume)
  progress = _check_bool("progress", progress)
  if resume and checkpoint_dir is None:
    _checks.fail("resume", "a checkpoint_dir to resume from", "checkpoint_dir=None")
  if log is not None and not callable(log):
    _checks.fail("log", "a callable log(step, train_loss, eval_metric) or None",
                 type(log).__name__, TypeError)
  transform, model, train_step, evaluate = _compiled(
      task, cell, batch_size, length, optimizer, learning_rate, clip_norm)
  baseline = float(task.baseline(length))

  key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(key_init)
  opt_state = transform.init(params)
  x_eval, y_eval = _evaluation_set(task, length)

  start, history, pending = 0, [], []
  checkpoints = None
  if checkpoint_dir is not None:
    config = dict(task=task.name, length=length, batch_size=batch_size, seed=seed)
    checkpoints = _Checkpoints(checkpoint_dir, config)
    latest = checkpoints.latest_step()
    if latest is not None and not resume:
      checkpoints.close()
      _checks.fail("checkpoint_dir", "a folder without checkpoints (or resume=True)",
                   f"{os.fspath(checkpoint_dir)!r} with checkpoints up to step {latest}")
    if latest is not None:
      if latest > steps:
        checkpoints.close()
        _checks.fail("steps", f"at least the checkpoint's step {latest}", steps)
      arrays, start, history, pending = checkpoints.restore(
          latest, dict(params=params, opt_state=opt_state, key_data=key_data))
      params, opt_state, key_data = arrays["params"], arrays["opt_state"], arrays["key_data"]

  def record(step: int, losses_since: list) -> None:
    train_loss = float(np.mean(np.asarray(losses_since, np.float64)))
    entry = (step, train_loss, float(evaluate(params, x_eval, y_eval)))
    history.append(entry)
    if log is not None:
      log(*entry)
    bar.set_postfix({"loss": f"{train_loss:.4g}", task.metric: f"{entry[2]:.4g}",
                     "baseline": f"{baseline:.4g}"}, refresh=False)

  bar = tqdm(total=steps, initial=start, disable=not progress, desc=task.name,
             unit="step", dynamic_ncols=True)
  try:
    device_losses = []
    for step in range(start, steps):
      params, opt_state, loss = train_step(params, opt_state, key_data, step)
      device_losses.append(loss)
      bar.update(1)
      if (step + 1) % eval_every == 0:
        record(step + 1, pending + [float(v) for v in jax.device_get(device_losses)])
        pending, device_losses = [], []
        if checkpoints is not None:
          checkpoints.save(step + 1, dict(params=params, opt_state=opt_state,
                                          key_data=key_data), history, pending)
    pending = pending + [float(v) for v in jax.device_get(device_losses)]
    if pending:   # the last steps are off the evaluation grid: one more entry
      if checkpoints is not None and start < steps:
        checkpoints.save(steps, dict(params=params, opt_state=opt_state, key_data=key_data),
                         history, pending)
      record(steps, pending)
  finally:
    bar.close()
    if checkpoints is not None:
      checkpoints.close()
  return TrainResult(params, history, history[-1][2], baseline)
