"""The ``jaxseq`` command line: gradient flow, training on long-range tasks, Lyapunov spectra.

    jaxseq gradflow                         # |dL/dh_t| against lag, at init, to ./jaxseq-out
    jaxseq gradflow --cells lstm,gru --length 2000     # log-norms: 1e-900 prints and plots
    jaxseq gradflow --cells lstm,gru --length 500 --init orthogonal --train-steps 200
    jaxseq train adding --cell lstm         # the task's validated defaults: solves T <= 200
    jaxseq lyapunov --cell gru --hidden 64 --k 10
    jaxseq reproduce --quick                # published claims at CPU scale (jaxseq.reproduce)

This module only parses arguments and prints: the cells and init schemes live in
``jaxseq.registry``, the per-task training defaults and verdicts in ``jaxseq.train``, the
gradient-norm experiment in ``jaxseq.experiments``, the figures in ``jaxseq.plots`` and the
reproduction in ``jaxseq.reproduce``.

Bad arguments, and a missing optional dependency, exit with status 2 and one line on stderr
(argparse's convention). Set ``JAXSEQ_TRACEBACK=1`` to see the traceback of an error raised
by the library instead.
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

from jaxseq import registry, tasks
from jaxseq import train as train_lib

TASK_NAMES = tuple(tasks.TASKS)


class UsageError(ValueError):
  """A bad command line, reported as one line on stderr with exit status 2."""


class _Parser(argparse.ArgumentParser):
  """argparse, but a bad command line gives one line on stderr (no usage block)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0,
                          "a positive finite number")
_finite_float = _number(float, math.isfinite, "a finite number")


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


def _task(name: str) -> tasks.Task:
  if name not in tasks.TASKS:
    raise UsageError(f"task: expected one of {', '.join(tasks.TASKS)}, got {name!r}")
  return tasks.TASKS[name]


def _cell_name(option: str, name: str) -> str:
  if name not in registry.CELLS:
    raise UsageError(f"{option}: expected one of {', '.join(registry.CELLS)}, got {name!r}")
  return name


def _output_folder(option: str, text: str) -> pathlib.Path:
  """A folder to write into: not a file, nor under one (checked before any work)."""
  path = pathlib.Path(text)
  if path.exists() and not path.is_dir():
    raise UsageError(f"{option}: expected a folder, got {text!r}, which is a file")
  for parent in path.absolute().parents:
    if parent.exists():
      if not parent.is_dir():
        raise UsageError(f"{option}: expected a folder path, got {text!r}, under the file "
                         f"{str(parent)!r}")
      break
  return path


# ----------------------------------------------------------------------------- cells


def _check_cell_options(args, names: Sequence[str]) -> None:
  """Cell-specific options must apply to at least one of the chosen cells."""
  if args.activation != "tanh" and "simple_rnn" not in names:
    raise UsageError(f"--activation: applies to simple_rnn only, got cells {', '.join(names)}")
  for option, value in (("--forget-bias", args.forget_bias), ("--chrono", args.chrono)):
    if value is not None and "lstm" not in names:
      raise UsageError(f"{option}: applies to lstm only, got cells {', '.join(names)}")
  if args.forget_bias is not None and args.chrono is not None:
    raise UsageError("--forget-bias, --chrono: expected at most one of them, got both")


def _cell_options(args, name: str, num_steps: int) -> dict:
  """The init options of ``args`` that apply to cell ``name`` (``registry.make_cell``'s)."""
  chrono = None
  if args.chrono is not None:
    chrono = float(num_steps) if args.chrono == "length" else args.chrono
  return dict(init=args.init,
              activation=args.activation if name == "simple_rnn" else "tanh",
              forget_bias=args.forget_bias if name == "lstm" else None,
              chrono_t_max=chrono if name == "lstm" else None)


def _measured_cell(args, name: str, num_steps: int):
  """``(cell, description)`` for gradflow and lyapunov: the scheme ``--init`` names
  (``default`` without it), no task defaults."""
  options = _cell_options(args, name, num_steps)
  options["init"] = options["init"] or "default"
  return (registry.make_cell(name, args.hidden, **options),
          registry.describe_cell(name, args.hidden, **options))


