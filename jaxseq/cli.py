"""The ``jaxseq`` command line: gradient flow, training on long-range tasks, Lyapunov spectra.

    jaxseq gradflow                         # |dL/dh_t| against lag, at init, to ./jaxseq-out
    jaxseq gradflow --cells lstm,gru --length 500 --init orthogonal --train-steps 200
    jaxseq train adding --cell lstm --length 100 --steps 2000
    jaxseq lyapunov --cell gru --hidden 64 --k 10
    jaxseq reproduce --quick                # benchmarks/reproduce.py, from a source checkout

Bad arguments exit with status 2 and one line on stderr (argparse's convention). Set
``JAXSEQ_TRACEBACK=1`` to see the traceback of an error raised by the library instead.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

CELLS = ("simple_rnn", "lstm", "gru", "mgu")
INITS = ("default", "orthogonal", "identity", "glorot")
ACTIVATIONS = ("tanh", "relu", "linear")
TASK_NAMES = ("adding", "copy", "temporal_order", "sequential_digits", "permuted_digits")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")
LAGS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
CSV_COLUMNS = ("cell", "phase", "lag", "norm", "relative_norm")


class UsageError(ValueError):
  """A bad command line, reported as one line on stderr with exit status 2."""


class _Parser(argparse.ArgumentParser):
  """argparse, but a bad command line gives one line on stderr (no usage block)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- cells


def make_cell(name: str, hidden_size: int, init: str = "default", *,
              activation: str = "tanh", forget_bias: float | None = None,
              chrono_t_max: float | None = None):
  """Builds a cell by name with a named initialisation scheme.

  Schemes (recurrent kernels are initialised per gate block):
    * ``default``: PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
    * ``orthogonal``: orthogonal recurrent kernel (Saxe et al. 2014), Glorot-uniform input
      kernel, zero bias (Keras' recurrent defaults).
    * ``identity``: identity recurrent kernel, N(0, 0.001^2) input kernel, zero bias (Le et
      al. 2015); with ``activation="relu"`` on ``simple_rnn`` this is the IRNN.
    * ``glorot``: Glorot-uniform input and recurrent kernels, zero bias.

  Args:
    name: one of ``CELLS``.
    hidden_size: ``H``.
    init: one of ``INITS``.
    activation: ``simple_rnn``'s nonlinearity, one of ``ACTIVATIONS``.
    forget_bias: ``lstm``'s constant forget-gate bias (Gers et al. 2000).
    chrono_t_max: ``lstm``'s chrono initialisation (Tallec & Ollivier 2018).

  Returns:
    A ``jaxseq.Cell``.
  """
  import jax
  import jax.numpy as jnp
  from jaxseq import cells, initializers

  if name not in CELLS:
    raise UsageError(f"cell: expected one of {', '.join(CELLS)}, got {name!r}")
  if init not in INITS:
    raise UsageError(f"init: expected one of {', '.join(INITS)}, got {init!r}")
  schemes = {
      "default": {},
      "orthogonal": dict(kernel_init=initializers.glorot_uniform(),
                         recurrent_init=initializers.orthogonal(),
                         bias_init=initializers.zeros),
      "identity": dict(kernel_init=initializers.normal(0.001),
                       recurrent_init=initializers.identity(),
                       bias_init=initializers.zeros),
      "glorot": dict(kernel_init=initializers.glorot_uniform(),
                     recurrent_init=initializers.glorot_uniform(),
                     bias_init=initializers.zeros),
  }
  options: dict[str, Any] = dict(schemes[init])
  if name == "simple_rnn":
    options["activation"] = {"tanh": jnp.tanh, "relu": jax.nn.relu,
                             "linear": lambda x: x}[activation]
  if name == "lstm":
    options.update(forget_bias=forget_bias, chrono_t_max=chrono_t_max)
  return getattr(cells, name)(hidden_size, **options)


