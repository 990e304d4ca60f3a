r"""Training a recurrent cell on a ``jaxseq.tasks`` benchmark.

The model is ``jaxseq.recurrent(cell)`` followed by a ``jaxseq.nn.Dense`` readout
``o_t = h_t W + b``, applied to the last output for many-to-one tasks and to every output
for per-step tasks::

    params = {"rnn": <the cell's params>, "readout": {"kernel": (H, K), "bias": (K,)}}

The loss is ``jaxseq.losses.squared_error`` (mean, with its 1/2 factor) for regression and
``jaxseq.losses.softmax_cross_entropy`` (mean) for classification; gradients are clipped by
their global norm (``optax.clip_by_global_norm``) before the optimiser. Every number the
loop reports is on the task's metric scale, so it reads against ``task.baseline``: plain
MSE ``mean((o - y)^2)`` (twice the 1/2-scaled loss, per output) or cross-entropy in nats.

Settings a call leaves out come from ``DEFAULTS[task]``, the per-task defaults that
``jaxseq train`` and ``jaxseq.reproduce`` share, each validated by a row of
``benchmarks/results/reproduce.md``::

    from jaxseq import lstm, train
    result = train.train("adding", lstm(128), length=100)   # 2000 steps x 20, Adam 1e-2
    result.metric, result.baseline      # e.g. 0.0008 against 1/6
    train.verdict(result.metric, result.baseline).status   # "solved"

Runs are deterministic given ``seed``: step ``s`` trains on the batch drawn with
``jax.random.fold_in(data_key, s)``, so a run resumed from a checkpoint reproduces the
uninterrupted run exactly.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxseq import _checks, initializers, losses
from jaxseq import layers as layers_lib
from jaxseq import tasks as tasks_lib
from jaxseq.cells.base import Cell
from jaxseq.nn import layers as nn_layers

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "sgd": optax.sgd,
}
EVAL_SEED = 2016   # the evaluation set is the same for every training seed
SOLVED = 0.1       # metric below 10% of the baseline: the long-range dependency was learned
AT_BASELINE = 0.5  # metric above half the baseline: nothing useful was learned


# ----------------------------------------------------------------------------- defaults


class TaskDefaults(NamedTuple):
  """Training settings for one task, validated by ``benchmarks/results/reproduce.md``.

  Attributes:
    length: the length ``jaxseq train`` uses without ``--length`` (the delay for copy;
      the digits fix their own 64 steps).
    max_length: the largest length the settings are validated for; past it they are a
      starting point, not a promise.
    steps: ``((up_to_length, steps), ...)`` in increasing length: the steps for a length
      are those of the first entry that covers it (the last entry beyond).
    batch_size: sequences per step.
    learning_rate: Adam's learning rate (global-norm clipping 1.0).
    hidden_size: the cell's ``H`` in ``jaxseq train``.
    cell_options: ``{cell name: jaxseq.registry.make_cell options}`` applied by
      ``jaxseq train`` when the command line names no initialisation; ``chrono_t_max``
      ``"length"`` means the number of steps in a sequence.
    evidence: the reproduction rows that validate these settings.
  """
  length: int
  max_length: int
  steps: tuple[tuple[int, int], ...]
  batch_size: int
  learning_rate: float
  hidden_size: int = 128
  cell_options: Mapping[str, Mapping[str, Any]] = {}
  evidence: str = ""

  def steps_for(self, length: int) -> int:
    """Training steps for the task at ``length``."""
    for up_to, steps in self.steps:
      if length <= up_to:
        return steps
    return self.steps[-1][1]


DEFAULTS: dict[str, TaskDefaults] = {
    "adding": TaskDefaults(
        length=100, max_length=200, steps=((100, 2000), (200, 6000)), batch_size=20,
        learning_rate=1e-2,
        evidence="adding, T=100 and T=200: lstm(128) solved (Arjovsky et al. 2016 row)"),
    "copy": TaskDefaults(
        length=50, max_length=100, steps=((50, 4000), (100, 8000)), batch_size=32,
        learning_rate=1e-2, cell_options={"lstm": {"chrono_t_max": "length"}},
        evidence="copy, T=50: the defaults row (lstm(128), chrono T_max = T + 20)"),
    "temporal_order": TaskDefaults(
        length=100, max_length=100, steps=((100, 1000),), batch_size=32,
        learning_rate=1e-2, cell_options={"lstm": {"chrono_t_max": "length"}},
        evidence="temporal_order, T=100: the defaults row (lstm(128), chrono T_max = T)"),
    "sequential_digits": TaskDefaults(
        length=64, max_length=64, steps=((64, 2000),), batch_size=64, learning_rate=3e-3,
        evidence="sequential_digits: the defaults row (lstm(128))"),
    "permuted_digits": TaskDefaults(
        length=64, max_length=64, steps=((64, 2000),), batch_size=64, learning_rate=3e-3,
        evidence="permuted_digits: the defaults row (lstm(128) overfits the 1437 training "
                 "images: about 0.25x the baseline, not solved)"),
}
"""Per-task training defaults, shared by ``train``, ``jaxseq train`` and
``jaxseq.reproduce`` (which re-validates them)."""


def defaults(task: tasks_lib.Task | str) -> TaskDefaults:
  """``DEFAULTS`` for a task (by ``Task`` or name); a task outside the registry gets the
  adding problem's settings."""
  task = resolve_task(task)
  return DEFAULTS.get(task.name, DEFAULTS["adding"])