# ----------------------------------------------------------------------------- parser


def _add_cell_options(parser: argparse.ArgumentParser, hidden: int | None) -> None:
  hidden_help = (f"hidden size (default {hidden})" if hidden is not None
                 else "hidden size (default: the task's, 128)")
  parser.add_argument("--hidden", type=_positive_int, default=hidden, metavar="H",
                      help=hidden_help)
  init_help = "initialisation scheme (default: PyTorch's U(-1/sqrt(H), 1/sqrt(H))"
  if hidden is None:   # train: the task may name another init for the cell
    init_help += "; without --init, --forget-bias or --chrono, the task's init for the " \
                 "cell, e.g. chrono for lstm on copy"
  parser.add_argument("--init", choices=registry.INITS, default=None, help=init_help + ")")
  parser.add_argument("--activation", choices=registry.ACTIVATIONS, default="tanh",
                      help="simple_rnn's activation; relu with --init identity is the IRNN")
  parser.add_argument("--forget-bias", type=_finite_float, default=None, metavar="B",
                      help="lstm: constant forget-gate bias (e.g. 1.0)")
  parser.add_argument("--chrono", type=_chrono, default=None, nargs="?", const="length",
                      metavar="T_MAX",
                      help="lstm: chrono initialisation with T_MAX (default: the sequence length)")
  parser.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")


def _defaults_help() -> str:
  lines = []
  for name, d in train_lib.DEFAULTS.items():
    steps = ", ".join(f"{s} steps up to T={t}" for t, s in d.steps)
    init = "".join(f"; {cell}: {', '.join(f'{k}={v}' for k, v in opts.items())}"
                   for cell, opts in d.cell_options.items())
    lines.append(f"{name}: T={d.length} (validated up to {d.max_length}), {steps}, batch "
                 f"{d.batch_size}, lr {d.learning_rate:g}, H={d.hidden_size}{init}")
  return "; ".join(lines)