def sequence_length(task, length: int) -> int:
  """Steps in the task's sequences for ``length`` (``length + 20`` for copy, 64 for digits)."""
  import jax
  shape = jax.eval_shape(lambda key: task.sample(key, 1, length)[0], jax.random.PRNGKey(0))
  return shape.shape[1]


def _cell_from_args(args, name: str, length: int):
  """The cell the options describe; ``length`` is the number of steps (chrono's T_max)."""
  chrono = None
  if getattr(args, "chrono", None) is not None:
    chrono = float(length) if args.chrono == "length" else args.chrono
  return make_cell(name, args.hidden, args.init, activation=args.activation,
                   forget_bias=args.forget_bias, chrono_t_max=chrono)


def _check_cell_options(args, names: Sequence[str]) -> None:
  """Cell-specific options must apply to at least one of the chosen cells."""
  if args.activation != "tanh" and "simple_rnn" not in names:
    raise UsageError(f"--activation: applies to simple_rnn only, got cells {', '.join(names)}")
  for option, value in (("--forget-bias", args.forget_bias), ("--chrono", args.chrono)):
    if value is not None and "lstm" not in names:
      raise UsageError(f"{option}: applies to lstm only, got cells {', '.join(names)}")


# ----------------------------------------------------------------------------- argument types


def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str):
  """An argparse type: ``convert`` the text, then insist on ``accept`` (else "expected ...")."""
  def parse(text: str):
    try:
      value = convert(text)
    except ValueError:
      value = None
    if value is None or not accept(value):
      raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value
  return parse


_positive_int = _number(int, lambda v: v > 0, "a positive int")
_nonnegative_int = _number(int, lambda v: v >= 0, "an int >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")


def _chrono(text: str):
  if text == "length":
    return text
  value = _positive_float(text)
  if not value > 2:
    raise argparse.ArgumentTypeError(f"expected a number > 2 or 'length', got {text!r}")
  return value


def _name_list(text: str, choices: Sequence[str], option: str) -> list[str]:
  names = [name.strip() for name in text.split(",") if name.strip()]
  if not names:
    raise UsageError(f"{option}: expected a comma-separated list of {', '.join(choices)}, "
                     f"got {text!r}")
  for name in names:
    if name not in choices:
      raise UsageError(f"{option}: expected names from {', '.join(choices)}, got {name!r}")
  return list(dict.fromkeys(names))  # drop repeats, keep order


def _task(name: str):
  from jaxseq import tasks
  if name not in tasks.TASKS:
    raise UsageError(f"task: expected one of {', '.join(tasks.TASKS)}, got {name!r}")
  return tasks.TASKS[name]


# ----------------------------------------------------------------------------- parser