class CellChoice(NamedTuple):
  """What ``cell_for`` built: the cell, its one-line description and the options (of
  ``jaxseq.registry.make_cell``) it was built with, and whether they are the task's
  defaults."""
  cell: Cell
  description: str
  options: dict
  task_default_init: bool


def cell_for(task: tasks_lib.Task | str, name: str, *, length: int | None = None,
             hidden_size: int | None = None, init: str | None = None,
             activation: str = "tanh", forget_bias: float | None = None,
             chrono_t_max: float | None = None) -> CellChoice:
  """The cell ``jaxseq train TASK --cell NAME`` trains: ``registry.make_cell`` with the
  task's default hidden size and, when no initialisation is given (``init``,
  ``forget_bias`` and ``chrono_t_max`` all ``None``), the task's default one for this
  cell (e.g. chrono with ``T_max`` = the sequence's steps for the LSTM on copy).

  Args:
    task: a ``Task`` or its name.
    name: a cell name of ``jaxseq.registry.CELLS``.
    length: the task's length (default: the task's default length); sets chrono's
      ``T_max`` when that defaults to the sequence length.
    hidden_size: ``H`` (default: the task's).
    init, activation, forget_bias, chrono_t_max: as ``registry.make_cell``.
  """
  from jaxseq import registry   # registry builds cells; train only needs it here

  task = resolve_task(task)
  settings = defaults(task)
  length = settings.length if length is None else _checks.positive_int("length", length)
  hidden_size = settings.hidden_size if hidden_size is None else hidden_size
  options = dict(init=init or "default", activation=activation, forget_bias=forget_bias,
                 chrono_t_max=chrono_t_max)
  task_default = init is None and forget_bias is None and chrono_t_max is None
  if task_default:
    _checks.choice("cell", name, registry.CELLS)
    options.update(settings.cell_options.get(name, {}))
    if options.get("chrono_t_max") == "length":
      options["chrono_t_max"] = float(sequence_steps(task, length))
  cell = registry.make_cell(name, hidden_size, **options)
  description = registry.describe_cell(name, hidden_size, **options)
  return CellChoice(cell, description, dict(name=name, hidden_size=hidden_size, **options),
                    task_default and name in settings.cell_options)


def sequence_steps(task: tasks_lib.Task | str, length: int) -> int:
  """Steps in the task's sequences at ``length`` (``length + 20`` for copy, 64 for the
  digits); shapes only, nothing runs."""
  task = resolve_task(task)
  if task.fixed_length is not None:
    return task.fixed_length
  shape = jax.eval_shape(lambda key: task.sample(key, 1, length)[0], jax.random.PRNGKey(0))
  return int(shape.shape[1])