def build_parser() -> argparse.ArgumentParser:
  from jaxseq import reproduce

  parser = _Parser(
      prog="jaxseq", description="Gradient-flow diagnostics and long-range benchmarks for "
      "recurrent cells, as pure JAX functions.")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND")
  commands.required = True

  p = commands.add_parser(
      "gradflow", help="gradient norm against lag, at init and during training",
      description="For each cell, the norm of dL/dcarry_t of a loss at the final step T-1, "
      "against the lag k = T-1-t, at initialisation and (with --train-steps) during training "
      "on the task, computed as log-norms (no underflow at any lag). Prints a table and "
      "writes gradflow.csv (log_norm and norm per cell, phase, step and lag) and "
      "gradflow.png to --out; with --train-steps also gradflow-training.png (one panel "
      "per cell, one curve per training step).")
  p.add_argument("--cells", default="simple_rnn,lstm,gru", metavar="LIST",
                 help=f"comma-separated cells from {', '.join(registry.CELLS)} "
                 "(default simple_rnn,lstm,gru)")
  p.add_argument("--length", type=_positive_int, default=100, metavar="T",
                 help="sequence length, the delay for copy (default 100)")
  p.add_argument("--batch-size", type=_positive_int, default=16, metavar="B",
                 help="sequences in the measured batch, taken from the task's evaluation "
                 "set (at most its size, 512 for the synthetic tasks), and the training "
                 "batch size (default 16)")
  p.add_argument("--task", default="adding", metavar="TASK",
                 help=f"task giving inputs and loss, one of {', '.join(TASK_NAMES)} "
                 "(default adding)")
  p.add_argument("--train-steps", type=_nonnegative_int, default=0, metavar="N",
                 help="also measure during N training steps on the task, at --snapshots "
                 "evenly spaced steps up to N (default 0: init only)")
  p.add_argument("--snapshots", type=_positive_int, default=4, metavar="K",
                 help="with --train-steps N: measure after N/K, 2N/K, ..., N steps, each "
                 "its own deterministic run from the seed, so training takes (K+1)/2 x N "
                 "steps (default 4; 1: after N steps only)")
  p.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (default 1e-3)")
  p.add_argument("--out", default="jaxseq-out", metavar="DIR",
                 help="output folder (default ./jaxseq-out)")
  _add_cell_options(p, hidden=64)
  p.set_defaults(run=_gradflow)

  p = commands.add_parser(
      "train", help="train a cell on a long-range task",
      description="Trains CELL with a Dense readout on TASK and prints the final metric "
      "next to the task's baseline (the best input-ignoring predictor), with a verdict. "
      "Options left out take the task's defaults (jaxseq.train.DEFAULTS, validated by "
      "jaxseq reproduce): " + _defaults_help() + ".")
  p.add_argument("task", metavar="TASK", help=f"one of {', '.join(TASK_NAMES)}")
  p.add_argument("--cell", default="lstm", metavar="CELL",
                 help=f"one of {', '.join(registry.CELLS)} (default lstm)")
  p.add_argument("--length", type=_positive_int, default=None, metavar="T",
                 help="sequence length or delay of the task (default: the task's)")
  p.add_argument("--steps", type=_positive_int, default=None,
                 help="training steps (default: the task's for the length)")
  p.add_argument("--batch-size", type=_positive_int, default=None, metavar="B",
                 help="batch size (default: the task's)")
  p.add_argument("--lr", type=_positive_float, default=None,
                 help="learning rate (default: the task's)")
  p.add_argument("--optimizer", choices=tuple(train_lib.OPTIMIZERS), default="adam",
                 help="(default adam)")
  p.add_argument("--clip-norm", type=_positive_float, default=1.0, metavar="C",
                 help="global gradient-norm clipping (default 1.0)")
  p.add_argument("--eval-every", type=_positive_int, default=None, metavar="N",
                 help="evaluate every N steps (default: the trainer's)")
  p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                 help="save checkpoints there (Orbax)")
  p.add_argument("--resume", action="store_true",
                 help="resume from the latest checkpoint in --checkpoint-dir")
  p.add_argument("--data-parallel", action="store_true",
                 help="split each batch across every device (jax.devices()); the batch "
                      "size must be a multiple of the device count")
  shown = p.add_mutually_exclusive_group()
  shown.add_argument("--progress", action="store_true",
                     help="show a progress bar (default: only when stderr is a terminal)")
  shown.add_argument("--quiet", action="store_true", help="no progress bar")
  _add_cell_options(p, hidden=None)
  p.set_defaults(run=_train)

  p = commands.add_parser(
      "lyapunov", help="Lyapunov spectrum of a cell driven by task inputs",
      description="Estimates the k largest Lyapunov exponents of the cell's state dynamics "
      "(QR method) along inputs drawn from the task, at initialisation.")
  p.add_argument("--cell", default="lstm", metavar="CELL",
                 help=f"one of {', '.join(registry.CELLS)} (default lstm)")
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
      "reproduce", help="published claims re-run at CPU scale (jaxseq.reproduce)",
      description=reproduce.__doc__.split("\n\n")[0] + " Writes a markdown report.")
  reproduce.add_arguments(p)
  p.set_defaults(run=_reproduce)
  return parser


# ----------------------------------------------------------------------------- gradflow


