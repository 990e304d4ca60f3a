r"""The lag-profile experiment: how the gradient of a task's loss decays with the lag.

For a loss ``L`` on the readout of the LAST output of a sequence, the norm of
``\partial L / \partial carry_t`` against the lag ``k = T - 1 - t`` shows whether a
cell's gradient vanishes or explodes over long dependencies (Bengio, Simard & Frasconi
1994; Pascanu, Mikolov & Bengio 2013). This is what ``jaxseq gradflow`` prints and plots
and what ``jaxseq.reproduce`` tabulates::

    from jaxseq import experiments, registry
    profiles = experiments.lag_profiles(
        "adding", {"lstm": registry.make_cell("lstm", 64)}, length=200)
    profiles["init"]["lstm"][k]        # |dL/dcarry_{T-1-k}|, float64, k = 0 .. T-1

The norms are computed in float64 (params, inputs and readout cast up): a vanishing
gradient's norm falls below float32's range (the squares underflow near 1e-19) within tens
of steps.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks, gradflow, losses
from jaxseq import tasks as tasks_lib
from jaxseq import train as train_lib

LAGS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
CSV_COLUMNS = ("cell", "phase", "lag", "norm", "relative_norm")

Profiles = dict[str, dict[str, np.ndarray]]
"""``profiles[phase][cell]``: norms indexed by lag (``[0]`` is the last step)."""


def final_step_loss(task: tasks_lib.Task | str, readout: Any, targets: jax.Array
                    ) -> Callable[[jax.Array], jax.Array]:
  """``loss_fn(ys)``: the task's loss of the readout of the LAST output ``ys[:, -1]``.

  ``readout`` holds the params of ``train.make_model``'s ``jaxseq.nn.Dense`` readout.
  ``mse`` tasks: ``mean((Dense(y_{T-1}) - target)^2)``; ``xent`` tasks: the softmax
  cross-entropy of ``Dense(y_{T-1})`` against the last label (or the sequence's label).
  """
  task = train_lib.resolve_task(task)
  dense = train_lib.readout_layer(task)

  def loss_fn(ys):
    pred, _ = dense.apply(readout, {}, ys[:, -1])
    if task.metric == "mse":
      return jnp.mean(jnp.square(pred - jnp.reshape(targets, pred.shape)))
    labels = targets[:, -1] if targets.ndim == 2 else targets
    return losses.softmax_cross_entropy(pred[:, None], labels[:, None])
  return loss_fn


def _wide(tree: Any) -> Any:
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                      if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def gradient_norms(task: tasks_lib.Task | str, cell: Any, params: Any, readout: Any,
                   xs: jax.Array, targets: jax.Array) -> np.ndarray:
  """``|dL/dcarry_t|`` for ``t = 0..T-1`` of ``final_step_loss``, in float64.

  Args:
    task: a ``Task`` or its name; gives the loss.
    cell: a ``Cell`` or a sequence ``Layer``.
    params: its params (``train``'s ``params["rnn"]``).
    readout: the readout's params (``params["readout"]``).
    xs: ``(B, T, D)`` inputs.
    targets: the task's targets for ``xs``.

  Returns:
    A NumPy float64 array of shape ``(T,)``, indexed by step (not lag).
  """
  with jax.enable_x64(True):
    norms = gradflow.grad_norms(cell, _wide(params), _wide(xs),
                                final_step_loss(task, _wide(readout), _wide(targets)))
    return np.asarray(norms, dtype=np.float64)


def evaluation_size(task: tasks_lib.Task | str, length: int) -> int:
  """Sequences in the task's evaluation set at ``length`` (shapes only: nothing runs)."""
  task = train_lib.resolve_task(task)
  shape = jax.eval_shape(lambda key: task.evaluation(key, length)[0], jax.random.PRNGKey(0))
  return int(shape.shape[0])


def measurement_batch(task: tasks_lib.Task | str, length: int, batch_size: int
                      ) -> tuple[jax.Array, jax.Array]:
  """The first ``batch_size`` sequences of the task's evaluation set (the same for every
  seed), on which ``lag_profiles`` measures. ``batch_size`` may not exceed the set."""
  task = train_lib.resolve_task(task)
  batch_size = _checks.positive_int("batch_size", batch_size)
  available = evaluation_size(task, length)
  if batch_size > available:
    _checks.fail("batch_size", f"at most {available} (the sequences in {task.name}'s "
                 "evaluation set)", batch_size)
  xs, targets = train_lib.evaluation_set(task, length)
  return xs[:batch_size], targets[:batch_size]


def lag_profiles(task: tasks_lib.Task | str, cells: Mapping[str, Any], *, length: int,
                 batch_size: int = 16, seed: int = 0, train_steps: int = 0,
                 learning_rate: float = 1e-3,
                 log: Callable[[str], None] | None = None) -> Profiles:
  """Gradient norm against lag for each cell, at initialisation and after training.

  Each cell gets ``train.make_model(task, cell)``'s params for ``seed`` (the network
  ``train`` starts from), and, with ``train_steps``, the params after that many steps of
  ``train.train(..., batch_size=batch_size, learning_rate=learning_rate, seed=seed)``.
  The norms are measured on ``measurement_batch(task, length, batch_size)``.

  Args:
    task: a ``Task`` or its name.
    cells: ``{label: Cell or sequence Layer}``.
    length: the task's length (the delay for ``"copy"``).
    batch_size: sequences measured, and the training batch size.
    seed: the initialisation (and training) seed.
    train_steps: ``0`` for the ``"init"`` phase only, else also ``"trained"``.
    learning_rate: Adam's learning rate when training.
    log: called with a line of text before and after each training run.

  Returns:
    ``profiles[phase][label]``: a float64 array of norms indexed by lag ``k`` (index 0 is
    the last step ``T - 1``).
  """
  task = train_lib.resolve_task(task)
  if not isinstance(cells, Mapping) or not cells:
    _checks.fail("cells", "a non-empty mapping {label: cell}", type(cells).__name__,
                 TypeError)
  train_steps = _checks.nonnegative_int("train_steps", train_steps)
  xs, targets = measurement_batch(task, length, batch_size)
  key_init = jax.random.split(jax.random.PRNGKey(seed))[0]
  profiles: Profiles = {}
  for label, cell in cells.items():
    phases = [("init", train_lib.make_model(task, cell).init(key_init))]
    if train_steps:
      if log is not None:
        log(f"training {label} for {train_steps} steps on {task.name} ...")
      result = train_lib.train(task, cell, length=length, steps=train_steps,
                               batch_size=batch_size, learning_rate=learning_rate,
                               seed=seed, progress=False)
      if log is not None:
        log(f"  {train_lib.result_line(task, result)}")
      phases.append(("trained", result.params))
    for phase, params in phases:
      norms = gradient_norms(task, cell, params["rnn"], params["readout"], xs, targets)
      profiles.setdefault(phase, {})[label] = norms[::-1].copy()
  return profiles


def relative(norms_by_lag: np.ndarray) -> np.ndarray:
  """Norms divided by the norm at lag 0 (NaN where that is 0)."""
  norms_by_lag = np.asarray(norms_by_lag, np.float64)
  if norms_by_lag[0] > 0:
    return norms_by_lag / norms_by_lag[0]
  return np.full_like(norms_by_lag, np.nan)


def lag_table(norms_by_lag: Any, lags: Sequence[int] = LAGS) -> list[tuple[int, float, float]]:
  """``(lag, norm, norm / norm at lag 0)`` at the given lags that fit in the sequence;
  the largest lag, ``T - 1``, is always included."""
  norms = np.asarray(norms_by_lag, dtype=np.float64)
  last = norms.shape[0] - 1
  chosen = sorted({k for k in lags if k <= last} | {last})
  rel = relative(norms)
  return [(k, float(norms[k]), float(rel[k])) for k in chosen]


def format_table(rows: Sequence[Sequence[str]]) -> str:
  """Right-aligned text columns with a rule under the header row."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def format_profiles(profiles: Profiles, lags: Sequence[int] = LAGS) -> str:
  """One text table per phase: relative norm by lag (rows) and cell (columns)."""
  blocks = []
  for phase, by_cell in profiles.items():
    columns = {label: lag_table(norms, lags) for label, norms in by_cell.items()}
    shown = [k for k, _, _ in next(iter(columns.values()))]
    rows = [["lag"] + list(by_cell)]
    rows += [[str(k)] + [f"{columns[label][i][2]:.3e}" for label in by_cell]
             for i, k in enumerate(shown)]
    blocks.append(f"[{phase}]\n{format_table(rows)}")
  return "\n\n".join(blocks)


def records(profiles: Profiles) -> list[dict]:
  """One dict per (cell, phase, lag) with ``CSV_COLUMNS`` keys."""
  rows = []
  for phase, by_cell in profiles.items():
    for label, norms in by_cell.items():
      rel = relative(norms)
      rows += [dict(cell=label, phase=phase, lag=k, norm=float(norms[k]),
                    relative_norm=float(rel[k])) for k in range(norms.shape[0])]
  return rows


def write_csv(path: str | os.PathLike, profiles: Profiles) -> None:
  """Writes ``records(profiles)`` as CSV with columns ``CSV_COLUMNS``."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in records(profiles):
      writer.writerow({**r, "norm": f"{r['norm']:.6e}",
                       "relative_norm": f"{r['relative_norm']:.6e}"})


def decay_rate(norms_by_lag: Any) -> float:
  """The geometric decay per step: ``exp`` of the least-squares slope of
  ``log |grad|`` against the lag, over the lags where the norm is positive."""
  rel = relative(norms_by_lag)
  lags = np.arange(rel.shape[0])
  good = rel > 0
  if good.sum() < 2:
    return float("nan")
  return float(np.exp(np.polyfit(lags[good], np.log(rel[good]), 1)[0]))