class Verdict(NamedTuple):
  """A trained model's metric read against the task's baseline.

  Attributes:
    status: ``"solved"`` (below ``SOLVED`` x baseline), ``"learning"`` (below the
      baseline but not solved), ``"at baseline"`` (above ``AT_BASELINE`` x baseline) or
      ``"diverged"`` (not finite).
    ratio: ``metric / baseline``.
    text: e.g. ``"solved (0.0047x the baseline)"`` or ``"not solved: 0.39x the baseline
      (solved below 0.1x)"``.
  """
  status: str
  ratio: float
  text: str


def verdict(metric: float, baseline: float) -> Verdict:
  """Reads ``metric`` against ``baseline`` (see ``Verdict``)."""
  ratio = metric / baseline if baseline > 0 else math.nan
  if not math.isfinite(metric):
    return Verdict("diverged", ratio, f"diverged ({metric!r})")
  if ratio < SOLVED:
    return Verdict("solved", ratio, f"solved ({ratio:.2g}x the baseline)")
  if ratio > AT_BASELINE:
    return Verdict("at baseline", ratio, f"at baseline ({ratio:.2g}x the baseline; "
                   f"solved below {SOLVED:g}x)")
  return Verdict("learning", ratio, f"not solved: {ratio:.2g}x the baseline (solved below "
                 f"{SOLVED:g}x)")


# ----------------------------------------------------------------------------- model


class TrainResult(NamedTuple):
  """What ``train`` returns.

  Attributes:
    params: the trained ``{"rnn": ..., "readout": {"kernel", "bias"}}``.
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


def resolve_task(task: tasks_lib.Task | str) -> tasks_lib.Task:
  """A ``Task`` from a ``Task`` or a registry name, checked."""
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


def readout_layer(task: tasks_lib.Task | str) -> nn_layers.Layer:
  """The readout of ``make_model``: ``jaxseq.nn.Dense(K)`` with a Glorot-uniform kernel
  and a zero bias, ``K`` the task's outputs (or classes)."""
  task = resolve_task(task)
  return nn_layers.Dense(task.output_size, kernel_init=initializers.glorot_uniform(),
                         name="readout")


def make_model(task: tasks_lib.Task | str,
               cell: Cell | layers_lib.Layer) -> Model:
  r"""The model ``train`` fits: ``recurrent(cell)`` and a ``jaxseq.nn.Dense`` readout.

  Args:
    task: a ``Task`` or its registry name.
    cell: a ``Cell`` (run with ``jaxseq.recurrent``) or any sequence ``Layer``.

  Returns:
    A ``Model`` with params ``{"rnn": ..., "readout": {"kernel", "bias"}}`` (see
    ``readout_layer``). The regression loss is ``\frac12`` MSE summed over the ``K``
    outputs; its metric is plain MSE, ``2 \cdot loss / K``.
  """
  task = resolve_task(task)
  layer = layers_lib._as_layer("cell", cell)
  readout = readout_layer(task)
  per_step = task.kind == "classification_per_step"

  def init(key: jax.Array) -> dict:
    key_rnn, key_readout = jax.random.split(key)
    rnn = layer.init(key_rnn, task.input_size)
    hidden = layers_lib.output_size(layer, rnn, task.input_size)
    readout_params, _ = readout.init(key_readout, (hidden,))
    return {"rnn": rnn, "readout": readout_params}

  def predict(params: dict, x: jax.Array) -> jax.Array:
    ys, _ = layer.apply(params["rnn"], x)
    if not per_step:
      ys = ys[:, -1]
    outputs, _ = readout.apply(params["readout"], {}, ys)
    return outputs

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


# ----------------------------------------------------------------------------- optimiser