def _gradflow(args) -> int:
  from jaxseq import experiments, plots

  names = _name_list(args.cells, registry.CELLS, "--cells")
  _check_cell_options(args, names)
  task = _task(args.task)
  out = _output_folder("--out", args.out)
  available = experiments.evaluation_size(task, args.length)
  if args.batch_size > available:
    raise UsageError(f"--batch-size: expected at most {available} (the sequences in "
                     f"{task.name}'s evaluation set), got {args.batch_size}")
  T = train_lib.sequence_steps(task, args.length)
  cells, descriptions = {}, []
  for name in names:
    cells[name], description = _measured_cell(args, name, T)
    descriptions.append(description)
  train_steps = (experiments.snapshot_steps(args.train_steps, args.snapshots)
                 if args.train_steps else 0)
  profiles = experiments.lag_profiles(
      task, cells, length=args.length, batch_size=args.batch_size, seed=args.seed,
      train_steps=train_steps, learning_rate=args.lr,
      log=lambda line: print(line, flush=True))

  print(f"|dL/dcarry_t| of the {task.name} loss at the last step, relative to t = T-1, "
        f"against lag k = T-1-t, from log-norms  (T = {T}, batch {args.batch_size}; "
        f"{'; '.join(descriptions)})")
  print()
  print(experiments.format_profiles(profiles))

  out.mkdir(parents=True, exist_ok=True)
  csv_path, png_path = out / "gradflow.csv", out / "gradflow.png"
  title = f"{task.name}, T = {T}, H = {args.hidden}, init {args.init or 'default'}"
  experiments.write_csv(csv_path, profiles)
  plots.plot_lag_profiles(png_path, profiles, title, log=True)
  written = [csv_path, png_path]
  if train_steps:
    training_path = out / "gradflow-training.png"
    plots.plot_training_profiles(training_path, profiles,
                                 f"{title}, during training (lr {args.lr:g})", log=True)
    written.append(training_path)
  print()
  print("\n".join(f"wrote {path}" for path in written))
  return 0


# ----------------------------------------------------------------------------- train


def _train(args) -> int:
  _cell_name("--cell", args.cell)
  _check_cell_options(args, [args.cell])
  if args.resume and args.checkpoint_dir is None:
    raise UsageError("--resume: expected --checkpoint-dir too, got none")
  if args.checkpoint_dir is not None:
    _output_folder("--checkpoint-dir", args.checkpoint_dir)
  task = _task(args.task)
  settings = train_lib.defaults(task)
  length = settings.length if args.length is None else args.length
  if task.fixed_length is not None:
    length = task.fixed_length
  num_steps = train_lib.sequence_steps(task, length)
  options = _cell_options(args, args.cell, num_steps)
  choice = train_lib.cell_for(task, args.cell, length=length, hidden_size=args.hidden,
                              **options)
  steps = settings.steps_for(length) if args.steps is None else args.steps
  batch_size = settings.batch_size if args.batch_size is None else args.batch_size
  lr = settings.learning_rate if args.lr is None else args.lr
  progress = True if args.progress else False if args.quiet else None
  train_options = dict(length=length, steps=steps, batch_size=batch_size,
                       optimizer=args.optimizer, learning_rate=lr, clip_norm=args.clip_norm,
                       seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                       resume=args.resume, progress=progress)
  if args.data_parallel:
    import jax   # the CLI imports JAX lazily (help and usage errors stay fast)
    devices = jax.device_count()
    if batch_size % devices:
      raise UsageError(f"--batch-size: expected a multiple of the {devices} devices "
                       f"(--data-parallel), got {batch_size}")
    train_options["mesh"] = train_lib.data_mesh()
  if args.eval_every is not None:
    train_options["eval_every"] = args.eval_every
  told = [name for name, value in (("--length", args.length), ("--steps", args.steps),
                                   ("--batch-size", args.batch_size), ("--lr", args.lr),
                                   ("--hidden", args.hidden)) if value is not None]
  source = "the task's defaults" + (f" except {', '.join(told)}" if told else "")
  if choice.task_default_init:
    source += f"; {args.cell}'s init is the task's default"
  print(f"training {choice.description} on {task.name}, "
        f"{_length_text(task, length, num_steps)}, {steps} training steps, "
        f"batch {batch_size}{_devices_text(train_options)}, {args.optimizer} lr {lr:g}, clip {args.clip_norm:g} "
        f"({source})", flush=True)
  start = time.perf_counter()
  result = train_lib.train(task, choice.cell, **train_options)
  seconds = time.perf_counter() - start
  judged = train_lib.verdict(result.metric, result.baseline)
  line = f"{task.name}: {train_lib.result_line(task, result)}: {judged.text}"
  if judged.status != "solved":
    line += f"; {_advice(args, task, settings, judged, length, steps, lr, choice, result)}"
  print(f"{line}  [{seconds:.1f} s]")
  return 0