def _add_cell_options(parser: argparse.ArgumentParser, hidden: int) -> None:
  parser.add_argument("--hidden", type=_positive_int, default=hidden, metavar="H",
                      help=f"hidden size (default {hidden})")
  parser.add_argument("--init", choices=INITS, default="default",
                      help="initialisation scheme (default: PyTorch's U(-1/sqrt(H), 1/sqrt(H)))")
  parser.add_argument("--activation", choices=ACTIVATIONS, default="tanh",
                      help="simple_rnn's activation; relu with --init identity is the IRNN")
  parser.add_argument("--forget-bias", type=float, default=None, metavar="B",
                      help="lstm: constant forget-gate bias (e.g. 1.0)")
  parser.add_argument("--chrono", type=_chrono, default=None, nargs="?", const="length",
                      metavar="T_MAX",
                      help="lstm: chrono initialisation with T_MAX (default: the sequence length)")
  parser.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="jaxseq", description="Gradient-flow diagnostics and long-range benchmarks for "
      "recurrent cells, as pure JAX functions.")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND")
  commands.required = True

  p = commands.add_parser(
      "gradflow", help="gradient norm against lag, at init and after training",
      description="For each cell, the norm of dL/dcarry_t of a loss at the final step T-1, "
      "against the lag k = T-1-t, at initialisation and (with --train-steps) after training "
      "on the task. Prints a table and writes gradflow.csv and gradflow.png to --out.")
  p.add_argument("--cells", default="simple_rnn,lstm,gru", metavar="LIST",
                 help=f"comma-separated cells from {', '.join(CELLS)} "
                 "(default simple_rnn,lstm,gru)")
  p.add_argument("--length", type=_positive_int, default=100, metavar="T",
                 help="sequence length, the delay for copy (default 100)")
  p.add_argument("--batch-size", type=_positive_int, default=16, metavar="B",
                 help="sequences in the measured batch, taken from the task's evaluation "
                 "set (at most 512), and the training batch size (default 16)")
  p.add_argument("--task", default="adding", metavar="TASK",
                 help=f"task giving inputs and loss, one of {', '.join(TASK_NAMES)} "
                 "(default adding)")
  p.add_argument("--train-steps", type=_nonnegative_int, default=0, metavar="N",
                 help="also measure after N training steps on the task (default 0: init only)")
  p.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (default 1e-3)")
  p.add_argument("--out", default="jaxseq-out", metavar="DIR",
                 help="output folder (default ./jaxseq-out)")
  _add_cell_options(p, hidden=64)
  p.set_defaults(run=_gradflow)

  p = commands.add_parser(
      "train", help="train a cell on a long-range task",
      description="Trains CELL with a linear readout on TASK and prints the final metric "
      "next to the task's baseline (the best input-ignoring predictor).")
  p.add_argument("task", metavar="TASK", help=f"one of {', '.join(TASK_NAMES)}")
  p.add_argument("--cell", default="lstm", metavar="CELL",
                 help=f"one of {', '.join(CELLS)} (default lstm)")
  p.add_argument("--length", type=_positive_int, default=100, metavar="T",
                 help="sequence length or delay of the task (default 100)")
  p.add_argument("--steps", type=_positive_int, default=1000, help="training steps (default 1000)")
  p.add_argument("--batch-size", type=_positive_int, default=32, metavar="B",
                 help="batch size (default 32)")
  p.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (default 1e-3)")
  p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(default adam)")
  p.add_argument("--clip-norm", type=_positive_float, default=1.0, metavar="C",
                 help="global gradient-norm clipping (default 1.0)")
  p.add_argument("--eval-every", type=_positive_int, default=None, metavar="N",
                 help="evaluate every N steps (default: the trainer's)")
  p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                 help="save checkpoints there (Orbax)")
  p.add_argument("--resume", action="store_true",
                 help="resume from the latest checkpoint in --checkpoint-dir")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  _add_cell_options(p, hidden=128)
  p.set_defaults(run=_train)

  p = commands.add_parser(
      "lyapunov", help="Lyapunov spectrum of a cell driven by task inputs",
      description="Estimates the k largest Lyapunov exponents of the cell's state dynamics "
      "(QR method) along inputs drawn from the task, at initialisation.")
  p.add_argument("--cell", default="lstm", metavar="CELL",
                 help=f"one of {', '.join(CELLS)} (default lstm)")
  p.add_argument("--length", type=_positive_int, default=500, metavar="T",
                 help="steps to average over (default 500)")
  p.add_argument("--k", type=_positive_int, default=None, metavar="K",
                 help="number of exponents (default: all)")
  p.add_argument("--warmup", type=_nonnegative_int, default=50, metavar="W",
                 help="steps discarded before averaging (default 50)")
  p.add_argument("--task", default="adding", metavar="TASK",
                 help="task whose inputs drive the cell (default adding)")
  _add_cell_options(p, hidden=64)
  p.set_defaults(run=_lyapunov)

  p = commands.add_parser(
      "reproduce", help="run benchmarks/reproduce.py (published claims, CPU scale)",
      description="Runs benchmarks/reproduce.py from a source checkout; options are passed on.")
  p.add_argument("options", nargs="*", help="options for reproduce.py (see jaxseq reproduce "
                 "--help)")
  return parser


# ----------------------------------------------------------------------------- gradflow