def make_optimizer(optimizer: str | optax.GradientTransformation,
                   learning_rate: float | optax.Schedule = 1e-3,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """``optax.chain(clip_by_global_norm(clip_norm), optimizer)``.

  Args:
    optimizer: ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"`` (optax's defaults
      otherwise), or any ``optax.GradientTransformation`` (``learning_rate`` unused then).
    learning_rate: a positive finite float or an optax schedule.
    clip_norm: the global-norm bound, positive and finite; ``None`` for no clipping.
  """
  if isinstance(optimizer, str):
    _checks.choice("optimizer", optimizer, list(OPTIMIZERS))
    if not callable(learning_rate):
      learning_rate = _checks.number("learning_rate", learning_rate,
                                     "a positive finite float or an optax schedule",
                                     lambda v: v > 0)
    optimizer = OPTIMIZERS[optimizer](learning_rate)
  elif not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    _checks.fail("optimizer", f"one of {', '.join(OPTIMIZERS)} or an "
                 "optax.GradientTransformation", type(optimizer).__name__, TypeError)
  if clip_norm is None:
    return optimizer
  clip_norm = _checks.number("clip_norm", clip_norm, "a positive finite float or None",
                             lambda v: v > 0)
  return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


# ----------------------------------------------------------------------------- checkpoints


def describe(value: Any) -> Any:
  """A JSON-able description of a cell, layer or spec: what a checkpoint records to tell
  one model from another (functions by name, nested cells by their spec)."""
  if isinstance(value, (Cell, layers_lib.Layer)) or (
      hasattr(value, "spec") and hasattr(value, "init") and callable(value.init)):
    return describe(value.spec)
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    return {str(k): describe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [describe(v) for v in value]
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else repr(float(value))
  if isinstance(value, np.integer):
    return int(value)
  if callable(value):
    return getattr(value, "__name__", type(value).__name__)
  return type(value).__name__   # never repr(): it may hold a memory address


def _describe_optimizer(optimizer: Any, learning_rate: Any) -> dict:
  if isinstance(optimizer, str):
    rate = "schedule" if callable(learning_rate) else float(learning_rate)
    return dict(optimizer=optimizer, learning_rate=rate)
  return dict(optimizer=f"custom {type(optimizer).__name__}", learning_rate=None)


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(value, list):
      for i, item in enumerate(value):
        if isinstance(item, Mapping):
          flat.update(_flatten(item, f"{prefix}{key}[{i}]."))
        else:
          flat[f"{prefix}{key}[{i}]"] = item
      if not value:
        flat[f"{prefix}{key}"] = value
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_difference(saved: Mapping, current: Mapping, limit: int = 4) -> str:
  """``"cell.name ('gru' in the checkpoint, 'lstm' now), ..."``: where two run
  configurations differ ("" when they do not)."""
  saved, current = _flatten(saved), _flatten(current)
  keys = [k for k in list(current) + [k for k in saved if k not in current]
          if saved.get(k, "<absent>") != current.get(k, "<absent>")]
  parts = [f"{k} ({saved.get(k, '<absent>')!r} in the checkpoint, "
           f"{current.get(k, '<absent>')!r} now)" for k in keys[:limit]]
  if len(keys) > limit:
    parts.append(f"and {len(keys) - limit} more")
  return ", ".join(parts)


def _checkpoint_folder(checkpoint_dir: Any) -> str:
  """The absolute path of a usable checkpoint folder: not a file, nor under one."""
  if not isinstance(checkpoint_dir, (str, os.PathLike)):
    _checks.fail("checkpoint_dir", "a folder path (str or os.PathLike) or None",
                 type(checkpoint_dir).__name__, TypeError)
  path = os.path.abspath(os.fspath(checkpoint_dir))
  probe = path
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if os.path.exists(probe) and not os.path.isdir(probe):
    where = "is a file" if probe == path else f"is under the file {probe!r}"
    _checks.fail("checkpoint_dir", "a folder (existing or to create)",
                 f"{os.fspath(checkpoint_dir)!r}, which {where}")
  return path


class _Checkpoints:
  """Orbax checkpoints of one run: arrays (params, optimiser state, data key) and JSON
  (step, history, losses since the last entry, the run's configuration: task, cell and
  optimiser)."""

  def __init__(self, directory: str, config: dict):
    # heavy; only runs that checkpoint pay for it
    ocp = _checks.require("orbax.checkpoint", "orbax-checkpoint", "checkpointing")
    self._ocp = ocp
    self.config = json.loads(json.dumps(config))   # as it will read back
    self.directory = directory
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                           create=False)
    self.manager = None
    if os.path.isdir(directory):
      self.manager = ocp.CheckpointManager(directory, options=options)
    self._options = options

  def latest_step(self) -> int | None:
    return None if self.manager is None else self.manager.latest_step()

  def save(self, step: int, arrays: dict, history: list, pending: list) -> None:
    ocp = self._ocp
    if self.manager is None:   # created at the first save: a failed run leaves nothing
      os.makedirs(self.directory, exist_ok=True)
      self.manager = ocp.CheckpointManager(self.directory, options=self._options)
    meta = dict(step=step, history=[list(entry) for entry in history],
                pending_losses=list(pending), config=self.config)
    self.manager.save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)

  def check_config(self, step: int) -> dict:
    """Reads the checkpoint's JSON and fails naming what differs from this run."""
    ocp = self._ocp
    meta = self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    saved = meta.get("config", {})
    if saved != self.config:
      _checks.fail("resume", "a checkpoint of this run", "one that differs in "
                   + config_difference(saved, self.config))
    return meta

  def restore(self, step: int, like: dict) -> tuple[dict, int, list, list]:
    ocp = self._ocp
    meta = self.check_config(step)
    arrays = self.manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(like)))["arrays"]
    history = [(int(s), float(l), float(m)) for s, l, m in meta["history"]]
    return arrays, int(meta["step"]), history, list(meta["pending_losses"])

  def close(self) -> None:
    if self.manager is not None:
      self.manager.close()