def _devices_text(train_options: dict) -> str:
  mesh = train_options.get("mesh")
  return "" if mesh is None else f" split over {mesh.size} devices"


def _advice(args, task, settings, judged, length, steps, lr, choice, result) -> str:
  """Which knob to turn when the run did not solve the task."""
  if judged.status == "diverged":
    return f"lower --lr (it was {lr:g})"
  train_loss = result.history[-1][1]
  # fits the training batches (near solved) but not the evaluation set
  if train_loss < 2 * train_lib.SOLVED * result.baseline and result.metric > 2 * train_loss:
    return (f"it overfits (training {task.metric} {train_loss:.3g}): fewer --steps or a "
            "smaller --hidden")
  more_steps = f"more --steps (it was {steps}; try {2 * steps})"
  hints = []
  if task.fixed_length is None and length > settings.max_length:
    hints.append(f"a shorter --length (the defaults are validated up to {settings.max_length})")
  if judged.status == "learning":
    hints.append(more_steps)
  else:
    chrono_helps = "chrono_t_max" in settings.cell_options.get("lstm", {})
    if args.cell == "simple_rnn" and args.init != "identity":
      hints.append("--init identity --activation relu (the IRNN) with --lr 3e-4 and more "
                   "--steps, or --cell lstm")
    elif args.cell == "lstm" and chrono_helps and choice.options.get("chrono_t_max") is None:
      hints.append("--chrono (chrono initialisation, the default for lstm here)")
    elif args.cell != "lstm":
      hints.append("--cell lstm" + (" (with chrono init by default)" if chrono_helps else ""))
    hints.append(more_steps)
  return "try " + ", or ".join(hints)


def _length_text(task, length: int, num_steps: int) -> str:
  if task.fixed_length is not None:
    return f"sequences of {num_steps} steps (fixed by the task)"
  if num_steps != length:
    return f"T = {length} (sequences of {num_steps} steps)"
  return f"T = {length}"


# ----------------------------------------------------------------------------- lyapunov


def _lyapunov(args) -> int:
  import jax
  import numpy as np
  from jaxseq import gradflow

  _cell_name("--cell", args.cell)
  _check_cell_options(args, [args.cell])
  if args.warmup >= args.length:
    raise UsageError(f"--warmup: expected fewer than --length = {args.length} steps, "
                     f"got {args.warmup}")
  task = _task(args.task)
  key_data, key_init = jax.random.split(jax.random.PRNGKey(args.seed))
  xs, _ = task.sample(key_data, 1, args.length)
  xs = xs[0]
  cell, description = _measured_cell(args, args.cell, xs.shape[0])
  params = cell.init(key_init, xs.shape[-1])
  exps = np.asarray(gradflow.lyapunov(cell, params, xs, k=args.k, warmup=args.warmup))
  exps = np.sort(exps)[::-1]
  print(f"Lyapunov exponents of {description} driven by {task.name} inputs, "
        f"{xs.shape[0]} steps, warm-up {args.warmup} (per step, nats):")
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


def _reproduce(args) -> int:
  from jaxseq import reproduce
  reproduce.run(args)
  return 0


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a bad command line)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # argparse has printed its one-line error or the help
    return e.code if isinstance(e.code, int) else 2
  try:
    return args.run(args)
  except UsageError as e:
    return _usage_error(args.command, str(e))
  except (ValueError, TypeError, ImportError, OSError) as e:
    # The library's input checks raise ValueError/TypeError with "argument: expected X,
    # got Y"; a missing optional dependency an ImportError naming the pip command.
    if os.environ.get("JAXSEQ_TRACEBACK"):
      raise
    return _usage_error(args.command, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _usage_error(command: str, message: str) -> int:
  print(f"jaxseq {command}: error: {message}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
