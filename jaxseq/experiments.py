r"""The lag-profile experiment: how the gradient of a task's loss decays with the lag,
and the edge of chaos of a random tanh RNN.

For a loss ``L`` on the readout of the LAST output of a sequence, the norm of
``\partial L / \partial carry_t`` against the lag ``k = T - 1 - t`` shows whether a
cell's gradient vanishes or explodes over long dependencies (Bengio, Simard & Frasconi
1994; Pascanu, Mikolov & Bengio 2013). This is what ``jaxseq gradflow`` prints and plots
and what ``jaxseq.reproduce`` tabulates::

    from jaxseq import experiments, registry
    profiles = experiments.lag_profiles(
        "adding", {"lstm": registry.make_cell("lstm", 64)}, length=2000)
    profiles["init"]["lstm"][k]        # log |dL/dcarry_{T-1-k}|, k = 0 .. T-1
    print(experiments.format_profiles(profiles))   # 1.234e-412 and below, from the logs

The profiles hold natural-log norms from ``gradflow.grad_norms(..., log=True)``, computed
in the params' dtype (float32) without underflow at any lag: a vanishing gradient's norm
leaves float32's range within a hundred steps and float64's within a few thousand, its
log-norm never does. Tables print the norms from the logs as decimal strings
(``3.2e-412``), plots draw them as ``log10``.

``edge_of_chaos`` measures the largest Lyapunov exponent of ``h_t = tanh(W h_{t-1})``,
``W_{ij} \sim N(0, g^2/N)``, against the gain ``g`` beside the mean-field prediction
(``mean_field_lyapunov``), and the slope of the log gradient norm against the lag on the
same trajectories.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks, gradflow, losses
from jaxseq import tasks as tasks_lib
from jaxseq import train as train_lib
from jaxseq.cells.simple_rnn import simple_rnn

LAGS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
CSV_COLUMNS = ("cell", "phase", "step", "lag", "norm", "relative_norm", "log_norm")

Profiles = dict[str, dict[str, np.ndarray]]
"""``profiles[phase][cell]``: natural-log norms indexed by lag (``[0]`` is the last step).
Phases are ``"init"`` and ``"step N"`` (after ``N`` training steps)."""


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


def gradient_log_norms(task: tasks_lib.Task | str, cell: Any, params: Any, readout: Any,
                       xs: jax.Array, targets: jax.Array) -> np.ndarray:
  """``log |dL/dcarry_t|`` for ``t = 0..T-1`` of ``final_step_loss``, by
  ``gradflow.grad_norms(..., log=True)`` in the params' dtype: finite at every step the
  loss depends on, however small the norm (no underflow).

  Args:
    task: a ``Task`` or its name; gives the loss.
    cell: a ``Cell`` or a sequence ``Layer``.
    params: its params (``train``'s ``params["rnn"]``).
    readout: the readout's params (``params["readout"]``).
    xs: ``(B, T, D)`` inputs.
    targets: the task's targets for ``xs``.

  Returns:
    A NumPy float64 array of natural-log norms, shape ``(T,)``, indexed by step (not lag).
  """
  logs = gradflow.grad_norms(cell, params, xs, final_step_loss(task, readout, targets),
                             log=True)
  return np.asarray(logs, dtype=np.float64)


def gradient_norms(task: tasks_lib.Task | str, cell: Any, params: Any, readout: Any,
                   xs: jax.Array, targets: jax.Array) -> np.ndarray:
  """``exp(gradient_log_norms(...))`` in float64: 0 where the norm is below float64's
  range (~1e-308); use ``gradient_log_norms`` for long lags."""
  return np.exp(gradient_log_norms(task, cell, params, readout, xs, targets))


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


def snapshot_steps(train_steps: int, snapshots: int) -> tuple[int, ...]:
  """``snapshots`` training steps evenly spaced up to ``train_steps``:
  ``round(i * train_steps / snapshots)`` for ``i = 1..snapshots``, repeats dropped
  (fewer when ``snapshots > train_steps``). ``snapshot_steps(200, 4) == (50, 100, 150,
  200)``."""
  train_steps = _checks.positive_int("train_steps", train_steps)
  snapshots = _checks.positive_int("snapshots", snapshots)
  return tuple(sorted({max(1, round(i * train_steps / snapshots))
                       for i in range(1, snapshots + 1)}))


def _training_steps(train_steps: Any) -> tuple[int, ...]:
  if isinstance(train_steps, (int, np.integer)) and not isinstance(train_steps, bool):
    steps = _checks.nonnegative_int("train_steps", train_steps)
    return (steps,) if steps else ()
  if not isinstance(train_steps, Sequence) or isinstance(train_steps, str):
    _checks.fail("train_steps", "an int >= 0 or a sequence of positive ints",
                 repr(train_steps), TypeError)
  return tuple(sorted({_checks.positive_int("train_steps", s) for s in train_steps}))


def phase_step(phase: str) -> int:
  """The training step of a phase name: 0 for ``"init"``, ``N`` for ``"step N"``."""
  if phase == "init":
    return 0
  if isinstance(phase, str) and phase.startswith("step ") and phase[5:].isdigit():
    return int(phase[5:])
  _checks.fail("phase", "'init' or 'step N'", repr(phase))


def lag_profiles(task: tasks_lib.Task | str, cells: Mapping[str, Any], *, length: int,
                 batch_size: int = 16, seed: int = 0,
                 train_steps: int | Sequence[int] = 0, learning_rate: float = 1e-3,
                 log: Callable[[str], None] | None = None) -> Profiles:
  """Log gradient norm against lag for each cell, at initialisation and during training.

  Each cell gets ``train.make_model(task, cell)``'s params for ``seed`` (the network
  ``train`` starts from), and, for each training step ``N`` asked for, the params after
  ``N`` steps of ``train.train(..., batch_size=batch_size, learning_rate=learning_rate,
  seed=seed)``. Each ``N`` is its own run from the same seed; ``train`` is deterministic,
  so the params after ``N`` steps are those of step ``N`` of the longest run (training
  costs the sum of the steps). The norms are measured on
  ``measurement_batch(task, length, batch_size)`` with ``gradient_log_norms``.

  Args:
    task: a ``Task`` or its name.
    cells: ``{label: Cell or sequence Layer}``.
    length: the task's length (the delay for ``"copy"``).
    batch_size: sequences measured, and the training batch size.
    seed: the initialisation (and training) seed.
    train_steps: ``0`` for the ``"init"`` phase only; an int ``N`` adds ``"step N"``; a
      sequence of positive ints (e.g. ``snapshot_steps(N, 4)``) adds one phase per step.
    learning_rate: Adam's learning rate when training.
    log: called with a line of text before and after each training run.

  Returns:
    ``profiles[phase][label]``: a float64 array of natural-log norms indexed by lag ``k``
    (index 0 is the last step ``T - 1``); phases ``"init"``, then ``"step N"`` in
    increasing ``N``.
  """
  task = train_lib.resolve_task(task)
  if not isinstance(cells, Mapping) or not cells:
    _checks.fail("cells", "a non-empty mapping {label: cell}", type(cells).__name__,
                 TypeError)
  steps = _training_steps(train_steps)
  xs, targets = measurement_batch(task, length, batch_size)
  key_init = jax.random.split(jax.random.PRNGKey(seed))[0]
  profiles: Profiles = {"init": {}}
  profiles.update({f"step {n}": {} for n in steps})
  for label, cell in cells.items():
    phases = [("init", train_lib.make_model(task, cell).init(key_init))]
    for n in steps:
      if log is not None:
        log(f"training {label} for {n} steps on {task.name} ...")
      result = train_lib.train(task, cell, length=length, steps=n, batch_size=batch_size,
                               learning_rate=learning_rate, eval_every=n, seed=seed,
                               progress=False)
      if log is not None:
        log(f"  {train_lib.result_line(task, result)}")
      phases.append((f"step {n}", result.params))
    for phase, params in phases:
      logs = gradient_log_norms(task, cell, params["rnn"], params["readout"], xs, targets)
      profiles[phase][label] = logs[::-1].copy()
  return profiles


def relative_log(log_norms_by_lag: Any) -> np.ndarray:
  """Log-norms minus the log-norm at lag 0 (the log of the norm relative to lag 0); NaN
  everywhere when that one is not finite."""
  logs = np.asarray(log_norms_by_lag, np.float64)
  if np.isfinite(logs[0]):
    with np.errstate(invalid="ignore"):
      return logs - logs[0]
  return np.full_like(logs, np.nan)


def format_log_norm(log_norm: float, digits: int = 3) -> str:
  """The number ``exp(log_norm)`` in scientific notation, from its log, so beyond float64's
  range too: ``format_log_norm(-1000.0) == "5.076e-435"``; ``"0"`` for ``-inf``."""
  log_norm = float(log_norm)
  if math.isnan(log_norm):
    return "nan"
  if math.isinf(log_norm):
    return "inf" if log_norm > 0 else "0"
  log10 = log_norm / math.log(10.0)
  exponent = math.floor(log10)
  mantissa = f"{10.0 ** (log10 - exponent):.{digits}f}"
  if float(mantissa) >= 10.0:   # 9.9996 rounds up to 10.000
    exponent += 1
    mantissa = f"{1.0:.{digits}f}"
  return f"{mantissa}e{exponent:+03d}"


def lag_table(log_norms_by_lag: Any, lags: Sequence[int] = LAGS
              ) -> list[tuple[int, float, float]]:
  """``(lag, log-norm, log-norm relative to lag 0)`` at the given lags that fit in the
  sequence; the largest lag, ``T - 1``, is always included."""
  logs = np.asarray(log_norms_by_lag, dtype=np.float64)
  last = logs.shape[0] - 1
  chosen = sorted({k for k in lags if k <= last} | {last})
  rel = relative_log(logs)
  return [(k, float(logs[k]), float(rel[k])) for k in chosen]


def format_table(rows: Sequence[Sequence[str]]) -> str:
  """Right-aligned text columns with a rule under the header row."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def format_profiles(profiles: Profiles, lags: Sequence[int] = LAGS) -> str:
  """One text table per phase: the norm relative to lag 0, by lag (rows) and cell
  (columns), printed from the log-norms (``format_log_norm``), so ``1.2e-412`` shows."""
  blocks = []
  for phase, by_cell in profiles.items():
    columns = {label: lag_table(logs, lags) for label, logs in by_cell.items()}
    shown = [k for k, _, _ in next(iter(columns.values()))]
    rows = [["lag"] + list(by_cell)]
    rows += [[str(k)] + [format_log_norm(columns[label][i][2]) for label in by_cell]
             for i, k in enumerate(shown)]
    blocks.append(f"[{phase}]\n{format_table(rows)}")
  return "\n\n".join(blocks)