# ----------------------------------------------------------------------------- training


_CACHE: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
_CACHE_SIZE = 8


def _compiled(task, cell, batch_size, length, optimizer, learning_rate, clip_norm,
              mesh=None, data_axis=None):
  """``(transform, model, train_step, evaluate)``, the jitted functions reused by later
  calls with the same task, the same cell object and the same settings (compiling the
  step costs seconds on CPU; benchmarks and tests train one cell several times).

  With a ``mesh``, the step's batch is sharded along ``data_axis`` and the params and
  optimiser state are replicated; the gradient's mean over the batch becomes an all-reduce
  across the devices (XLA's SPMD partitioner inserts it)."""
  key = (task, id(cell), batch_size, length, optimizer, learning_rate, clip_norm, mesh,
         data_axis)
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

  shard_batch = lambda a: a
  jit = jax.jit
  if mesh is not None:
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
    shard_batch = lambda a: jax.lax.with_sharding_constraint(a, batch)
    jit = functools.partial(jax.jit, out_shardings=replicated(mesh))

  @jit
  def train_step(params, opt_state, key_data, step):
    x, y = task.sample(jax.random.fold_in(key_data, step), batch_size, length)
    x, y = jax.tree.map(shard_batch, (x, y))
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
  return task.evaluation(jax.random.PRNGKey(EVAL_SEED), length)


def evaluation_set(task: tasks_lib.Task | str, length: int) -> tuple[jax.Array, jax.Array]:
  """The task's evaluation set at ``length``, ``task.evaluation(PRNGKey(EVAL_SEED),
  length)``: the same for every seed, drawn once per (task, length) and process (drawing
  compiles the PRNG for its shape, seconds on CPU)."""
  return _evaluation_set(resolve_task(task), length)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """The sharding that holds a whole copy of an array on every device of ``mesh``."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def data_mesh(devices: Any = None, axis: str = "data") -> jax.sharding.Mesh:
  """A one-axis ``Mesh`` over ``devices`` (default: ``jax.devices()``, every device of
  every process) for data-parallel ``train(..., mesh=...)``."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    _checks.fail("devices", "at least one device", "none")
  if not isinstance(axis, str):
    _checks.fail("axis", "a mesh axis name (str)", repr(axis), TypeError)
  return jax.sharding.Mesh(np.asarray(devices), (axis,))