def lag_table(norms, lags: Sequence[int] = LAGS) -> list[tuple[int, float, float]]:
  """``(lag, norm, norm / norm at lag 0)`` at the given lags that fit in the sequence.

  ``norms[t]`` is the norm at step ``t``; lag ``k = T - 1 - t``. The largest lag, ``T - 1``,
  is always included.
  """
  import numpy as np
  norms = np.asarray(norms, dtype=np.float64)
  last = norms.shape[0] - 1
  chosen = sorted({k for k in lags if k <= last} | {last})
  ref = norms[last]
  return [(k, float(norms[last - k]), float(norms[last - k] / ref) if ref > 0 else float("nan"))
          for k in chosen]


def _format_table(rows: Sequence[Sequence[str]]) -> str:
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def write_csv(path: pathlib.Path, records: Sequence[dict]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in records:
      writer.writerow({**r, "norm": f"{r['norm']:.6e}",
                       "relative_norm": f"{r['relative_norm']:.6e}"})


def plot_gradflow(path: pathlib.Path, curves: dict, title: str) -> None:
  """``curves[phase][cell] = (lags, relative norms)``; one panel per phase, log y."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  phases = list(curves)
  fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4), squeeze=False,
                           sharey=True)
  for ax, phase in zip(axes[0], phases):
    for cell, (lags, rel) in curves[phase].items():
      rel = np.asarray(rel, dtype=np.float64)
      # log axes cannot show exact zeros (underflow): clip them to the smallest positive value.
      tiny = np.finfo(np.float64).tiny
      ax.plot(lags, np.where(rel > 0, rel, tiny), label=cell)
    ax.set_yscale("log")
    ax.set_xlabel(r"lag $k = T-1-t$")
    ax.set_title(phase)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  axes[0][0].set_ylabel(r"$\|\partial L / \partial h_t\| \;/\; \|\partial L / \partial h_{T-1}\|$"
                        "  (h: the carry)")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def final_step_loss(task, readout: dict, targets) -> Callable:
  """``loss_fn(ys)``: the task's loss of the readout of the LAST output ``ys[:, -1]``.

  ``mse`` tasks: ``mean((y_{T-1} W + b - target)^2)``; ``xent`` tasks: the softmax
  cross-entropy of ``y_{T-1} W + b`` against the last label (or the sequence's label).
  """
  import jax.numpy as jnp
  import optax

  def loss_fn(ys):
    pred = ys[:, -1] @ readout["w"] + readout["b"]
    if task.metric == "mse":
      return jnp.mean(jnp.square(pred - jnp.reshape(targets, pred.shape)))
    labels = targets[:, -1] if targets.ndim == 2 else targets
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(pred, labels))
  return loss_fn


def gradient_norms(task, cell, params, readout: dict, xs, targets):
  """``|dL/dcarry_t|`` for ``t = 0..T-1`` of ``final_step_loss`` (a NumPy ``(T,)`` array).

  Computed in float64 (params, inputs and readout cast up): a vanishing gradient's norm
  falls below float32's range (the squares underflow near 1e-19) within tens of steps.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxseq import gradflow

  with jax.enable_x64(True):
    def wide(tree):
      return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                          if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)
    norms = gradflow.grad_norms(cell, wide(params), wide(xs),
                                final_step_loss(task, wide(readout), wide(targets)))
    return np.asarray(norms, dtype=np.float64)


def _gradflow(args) -> int:
  import jax
  import numpy as np
  from jaxseq import train as train_lib

  names = _name_list(args.cells, CELLS, "--cells")
  _check_cell_options(args, names)
  task = _task(args.task)
  out = pathlib.Path(args.out)

  # The batch the norms are measured on: the first sequences of the task's evaluation set.
  xs, targets = task.evaluation(jax.random.PRNGKey(train_lib.EVAL_SEED), args.length)
  xs, targets = xs[:args.batch_size], targets[:args.batch_size]
  # The same initial params as ``train`` with this seed, so both phases are one network.
  key_init = jax.random.split(jax.random.PRNGKey(args.seed))[0]
  T = xs.shape[1]
  records, curves = [], {}
  for name in names:
    cell = _cell_from_args(args, name, T)
    phases = [("init", train_lib.make_model(task, cell).init(key_init))]
    if args.train_steps:
      print(f"training {name} for {args.train_steps} steps on {task.name} ...", flush=True)
      result = train_lib.train(task, cell, length=args.length, steps=args.train_steps,
                               batch_size=args.batch_size, learning_rate=args.lr,
                               seed=args.seed, progress=False)
      print(f"  {_result_line(task, result)}", flush=True)
      phases.append(("trained", result.params))
    for phase, params in phases:
      norms = gradient_norms(task, cell, params["rnn"], params["readout"], xs, targets)
      rel = norms / norms[-1] if norms[-1] > 0 else np.full_like(norms, np.nan)
      lags = np.arange(T)  # lag k is step T-1-k
      curves.setdefault(phase, {})[name] = (lags, rel[::-1], norms[::-1])
      records += [dict(cell=name, phase=phase, lag=int(k), norm=float(n), relative_norm=float(r))
                  for k, n, r in zip(lags, norms[::-1], rel[::-1])]

  print(f"|dL/dcarry_t| of the {task.name} loss at the last step, relative to t = T-1, "
        f"against lag k = T-1-t  (T = {T}, H = {args.hidden}, init {args.init}, "
        f"batch {args.batch_size})")
  for phase, by_cell in curves.items():
    columns = {name: lag_table(norms_by_lag[::-1]) for name, (_, _, norms_by_lag)
               in by_cell.items()}
    lags_shown = [k for k, _, _ in next(iter(columns.values()))]
    rows = [["lag"] + list(by_cell)]
    rows += [[str(k)] + [f"{columns[name][i][2]:.3e}" for name in by_cell]
             for i, k in enumerate(lags_shown)]
    print(f"\n[{phase}]")
    print(_format_table(rows))

  out.mkdir(parents=True, exist_ok=True)
  csv_path, png_path = out / "gradflow.csv", out / "gradflow.png"
  write_csv(csv_path, records)
  plot_gradflow(png_path, {phase: {name: c[:2] for name, c in by_cell.items()}
                           for phase, by_cell in curves.items()},
                f"{task.name}, T = {T}, H = {args.hidden}, init {args.init}")
  print(f"\nwrote {csv_path}\nwrote {png_path}")
  return 0


# ----------------------------------------------------------------------------- train


def _train(args) -> int:
  if args.cell not in CELLS:
    raise UsageError(f"--cell: expected one of {', '.join(CELLS)}, got {args.cell!r}")
  _check_cell_options(args, [args.cell])
  if args.resume and args.checkpoint_dir is None:
    raise UsageError("--resume: expected --checkpoint-dir too, got none")
  task = _task(args.task)
  num_steps = sequence_length(task, args.length)
  cell = _cell_from_args(args, args.cell, num_steps)
  from jaxseq import train as train_lib
  options = dict(length=args.length, steps=args.steps, batch_size=args.batch_size,
                 optimizer=args.optimizer, learning_rate=args.lr, clip_norm=args.clip_norm,
                 seed=args.seed, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                 progress=not args.quiet)
  if args.eval_every is not None:
    options["eval_every"] = args.eval_every
  print(f"training {args.cell}(H={args.hidden}, init {args.init}) on {task.name}, "
        f"{_length_text(task, args.length, num_steps)}, {args.steps} training steps, "
        f"batch {args.batch_size}, "
        f"{args.optimizer} lr {args.lr:g}", flush=True)
  start = time.perf_counter()
  result = train_lib.train(task, cell, **options)
  seconds = time.perf_counter() - start
  print(f"{task.name}: {_result_line(task, result)}  [{seconds:.1f} s]")
  return 0


def _length_text(task, length: int, num_steps: int) -> str:
  if task.fixed_length is not None:
    return f"sequences of {num_steps} steps (fixed by the task)"
  if num_steps != length:
    return f"T = {length} (sequences of {num_steps} steps)"
  return f"T = {length}"


def _result_line(task, result) -> str:
  """``"mse 0.004 (baseline 0.167)"``: the final metric next to the task's baseline."""
  return f"{task.metric} {result.metric:.4g} (baseline {result.baseline:.4g})"


# ----------------------------------------------------------------------------- lyapunov


def _lyapunov(args) -> int:
  import jax
  import numpy as np
  from jaxseq import gradflow

  if args.cell not in CELLS:
    raise UsageError(f"--cell: expected one of {', '.join(CELLS)}, got {args.cell!r}")
  _check_cell_options(args, [args.cell])
  if args.warmup >= args.length:
    raise UsageError(f"--warmup: expected fewer than --length = {args.length} steps, "
                     f"got {args.warmup}")
  task = _task(args.task)
  key_data, key_init = jax.random.split(jax.random.PRNGKey(args.seed))
  xs, _ = task.sample(key_data, 1, args.length)
  xs = xs[0]
  cell = _cell_from_args(args, args.cell, xs.shape[0])
  params = cell.init(key_init, xs.shape[-1])
  exps = np.asarray(gradflow.lyapunov(cell, params, xs, k=args.k, warmup=args.warmup))
  exps = np.sort(exps)[::-1]
  print(f"Lyapunov exponents of {args.cell}(H={args.hidden}, init {args.init}) driven by "
        f"{task.name} inputs, {xs.shape[0]} steps, warm-up {args.warmup} (per step, nats):")
  print(f"  largest   {exps[0]: .4f}")
  print(f"  smallest  {exps[-1]: .4f}")
  print(f"  sum       {exps.sum(): .4f}   (of {exps.size} exponents)")
  tolerance = 1e-3  # |lambda| below this is numerically zero over a few hundred steps
  print(f"  positive  {int((exps > tolerance).sum())}   (|lambda| < {tolerance:g} counted as 0)")
  shown = ", ".join(f"{e:.4f}" for e in exps[:10])
  print(f"  spectrum  [{shown}{', ...' if exps.size > 10 else ''}]")
  if exps[0] > tolerance:
    verdict = "chaotic (largest exponent > 0): perturbations and gradients grow"
  elif exps[0] < -tolerance:
    verdict = (f"contracting: perturbations and gradients shrink by about e^({exps[0]:.3f} k) "
               f"over k steps, memory time ~ {-1 / exps[0]:.1f} steps")
  else:
    verdict = "marginal (largest exponent ~ 0): the longest memory neither fades nor grows"
  print(f"  {verdict}")
  return 0


# ----------------------------------------------------------------------------- reproduce


def _reproduce(argv: Sequence[str]) -> int:
  """Runs ``benchmarks/reproduce.py``'s ``main(argv)`` (it parses its own options)."""
  script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce.py"
  if not script.exists():
    return _usage_error("reproduce", "expected benchmarks/reproduce.py in a source checkout, "
                        f"got none at {script}")
  import runpy
  module = runpy.run_path(str(script))
  try:
    return int(module["main"](list(argv)) or 0)
  except SystemExit as e:  # its argparse: --help or a bad option
    return e.code if isinstance(e.code, int) else 2


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a bad command line)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["reproduce"]:  # reproduce.py parses its own options, --help included
    return _reproduce(argv[1:])
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # argparse has printed its one-line error or the help
    return e.code if isinstance(e.code, int) else 2
  try:
    return args.run(args)
  except UsageError as e:
    return _usage_error(args.command, str(e))
  except (ValueError, TypeError) as e:
    # The library's input checks raise these with "argument: expected X, got Y".
    if os.environ.get("JAXSEQ_TRACEBACK"):
      raise
    return _usage_error(args.command, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _usage_error(command: str, message: str) -> int:
  print(f"jaxseq {command}: error: {message}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