def records(profiles: Profiles) -> list[dict]:
  """One dict per (cell, phase, lag) with ``CSV_COLUMNS`` keys: ``log_norm`` (natural
  log), ``norm`` and ``relative_norm`` (to lag 0) as floats, 0 below float64's range."""
  rows = []
  for phase, by_cell in profiles.items():
    step = phase_step(phase)
    for label, logs in by_cell.items():
      logs = np.asarray(logs, np.float64)
      rel = relative_log(logs)
      with np.errstate(over="ignore", under="ignore"):
        norms, rel_norms = np.exp(logs), np.exp(rel)
      rows += [dict(cell=label, phase=phase, step=step, lag=k, norm=float(norms[k]),
                    relative_norm=float(rel_norms[k]), log_norm=float(logs[k]))
               for k in range(logs.shape[0])]
  return rows


def write_csv(path: str | os.PathLike, profiles: Profiles) -> None:
  """Writes ``records(profiles)`` as CSV with columns ``CSV_COLUMNS``. ``norm`` and
  ``relative_norm`` are written from the logs (``format_log_norm``, 7 digits): a float
  parser reads them as the float64 value (0 below its range), the text keeps the exponent
  (``3.162278e-412``); ``log_norm`` is the natural log, exact at any size."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for phase, by_cell in profiles.items():
      step = phase_step(phase)
      for label, logs in by_cell.items():
        logs = np.asarray(logs, np.float64)
        rel = relative_log(logs)
        for k in range(logs.shape[0]):
          writer.writerow(dict(cell=label, phase=phase, step=step, lag=k,
                               norm=format_log_norm(logs[k], 6),
                               relative_norm=format_log_norm(rel[k], 6),
                               log_norm=f"{logs[k]:.6f}"))


def log_slope(log_norms_by_lag: Any, first: int = 0, last: int | None = None) -> float:
  """The least-squares slope of the log-norm against the lag over lags ``first..last``
  (``last`` defaults to ``T - 1``) where it is finite: the log of the per-step growth
  factor, ``< 0`` for a vanishing gradient. For a loss at the last step it estimates the
  largest Lyapunov exponent along the trajectory (``gradflow.lyapunov``)."""
  logs = np.asarray(log_norms_by_lag, np.float64)
  last = logs.shape[0] - 1 if last is None else last
  lags = np.arange(logs.shape[0])
  good = np.isfinite(logs) & (lags >= first) & (lags <= last)
  if good.sum() < 2:
    return float("nan")
  return float(np.polyfit(lags[good], logs[good], 1)[0])


def decay_rate(log_norms_by_lag: Any) -> float:
  """The geometric decay per step, ``exp(log_slope(...))`` over all lags."""
  return float(np.exp(log_slope(log_norms_by_lag)))


# ----------------------------------------------------------------------------- edge of chaos


def _gauss_expectation(fn: Callable[[np.ndarray], np.ndarray]) -> float:
  """``E[fn(z)]``, ``z ~ N(0, 1)``, by the trapezoid rule on ``[-12, 12]`` (step 0.01):
  for smooth ``fn`` its error falls exponentially with the step (1e-14 for the integrands
  here, where Gauss-Hermite with 101 nodes is off by 1e-4 once ``tanh`` saturates)."""
  z = np.linspace(-12.0, 12.0, 2401)
  weights = np.exp(-0.5 * z * z) * (z[1] - z[0]) / math.sqrt(2 * math.pi)
  return float(np.sum(weights * fn(z)))


def mean_field_variance(gain: float) -> float:
  r"""The mean-field variance ``\Delta`` of the pre-activations ``a = W h`` of
  ``h_t = tanh(W h_{t-1})``, ``W_{ij} \sim N(0, g^2/N)``, ``N \to \infty``: the stable
  fixed point of ``\Delta = g^2 E[\tanh^2(\sqrt{\Delta} z)]``, ``z \sim N(0, 1)``; 0 for
  ``g \le 1`` (the activity decays to the fixed point 0), positive above."""
  gain = _checks.positive_float("gain", gain)
  if gain <= 1.0:
    return 0.0
  g2 = gain * gain
  low, high = 0.0, g2   # g^2 E[tanh^2] - Delta is > 0 just above 0 and < 0 at g^2
  for _ in range(200):
    mid = 0.5 * (low + high)
    if g2 * _gauss_expectation(lambda z: np.tanh(math.sqrt(mid) * z) ** 2) > mid:
      low = mid
    else:
      high = mid
  return 0.5 * (low + high)


def mean_field_lyapunov(gain: float) -> float:
  r"""The mean-field largest Lyapunov exponent of ``h_t = tanh(W h_{t-1})``,
  ``W_{ij} \sim N(0, g^2/N)``, zero input, ``N \to \infty`` (per step, nats):

      \lambda = \tfrac12 \log\big(g^2 E[\tanh'(\sqrt{\Delta} z)^2]\big),

  ``\Delta = mean_field_variance(g)``: a perturbation ``\delta h`` grows by
  ``\|D_t W \delta h\|^2 \approx g^2 E[\tanh'(a)^2] \|\delta h\|^2`` per step. It is
  ``\log g < 0`` for ``g < 1`` and positive for ``g > 1``: the transition to chaos at
  ``g = 1`` (Sompolinsky, Crisanti & Sommers 1988 in continuous time; Molgedey,
  Schuchhardt & Schuster 1992 for this discrete-time map).
  """
  gain = _checks.positive_float("gain", gain)
  delta = mean_field_variance(gain)
  if delta == 0.0:   # the fixed point 0, where tanh' = 1
    return math.log(gain)
  slope2 = _gauss_expectation(lambda z: (1.0 - np.tanh(math.sqrt(delta) * z) ** 2) ** 2)
  return 0.5 * math.log(gain * gain * slope2)


class EdgeOfChaos(NamedTuple):
  """``edge_of_chaos``'s measurements; ``D`` draws of ``W``, ``G`` gains.

  Attributes:
    gains: ``(G,)`` the gains ``g``.
    lyapunov: ``(D, G)`` the largest Lyapunov exponent per draw and gain.
    slope: ``(D, G)`` the slope of ``log |dL/dh_t|`` per lag (NaN without gradients).
    spectral_radius: ``(D,)`` ``\rho(W_0)`` of each draw's ``W_0 = W / g``: at finite
      ``N`` the zero fixed point is stable for ``g < 1 / \rho(W_0)``, where the largest
      exponent is ``\log(g \rho(W_0))`` (``\rho \to 1`` as ``N \to \infty``).
    mean_field: ``(G,)`` ``mean_field_lyapunov(g)``.
  """
  gains: np.ndarray
  lyapunov: np.ndarray
  slope: np.ndarray
  spectral_radius: np.ndarray
  mean_field: np.ndarray


def edge_of_chaos(gains: Sequence[float], *, hidden_size: int = 256, length: int = 2000,
                  warmup: int = 500, draws: int = 1, seed: int = 0,
                  gradients: bool = True, fit_from: int = 10) -> EdgeOfChaos:
  r"""The largest Lyapunov exponent of a random tanh RNN against its gain, and the decay
  rate of its gradient norm.

  The network is ``h_t = \tanh(W h_{t-1})`` (``jaxseq.simple_rnn`` without bias, input
  weights 0 and zero input), ``W = g W_0``, ``(W_0)_{ij} \sim N(0, 1/N)``, the same
  ``W_0`` for every gain of a draw (quenched disorder), started from
  ``h_0 \sim N(0, I)``. Along that trajectory of ``length`` steps,
  ``gradflow.lyapunov(..., k=1, warmup=warmup)`` gives the largest exponent
  ``\lambda_1``, and ``gradflow.grad_norms(..., log=True)`` the log-norms of
  ``\partial L / \partial h_t`` for a random unit readout ``L = v \cdot h_{T-1}``; their
  least-squares slope against the lag over lags ``fit_from .. T-1-warmup`` (the steps the
  exponent averages over) is the gradient's growth rate, which the backward product of
  the same Jacobians makes equal to ``\lambda_1``: ``< 0``, vanishing gradients, for
  ``g < 1``; ``> 0``, exploding ones, in the chaotic regime.

  Args:
    gains: the gains ``g > 0``.
    hidden_size: ``N``.
    length: steps ``T`` of each trajectory.
    warmup: steps left out of the exponent's average (``< length - fit_from - 1``).
    draws: independent draws of ``W_0`` and ``h_0``.
    seed: seeds the draws.
    gradients: also measure the gradient slopes (else NaN).
    fit_from: the first lag of the slope's fit (skips the readout's direction settling).

  Returns:
    An ``EdgeOfChaos`` record.
  """
  if isinstance(gains, (str, bytes)) or not isinstance(gains, (Sequence, np.ndarray)):
    _checks.fail("gains", "a sequence of positive gains", repr(gains), TypeError)
  gains = np.asarray([_checks.positive_float("gains", g) for g in gains], np.float64)
  if gains.size == 0:
    _checks.fail("gains", "at least one gain", "none")
  n = _checks.positive_int("hidden_size", hidden_size)
  length = _checks.positive_int("length", length)
  warmup = _checks.nonnegative_int("warmup", warmup)
  draws = _checks.positive_int("draws", draws)
  seed = _checks.nonnegative_int("seed", seed)
  gradients = _checks.boolean("gradients", gradients)
  fit_from = _checks.nonnegative_int("fit_from", fit_from)
  if warmup + fit_from + 2 > length:
    _checks.fail("warmup", f"at most length - fit_from - 2 = {length - fit_from - 2} "
                 "(the slope needs two lags after the warm-up)", repr(warmup))
  cell = simple_rnn(n, use_bias=False)
  xs = jnp.zeros((length, 1), jnp.float32)
  lyap = np.full((draws, gains.size), np.nan)
  slope = np.full((draws, gains.size), np.nan)
  radius = np.zeros(draws)
  for d in range(draws):
    key_w, key_h, key_v = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), d), 3)
    w0 = jax.random.normal(key_w, (n, n), jnp.float32) / math.sqrt(n)
    h0 = jax.random.normal(key_h, (n,), jnp.float32)
    readout = jax.random.normal(key_v, (n,), jnp.float32)
    readout = readout / jnp.linalg.norm(readout)
    radius[d] = np.max(np.abs(np.linalg.eigvals(np.asarray(w0, np.float64))))
    for i, gain in enumerate(gains):
      params = {"w_ih": jnp.zeros((1, n), jnp.float32), "w_hh": jnp.float32(gain) * w0}
      lyap[d, i] = float(gradflow.lyapunov(cell, params, xs, k=1, warmup=warmup,
                                           carry=h0)[0])
      if gradients:
        logs = gradflow.grad_norms(cell, params, xs[None],
                                   lambda ys: jnp.sum(ys[:, -1] @ readout),
                                   carry=h0[None], log=True)
        slope[d, i] = log_slope(np.asarray(logs, np.float64)[::-1], fit_from,
                                length - 1 - warmup)
  mean_field = np.asarray([mean_field_lyapunov(g) for g in gains])
  return EdgeOfChaos(gains, lyap, slope, radius, mean_field)


def crossing(gains: Any, values: Any, level: float = 0.0) -> float:
  """The first gain where ``values`` rises above ``level`` for good (after the last gain
  at or below it), interpolated linearly between the neighbouring gains; NaN if the
  values end at or below ``level``, the first gain if they start above it."""
  gains = np.asarray(gains, np.float64)
  values = np.asarray(values, np.float64)
  below = np.nonzero(~(values > level))[0]
  if below.size == 0:
    return float(gains[0])
  i = int(below[-1])
  if i == gains.size - 1:
    return float("nan")
  g0, g1, v0, v1 = gains[i], gains[i + 1], values[i], values[i + 1]
  return float(g0 + (level - v0) * (g1 - g0) / (v1 - v0))