def _check_mesh(mesh: Any, data_axis: Any, batch_size: int) -> str | None:
  """Validates ``train``'s ``mesh``/``data_axis``; returns the axis the batch is split on."""
  if mesh is None:
    if data_axis is not None:
      _checks.fail("data_axis", "None without a mesh", repr(data_axis))
    return None
  if not isinstance(mesh, jax.sharding.Mesh):
    _checks.fail("mesh", "a jax.sharding.Mesh or None", type(mesh).__name__, TypeError)
  if data_axis is None:
    data_axis = mesh.axis_names[0]
  if data_axis not in mesh.axis_names:
    _checks.fail("data_axis", f"one of the mesh's axes {tuple(mesh.axis_names)}",
                 repr(data_axis))
  shards = mesh.shape[data_axis]
  if batch_size % shards:
    _checks.fail("batch_size", f"a multiple of the {shards} devices on mesh axis "
                 f"{data_axis!r}", batch_size)
  return data_axis


def show_progress(progress: bool | None) -> bool:
  """``progress``, or when ``None`` whether stderr is a terminal (no carriage-return
  updates in a redirected log)."""
  if progress is None:
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
  return _checks.boolean("progress", progress)


def result_line(task: tasks_lib.Task | str, result: TrainResult) -> str:
  """``"mse 0.004 (baseline 0.167)"``: the final metric next to the task's baseline."""
  task = resolve_task(task)
  return f"{task.metric} {result.metric:.4g} (baseline {result.baseline:.4g})"


def train(task: tasks_lib.Task | str, cell: Cell | layers_lib.Layer, *,
          length: int | None = None, steps: int | None = None,
          batch_size: int | None = None,
          optimizer: str | optax.GradientTransformation = "adam",
          learning_rate: float | optax.Schedule | None = None,
          clip_norm: float | None = 1.0, eval_every: int | None = None,
          seed: int = 0, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, progress: bool | None = None,
          log: Callable[[int, float, float], None] | None = None,
          mesh: jax.sharding.Mesh | None = None, data_axis: str | None = None) -> TrainResult:
  """Trains ``recurrent(cell)`` + readout on ``task`` with BPTT and a clipped optimiser.

  One jitted step draws its batch on the device (``task.sample``), computes the loss and
  its gradient, clips and applies the update. It is compiled once and reused by later
  calls with the same task, the same cell object and the same settings. Every
  ``eval_every`` steps (and after the last) the model is evaluated on
  ``evaluation_set(task, length)``, the same set for every seed.

  ``length``, ``steps``, ``batch_size`` and ``learning_rate`` default to the task's
  ``DEFAULTS`` (``defaults(task)``); the cell is the caller's (``DEFAULTS`` also names the
  hidden size and initialisation ``jaxseq train`` uses, e.g. chrono for the LSTM on copy).

  Args:
    task: a ``jaxseq.tasks.Task`` or a registry name (``"adding"``, ``"copy"``, ...).
    cell: a ``Cell`` or a sequence ``Layer`` (e.g. a ``jaxseq.stack``).
    length: the task's length (the delay for ``"copy"``; ignored by the digits, which
      are always 64 steps). Default: the task's default length.
    steps: total optimiser steps (counting those done before a resume). Default: the
      task's steps for ``length``.
    batch_size: sequences per step.
    optimizer: ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"`` or an
      ``optax.GradientTransformation``.
    learning_rate: positive finite float or optax schedule, for a named optimizer.
    clip_norm: global gradient-norm bound, applied first; ``None`` disables it.
    eval_every: steps between evaluations and checkpoints (default 100).
    seed: seeds the initialisation and the training batches.
    checkpoint_dir: save Orbax checkpoints there at every evaluation and at the end
      (the folder is created at the first save). Without ``resume`` it must hold no
      checkpoint yet.
    resume: continue from the latest checkpoint in ``checkpoint_dir`` (from scratch when
      there is none); the run's task, length, batch size, seed, cell and optimiser must
      match those the checkpoint records, else a ``ValueError`` names what differs. The
      result equals that of an uninterrupted run.
    progress: show a tqdm progress bar; ``None`` (default): only when stderr is a
      terminal.
    log: called as ``log(step, train_loss, eval_metric)`` with every history entry.
    mesh: data-parallel training over this ``jax.sharding.Mesh`` (e.g. ``data_mesh()``):
      each step's batch is split across the devices of ``data_axis``, params and
      optimiser state are replicated, and the gradients are averaged across devices by
      an all-reduce. The losses and params equal those of a single-device run up to
      float summation order. For several hosts, call ``jax.distributed.initialize()`` in
      every process first and pass a mesh over ``jax.devices()`` (all processes' devices);
      every process runs the same ``train`` call.
    data_axis: the mesh axis the batch is split along (default: the mesh's first axis);
      ``batch_size`` must be a multiple of its size.

  Returns:
    A ``TrainResult(params, history, metric, baseline)``.
  """
  task = resolve_task(task)
  if not isinstance(cell, (Cell, layers_lib.Layer)):
    _checks.fail("cell", "a jaxseq Cell or Layer", type(cell).__name__, TypeError)
  settings = defaults(task)
  length = settings.length if length is None else _checks.positive_int("length", length)
  if task.fixed_length is not None:
    length = task.fixed_length
  steps = settings.steps_for(length) if steps is None else _checks.positive_int("steps", steps)
  batch_size = settings.batch_size if batch_size is None else _checks.positive_int(
      "batch_size", batch_size)
  if learning_rate is None:
    learning_rate = settings.learning_rate
  eval_every = 100 if eval_every is None else _checks.positive_int("eval_every", eval_every)
  seed = _checks.nonnegative_int("seed", seed)
  resume = _checks.boolean("resume", resume)
  progress = show_progress(progress)
  if resume and checkpoint_dir is None:
    _checks.fail("resume", "a checkpoint_dir to resume from", "checkpoint_dir=None")
  folder = None if checkpoint_dir is None else _checkpoint_folder(checkpoint_dir)
  if log is not None and not callable(log):
    _checks.fail("log", "a callable log(step, train_loss, eval_metric) or None",
                 type(log).__name__, TypeError)
  data_axis = _check_mesh(mesh, data_axis, batch_size)
  transform, model, train_step, evaluate = _compiled(
      task, cell, batch_size, length, optimizer, learning_rate, clip_norm, mesh, data_axis)
  baseline = float(task.baseline(length))

  key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(key_init)
  opt_state = transform.init(params)
  x_eval, y_eval = _evaluation_set(task, length)

  start, history, pending = 0, [], []
  checkpoints = None
  if folder is not None:
    config = dict(task=task.name, length=length, batch_size=batch_size, seed=seed,
                  cell=describe(cell), clip_norm=clip_norm,
                  **_describe_optimizer(optimizer, learning_rate))
    checkpoints = _Checkpoints(folder, config)
    latest = checkpoints.latest_step()
    if latest is not None and not resume:
      checkpoints.close()
      _checks.fail("checkpoint_dir", "a folder without checkpoints (or resume=True)",
                   f"{os.fspath(checkpoint_dir)!r} with checkpoints up to step {latest}")
    if latest is not None:
      try:
        checkpoints.check_config(latest)
        if latest > steps:
          _checks.fail("steps", f"at least the checkpoint's step {latest}", steps)
        arrays, start, history, pending = checkpoints.restore(
            latest, dict(params=params, opt_state=opt_state, key_data=key_data))
      except BaseException:
        checkpoints.close()
        raise
      params, opt_state, key_data = arrays["params"], arrays["opt_state"], arrays["key_data"]
  if mesh is not None:
    params, opt_state, key_data = jax.device_put((params, opt_state, key_data),
                                                 replicated(mesh))

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
