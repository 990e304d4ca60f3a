"""Kernel paths against the peers: jaxseq's fused XLA path and reference scan vs Flax linen,
Flax NNX, Equinox, Haiku and PyTorch (CPU), forward and forward+backward.

Each configuration (cell, B, T, D, H, layers, dtype) runs in its own worker processes, one
after the other; inside each, every implementation is compiled first (compile time recorded
apart), then the repeats are interleaved (implementation after implementation, round after
round) and the median is kept. Ratios are taken inside one process, so a slow moment hits
every implementation alike; the report gives each ratio's median over the processes and its
range, because on a shared machine the same ratio moves between processes by more than
inside one.

Implementations (loss = sum(ys ** 2) summed in float32, gradients for the parameters only):

* ``xla``: ``jaxseq.unroll(..., kernel="xla")``, the fused path (recomputes the gate
  activations in the backward scan, the default);
* ``xla-store``: the same with ``recompute=False`` (activations stored by the forward pass);
* ``reference``: ``kernel="reference"``, ``lax.scan`` differentiated by JAX;
* ``flax``: Flax linen, ``nn.RNN(nn.OptimizedLSTMCell(H))`` / ``nn.RNN(nn.GRUCell(H))``;
* ``nnx``: Flax NNX, ``nnx.RNN`` over ``nnx.OptimizedLSTMCell`` / ``nnx.GRUCell``, split
  into its graph and state by ``nnx.split`` outside ``jax.jit`` and merged inside (the
  functional form, without ``nnx.jit``'s per-call Python work); the zero initial carry is
  passed in, so the RNN's carry-init rng stream is not drawn inside the jitted function;
* ``equinox``: ``eqx.nn.LSTMCell`` / ``eqx.nn.GRUCell`` stepped by ``lax.scan`` over one
  sequence and ``jax.vmap``-ed over the batch, as Equinox's documentation does;
* ``haiku``: ``hk.LSTM`` / ``hk.GRU`` unrolled by ``hk.dynamic_unroll`` (time-major: the
  input is transposed once, outside the timings), under ``hk.transform``;
* ``torch``: ``torch.nn.LSTM`` / ``torch.nn.GRU`` (``batch_first=True``).

A peer that is not installed (or cannot run a configuration) is recorded as not run, with
the reason, and shown as n/a; the jaxseq paths always run.

Two layers (set ``long``): ``jaxseq.stack`` of two ``jaxseq.recurrent`` layers; two
``nn.RNN`` (linen, ``nn.Sequential``) or ``nnx.RNN`` in a row; two scans (Equinox); two
``dynamic_unroll`` calls (Haiku: the same layer-after-layer schedule as the others, not
``hk.DeepRNN``, which steps both layers in one loop); ``num_layers=2`` (PyTorch).

bfloat16: inputs in bfloat16, compute in bfloat16, parameters kept in float32 where the
library has that notion: jaxseq ``dtype=jnp.bfloat16`` (the LSTM cell state stays float32),
Flax linen and NNX ``dtype=jnp.bfloat16, param_dtype=jnp.float32`` (their carry starts in
``param_dtype``, as linen's default carry does, so their outputs come out float32 while their
matmuls run in bfloat16; the JSON records each output's dtype). Equinox and Haiku have
no compute dtype: their float32 parameters are cast to bfloat16 inside the jitted function
(gradients flow back to float32) and the carry starts in bfloat16. PyTorch:
``module.to(torch.bfloat16)`` (its parameters are bfloat16 too).

Sets of configurations (``--configs``, comma-separated; default all but ``sweep``):

* ``reference``: B32 T256 D128 H256, lstm and gru; 3 processes, 7 repeats;
* ``small``: B16 T100 D32 H128, lstm and gru; 3 processes, 15 repeats;
* ``deepbench``: DeepBench-like, lstm and gru at B16 and B64, T25, D=H=512 and 1024;
  1 process, 5 repeats;
* ``long``: B8 T2000 D=H=256, two stacked layers, lstm and gru; 1 process, 3 repeats;
* ``bf16``: the ``small`` sizes in bfloat16; 1 process, 5 repeats;
* ``sweep``: LSTM forward+backward only, B16, T 25, 50, 100, 200 at D=H=128 and D=H 64,
  128, 256, 512 at T100 (the plot); 1 process, 5 repeats.

DeepBench's RNN training kernels use the input size equal to the hidden size, so D=H.
FlashRNN's GPU configuration (B16 T1024 H768) is not run here (CPU). The bigger sets run one
process with few repeats to keep the run affordable on 2 CPU cores; bfloat16 runs only the
small sizes because XLA:CPU's bfloat16 is very slow (one long run took 430 s against 6 s in
float32). Estimated on 2 cores from the FLOP counts and the committed reference-size
timings (not measured as a whole): about 20 min for the default sets (reference and small
~9, deepbench ~5, long ~5, bf16 ~2) and ~3 min for ``--sweep``.

    python benchmarks/bench_kernels.py                    # every set but the sweep
    python benchmarks/bench_kernels.py --sweep            # the sweep and its plot
    python benchmarks/bench_kernels.py --configs long,bf16
    python benchmarks/bench_kernels.py --quick            # tiny smoke sizes, few repeats
    python benchmarks/bench_kernels.py --report-only      # rewrite the report from the JSON

Writes benchmarks/results/kernels.md (``--quick``: kernels-quick.md), the raw numbers beside
it as JSON and the sweep's plot as kernels.png. A run replaces the sets (and dtypes) it ran
in the JSON and keeps the others, each set with its own date, load and machine.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
import _common  # noqa: E402
from _common import load, loss_grad, ms, table, timed  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
IMPLEMENTATIONS = ("xla", "xla-store", "reference", "flax", "nnx", "equinox", "haiku", "torch")
JAXSEQ_PATHS = ("xla", "xla-store", "reference")
LABELS = {"xla": "xla", "xla-store": "xla-store", "reference": "reference",
          "flax": "Flax linen", "nnx": "Flax NNX", "equinox": "Equinox", "haiku": "Haiku",
          "torch": "PyTorch"}
PEER_MODULES = {"flax": "flax.linen", "nnx": "flax.nnx", "equinox": "equinox",
                "haiku": "haiku", "torch": "torch"}
MODES = ("forward", "forward+backward")
CELLS = ("lstm", "gru")


class Config(NamedTuple):
  """One benchmarked configuration: ``cell`` over inputs ``(B, T, D)`` with ``H`` units."""
  set: str
  cell: str
  B: int
  T: int
  D: int
  H: int
  layers: int = 1
  dtype: str = "float32"


class Plan(NamedTuple):
  """A set's configurations and how often each is timed."""
  configs: list
  processes: int
  repeats: int
  modes: tuple = MODES


class Sweep(NamedTuple):
  """The plot's points: ``Ts`` at ``H`` and ``Hs`` at ``T`` (D = H), batch ``B``."""
  cell: str
  B: int
  T: int
  H: int
  Ts: tuple
  Hs: tuple

  def configs(self):
    points = [(T, self.H) for T in self.Ts] + [(self.T, H) for H in self.Hs]
    return [Config("sweep", self.cell, self.B, T, H, H) for T, H in dict.fromkeys(points)]


SWEEP = Sweep("lstm", 16, 100, 128, Ts=(25, 50, 100, 200), Hs=(64, 128, 256, 512))
QUICK_SWEEP = Sweep("lstm", 2, 12, 16, Ts=(6, 12), Hs=(8, 16))
SETS = {
    "reference": Plan([Config("reference", c, 32, 256, 128, 256) for c in CELLS], 3, 7),
    "small": Plan([Config("small", c, 16, 100, 32, 128) for c in CELLS], 3, 15),
    "deepbench": Plan([Config("deepbench", c, B, 25, H, H)
                       for c in CELLS for B in (16, 64) for H in (512, 1024)], 1, 5),
    "long": Plan([Config("long", c, 8, 2000, 256, 256, layers=2) for c in CELLS], 1, 3),
    "bf16": Plan([Config("bf16", c, 16, 100, 32, 128, dtype="bfloat16") for c in CELLS], 1, 5),
    "sweep": Plan(SWEEP.configs(), 1, 5, modes=("forward+backward",)),
}
QUICK_SETS = {
    "reference": Plan([Config("reference", c, 4, 12, 8, 16) for c in CELLS], 1, 3),
    "small": Plan([Config("small", "gru", 4, 10, 4, 8)], 1, 3),
    "deepbench": Plan([Config("deepbench", "lstm", 4, 5, 16, 16)], 1, 3),
    "long": Plan([Config("long", "lstm", 2, 12, 8, 8, layers=2)], 1, 3),
    "bf16": Plan([Config("bf16", "gru", 4, 12, 8, 16, dtype="bfloat16")], 1, 3),
    "sweep": Plan(QUICK_SWEEP.configs(), 1, 3, modes=("forward+backward",)),
}
DEFAULT_SETS = ("reference", "small", "deepbench", "long", "bf16")
QUICK_DEFAULT_SETS = ("reference", "long", "bf16", "sweep")


# ----------------------------------------------------------------------------- workers
#
# Each JAX implementation's builder returns its model ``(apply, params, xs)``: the forward
# ``apply(params, xs)`` on fixed inputs (``model``; ``_jitted`` makes the timed calls of it,
# ``profile_kernels.py`` profiles it). PyTorch's returns ``_jitted``'s four calls directly.


def _inputs(config):
  import jax
  import jax.numpy as jnp
  xs = jax.random.normal(jax.random.PRNGKey(1), (config.B, config.T, config.D))
  return xs.astype(jnp.dtype(config.dtype))


def _jitted(apply, params, xs):
  """Blocking forward and gradient calls of ``apply(params, xs)``, both jitted."""
  import jax
  forward = jax.jit(apply)
  grad = jax.jit(loss_grad(apply))
  return (lambda: jax.block_until_ready(forward(params, xs)),
          lambda: jax.block_until_ready(grad(params, xs)), params,
          lambda: forward(params, xs))


def _jaxseq(kernel, config):
  import jax
  import jax.numpy as jnp
  import jaxseq
  from jaxseq.kernels import xla

  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
  cells = [getattr(jaxseq, config.cell)(config.H, dtype=dtype) for _ in range(config.layers)]
  if kernel == "xla-store":
    cells = [cell._replace(kernel=jaxseq.Kernel(
        cell.recur, xla.variant(cell.kernel.run, recompute=False))) for cell in cells]
    kernel = "xla"
  xs = _inputs(config)
  if config.layers == 1:
    params = cells[0].init(jax.random.PRNGKey(0), config.D)
    return lambda p, x: jaxseq.unroll(cells[0], p, x, kernel=kernel)[0], params, xs
  layer = jaxseq.stack(*(jaxseq.recurrent(cell, kernel=kernel) for cell in cells))
  params = layer.init(jax.random.PRNGKey(0), config.D)
  return lambda p, x: layer.apply(p, x)[0], params, xs


def _flax(config):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  make = nn.OptimizedLSTMCell if config.cell == "lstm" else nn.GRUCell
  options = ({"dtype": jnp.bfloat16, "param_dtype": jnp.float32}
             if config.dtype == "bfloat16" else {})
  rnns = [nn.RNN(make(config.H, **options)) for _ in range(config.layers)]
  model = rnns[0] if config.layers == 1 else nn.Sequential(rnns)
  xs = _inputs(config)
  params = model.init(jax.random.PRNGKey(0), xs)
  return model.apply, params, xs


def _nnx(config):
  import jax.numpy as jnp
  from flax import nnx

  make = nnx.OptimizedLSTMCell if config.cell == "lstm" else nnx.GRUCell
  options = ({"dtype": jnp.bfloat16, "param_dtype": jnp.float32}
             if config.dtype == "bfloat16" else {})
  rngs = nnx.Rngs(0)
  model = nnx.Sequential(*(
      nnx.RNN(make(config.D if i == 0 else config.H, config.H, rngs=rngs, **options))
      for i in range(config.layers)))
  graph, params, rest = nnx.split(model, nnx.Param, ...)
  zero = jnp.zeros((config.B, config.H), jnp.float32)
  carry = (zero, zero) if config.cell == "lstm" else zero

  def apply(params, xs):
    for rnn in nnx.merge(graph, params, rest).layers:
      xs = rnn(xs, initial_carry=carry)
    return xs
  return apply, params, _inputs(config)


def _cast(tree, dtype):
  import jax
  return jax.tree.map(lambda a: a.astype(dtype), tree)


def _equinox(config):
  import equinox as eqx
  import jax
  import jax.numpy as jnp

  make = eqx.nn.LSTMCell if config.cell == "lstm" else eqx.nn.GRUCell
  keys = jax.random.split(jax.random.PRNGKey(0), config.layers)
  cells = [make(config.D if i == 0 else config.H, config.H, key=key)
           for i, key in enumerate(keys)]
  params, static = eqx.partition(cells, eqx.is_inexact_array)
  dtype = jnp.dtype(config.dtype)

  def sequence(cell, xs):       # one sequence (T, D) -> (T, H)
    zero = jnp.zeros(config.H, dtype)

    def step(carry, x):
      carry = cell(x, carry)
      return carry, carry[0] if config.cell == "lstm" else carry
    return jax.lax.scan(step, (zero, zero) if config.cell == "lstm" else zero, xs)[1]

  def apply(params, xs):
    for cell in eqx.combine(_cast(params, dtype), static):
      xs = jax.vmap(lambda seq: sequence(cell, seq))(xs)
    return xs
  return apply, params, _inputs(config)


def _haiku(config):
  import haiku as hk
  import jax
  import jax.numpy as jnp

  dtype = jnp.dtype(config.dtype)

  def network(xs):              # time-major (T, B, D) -> (T, B, H)
    for _ in range(config.layers):
      core = hk.LSTM(config.H) if config.cell == "lstm" else hk.GRU(config.H)
      xs, _ = hk.dynamic_unroll(core, xs, _cast(core.initial_state(config.B), xs.dtype))
    return xs
  model = hk.without_apply_rng(hk.transform(network))
  xs = jnp.swapaxes(_inputs(config), 0, 1)
  # hk.Linear makes its parameters in the inputs' dtype: initialise in float32.
  params = model.init(jax.random.PRNGKey(0), xs.astype(jnp.float32))
  return lambda p, x: model.apply(_cast(p, dtype), x), params, xs


def _torch(config):
  import torch

  make = torch.nn.LSTM if config.cell == "lstm" else torch.nn.GRU
  module = make(config.D, config.H, num_layers=config.layers, batch_first=True)
  xs = torch.randn(config.B, config.T, config.D)
  if config.dtype == "bfloat16":
    module, xs = module.to(torch.bfloat16), xs.to(torch.bfloat16)

  def forward():
    with torch.no_grad():
      return module(xs)[0]

  def grad():
    module.zero_grad()
    (module(xs)[0].float() ** 2).sum().backward()
  return forward, grad, list(module.parameters()), forward


JAX_PEERS = {"flax": _flax, "nnx": _nnx, "equinox": _equinox, "haiku": _haiku}


def model(name, config):
  """``(apply, params, xs)`` of the JAX implementation ``name`` (a jaxseq path or a JAX
  peer) on ``config``: ``apply(params, xs)`` is the forward's output."""
  return _jaxseq(name, config) if name in JAXSEQ_PATHS else JAX_PEERS[name](config)


def _size(params):
  import jax
  return sum(int(leaf.numel() if hasattr(leaf, "numel") else leaf.size)
             for leaf in jax.tree.leaves(params))


def _peer_missing(name):
  """Why peer ``name`` cannot be imported, or None."""
  try:
    importlib.import_module(PEER_MODULES[name])
  except Exception as error:    # ImportError, or a peer broken by this JAX version
    return f"not installed or fails to import ({type(error).__name__}: {error})"
  return None


def worker(config, repeats, modes=MODES, implementations=IMPLEMENTATIONS):
  """Times every implementation on one ``Config``; prints one JSON line.

  The line holds the configuration, ``compile_s`` (first call of each timed mode),
  ``median_s`` and ``min_s`` per implementation and mode, ``params`` (trainable parameter
  count), ``output`` (dtype and shape of the forward's output) and ``unavailable``
  (peer -> why it did not run).
  """
  import jax
  importlib.import_module("jaxseq")   # imports outside the compile times
  unavailable = {name: why for name in implementations if name in PEER_MODULES
                 for why in [_peer_missing(name)] if why}
  jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))
  for warm in ("xla", "reference"):  # one-time costs outside the first compile time
    _jitted(*model(warm, Config("", config.cell, 2, 3, 2, 4)))[1]()
  fns, compile_s, params, output = {}, {}, {}, {}
  for name in implementations:
    if name in unavailable:
      continue
    start = time.perf_counter()
    if name in JAXSEQ_PATHS:
      forward, grad, weights, run = _jitted(*model(name, config))
      calls = {"forward": forward, "forward+backward": grad}
      for mode in modes:
        calls[mode]()       # first calls: compilation (warm-up for PyTorch)
    else:
      try:
        forward, grad, weights, run = (_torch(config) if name == "torch"
                                       else _jitted(*model(name, config)))
        calls = {"forward": forward, "forward+backward": grad}
        for mode in modes:
          calls[mode]()
      except Exception as error:   # a peer that cannot run this configuration (a dtype)
        unavailable[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        continue
    compile_s[name] = time.perf_counter() - start
    fns[name] = {mode: calls[mode] for mode in modes}
    params[name] = _size(weights)
    out = run()
    output[name] = f"{str(out.dtype).removeprefix('torch.')} {tuple(out.shape)}"
  times = {name: {mode: [] for mode in modes} for name in fns}
  names = list(fns)
  for round_ in range(repeats):
    # Rotate the order every round: whoever runs right after another library's thread
    # pool has just been busy is not always the same implementation.
    order = names[round_ % len(names):] + names[:round_ % len(names)]
    for mode in modes:
      for name in order:
        times[name][mode].append(timed(fns[name][mode]))
  print(json.dumps({**config._asdict(), "repeats": repeats, "compile_s": compile_s,
                    "median_s": {n: {m: statistics.median(v) for m, v in t.items()}
                                 for n, t in times.items()},
                    "min_s": {n: {m: min(v) for m, v in t.items()} for n, t in times.items()},
                    "params": params, "output": output, "unavailable": unavailable}))


# ----------------------------------------------------------------------------- report


def machine():
  """The machine and library versions, recorded with each set's results."""
  try:
    import torch
    threads = torch.get_num_threads()
  except ImportError:
    threads = None
  versions = {m: _common.version(m) for m in ("jax", "flax", "equinox", "haiku", "torch")}
  return {**_common.machine(), "versions": versions, "torch_threads": threads}


def _machine_line(info):
  versions = ", ".join(f"{m} {v}" for m, v in info["versions"].items())
  threads = f" (PyTorch {info['torch_threads']} threads)" if info.get("torch_threads") else ""
  return (f"{info['cpu']} ({info['arch']}), {info['cpus']} CPUs visible, {info['backend']} "
          f"backend; Python {info['python']}, {versions}{threads}")


def _set_of(run):
  """A run's set; runs saved before sets existed are matched by their sizes."""
  if "set" in run:
    return run["set"]
  for name, plan in SETS.items():
    if any((c.cell, c.B, c.T, c.D, c.H) == (run["cell"], run["B"], run["T"], run["D"],
                                            run["H"]) for c in plan.configs):
      return name
  return "custom"


def _key(run):
  return Config(_set_of(run), run["cell"], run["B"], run["T"], run["D"], run["H"],
                run.get("layers", 1), run.get("dtype", "float32"))


def _groups(runs):
  """The worker results of each configuration, in order: ``[(config, [run, ...]), ...]``."""
  groups = {}
  for run in runs:
    groups.setdefault(_key(run), []).append(run)
  return list(groups.items())


def _size_label(config):
  layers = f" ({config.layers} layers)" if config.layers > 1 else ""
  return f"{config.B}, {config.T}, {config.D}, {config.H}{layers}"


def _row_start(config):
  dtype = "bf16" if config.dtype == "bfloat16" else "f32"
  return f"| {config.set} | {config.cell} | {dtype} | {_size_label(config)} |"


def _median_time(group, name, mode):
  values = [r["median_s"][name][mode] for r in group if mode in r["median_s"].get(name, {})]
  return statistics.median(values) if values else None


def _ratio(group, other, mode):
  values = sorted(r["median_s"]["xla"][mode] / r["median_s"][other][mode] for r in group
                  if other in r["median_s"] and mode in r["median_s"][other])
  if not values:
    return "n/a"
  spread = f" [{values[0]:.2f}-{values[-1]:.2f}]" if len(values) > 1 else ""
  return f"{statistics.median(values):.2f}x{spread}"


def _present(groups):
  """The implementations that ran in at least one run, in the usual order."""
  ran = {name for _, group in groups for run in group for name in run["median_s"]}
  return [name for name in IMPLEMENTATIONS if name in ran or name in JAXSEQ_PATHS]


def sweep_table(runs, fixed):
  """Markdown tables of the sweep's forward+backward medians against T and against H."""
  groups = _groups(runs)
  names = _present(groups)
  lines = []
  for axis, keep in (("T", lambda c: c.H == fixed["H"]), ("H", lambda c: c.T == fixed["T"])):
    rows = []
    for config, group in sorted(((c, g) for c, g in groups if keep(c)),
                                key=lambda item: getattr(item[0], axis)):
      cells = [_median_time(group, n, "forward+backward") for n in names]
      rows.append(f"| {getattr(config, axis)} | {_size_label(config)} | " + " | ".join(
          ms(t) for t in cells) + " |")
    lines += table(f"| {axis} | B, T, D, H | " + " | ".join(LABELS[n] for n in names) + " |",
                   rows)
  return lines


def plot(runs, fixed, path):
  """Writes the sweep's forward+backward medians against T and against H to ``path``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker

  groups = _groups(runs)
  names = _present(groups)
  cell = groups[0][0].cell if groups else ""
  figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, axis, other, keep in (
      (axes[0], "T", f"H = D = {fixed['H']}", lambda c: c.H == fixed["H"]),
      (axes[1], "H", f"T = {fixed['T']}", lambda c: c.T == fixed["T"])):
    points = sorted(((c, g) for c, g in groups if keep(c)), key=lambda i: getattr(i[0], axis))
    for name in names:
      xy = [(getattr(c, axis), _median_time(g, name, "forward+backward")) for c, g in points]
      xy = [(x, t * 1e3) for x, t in xy if t is not None]
      if xy:
        ax.plot(*zip(*xy), marker="o", label=LABELS[name],
                linestyle="-" if name in JAXSEQ_PATHS else "--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([getattr(c, axis) for c, _ in points], minor=False)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    for axis_ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
      axis_ticks(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(axis + (" (D = H)" if axis == "H" else ""))
    ax.set_ylabel("forward+backward, ms (median)")
    ax.set_title(f"{cell.upper()}, B = {fixed['B']}, {other}")
    ax.grid(True, which="both", alpha=0.3)
  axes[1].legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def report(runs, sections, quick=False, plot_name=None):
  """The markdown report of ``runs`` (worker results); ``sections`` maps each set to its
  ``{"processes", "repeats", "load", "wall_s", "date", "machine"}`` record."""
  sweep_runs = [r for r in runs if _set_of(r) == "sweep"]
  groups = _groups([r for r in runs if _set_of(r) != "sweep"])
  names = _present(groups)
  machines = {_machine_line(s["machine"]) for s in sections.values() if s.get("machine")}
  lines = ["# Kernel paths against the peers" + (" (quick smoke run)" if quick else ""), ""]
  if not machines:    # results saved before the machine was recorded with them
    machines = {"not recorded with these results; this report was written on "
                + _machine_line(machine())}
  lines += ["Machine: " + "; ".join(sorted(machines)) + ".", ""]
  lines += [
      "Each configuration runs in its own worker processes, one after the other; in each, "
      "every implementation is compiled, then the repeats are interleaved and medians taken. "
      "Regenerate with `python benchmarks/bench_kernels.py` (every set but the sweep) and "
      "`python benchmarks/bench_kernels.py --sweep`; `--configs` reruns some sets only.", "",
      "On this shared machine the same ratio moved by up to ±30% from one process to the "
      "next (observed on 2026-12-03), more than inside one process, so each ratio is the "
      "median over the processes with their range in brackets (one process: no range); "
      "times are medians over the processes.", ""]
  lines += table("| set | processes × repeats | date | load before / after | minutes |", [
      f"| {name} | {s.get('processes', '?')} × {s.get('repeats', '?')} | "
      f"{s.get('date', 'not recorded')} | {s['load'][0]:.1f} / {s['load'][1]:.1f} on "
      f"{(s.get('machine') or {}).get('cpus', os.cpu_count())} CPUs | "
      f"{s['wall_s'] / 60:.1f} |" for name, s in sections.items()])
  head = "| set | cell | dtype | B, T, D, H |"
  for mode in ("forward+backward", "forward"):
    lines += [f"## {mode}: median times", ""]
    lines += table(head + " " + " | ".join(LABELS[n] for n in names) + " |", [
        _row_start(config) + " " + " | ".join(
            ms(_median_time(group, n, mode)) for n in names) + " |"
        for config, group in groups])
    lines += [f"## {mode}: xla / other", "",
              "Ratio = jaxseq xla time / other time (below 1: the fused path is faster).", ""]
    lines += table(head + " " + " | ".join(f"xla / {LABELS[n]}" for n in names[1:]) + " |", [
        _row_start(config) + " " + " | ".join(_ratio(group, n, mode) for n in names[1:]) + " |"
        for config, group in groups])
  lines += ["## Compile time (first forward + first forward+backward call; median over "
            "processes)", ""]
  lines += table(head + " " + " | ".join(LABELS[n] for n in names) + " |", [
      _row_start(config) + " " + " | ".join(
          f"{statistics.median(vs):.2f} s" if vs else "n/a"
          for vs in ([r["compile_s"][n] for r in group if n in r["compile_s"]] for n in names))
      + " |" for config, group in groups])
  lines += ["PyTorch's \"compile time\" is its first call. PyTorch's CPU `nn.LSTM` runs "
            "oneDNN's fused kernel; its `nn.GRU` the native path (input projection for all "
            "steps, one `addmm` per step). bfloat16 (`bf16` rows): jaxseq, Flax linen and "
            "NNX compute in bfloat16 with float32 parameters; Equinox and Haiku cast their "
            "float32 parameters to bfloat16 inside the jitted function; PyTorch's parameters "
            "are bfloat16.", ""]
  not_run = {}
  for run in runs:
    for name, why in run.get("unavailable", {}).items():
      not_run.setdefault((name, why), []).append(_size_label(_key(run)))
  if not_run:
    lines += ["**Not run** (n/a above):", ""] + [
        f"* {LABELS[name]}: {why} ({len(where)} run(s))" for (name, why), where in
        not_run.items()] + [""]
  if sweep_runs:
    fixed = sections.get("sweep", {}).get("fixed") or SWEEP._asdict()
    lines += [f"## Sweep: {_groups(sweep_runs)[0][0].cell.upper()} forward+backward, "
              "float32, against T and H", ""]
    lines += [f"![time against T and H]({plot_name})", ""] if plot_name else []
    lines += sweep_table(sweep_runs, fixed)
  lines.append(NOTES)
  return "\n".join(lines)


NOTES = """## Reading the numbers

* **Store or recompute.** `xla / xla-store` below 1 in forward+backward: recomputing the gate
  activations in the backward scan from the stored pre-activation parts (the default,
  `recompute=True`) beats storing them, which costs a separate residual scan in the forward
  pass and more memory. The forward alone is the same code for both (ratio ~1).
* **Forward.** The fused path's forward is the reference recurrence bit for bit, but slices
  the next step's `gx` into the loop carry: XLA:CPU fused the step's dynamic slice of the
  stacked `gx` into every elementwise consumer, and those fusions ran about 2x slower than the
  same math on a plain `(B, 4H)` buffer.
* **Blocks (CPU).** A `(T, B, 4H)` input projection larger than the cache is slow on this
  machine whoever writes it. `profile.md`, GRU B32 T256 D128 H256 forward+backward (`gx` 24
  MiB): the reference scan's projection, one `(8192, 128) x (128, 768)` GEMM, took 37 ms,
  where the fused path's 64 blocks of the same GEMM took 16 ms in all; the reference's bias
  add over it 13 ms and its zero-filled cotangent buffer 14 ms. So `unroll` runs the fused
  path over blocks of ~512 KiB of `gx` when `gx` exceeds 8 MiB
  (`jaxseq.sequence.block_length`): a scan over blocks, each projecting its own steps. The
  reference-size rows run in blocks of 4 steps (before blocks, the run committed in 4ce2304
  measured the forward at 1.21x Flax linen for LSTM and 1.29x for GRU); the B16 T100 rows
  (`gx` 3.2 MiB for LSTM) run in one block, where blocks measured no faster and cost compile
  time. Flax linen computes `x_t W_ih` inside its loop and never writes the projection.
* **Where the time goes**: `benchmarks/results/profile.md` (`python
  benchmarks/profile_kernels.py`, one process per run, so compare its rows, not its runs).
  GRU at the reference size, forward+backward: the fused path spends fewer seconds in
  matmuls than Flax linen (112 vs 172 ms) and more outside them (105 ms in other operations
  and 27 ms between them, against 79 ms and none): per-step gate math, copies and
  concatenates in the backward scan, zero-filled buffers for the scans' stacked residuals
  (the largest, `(64, 4, 32, 768)`, 11 ms) and loop overhead. The per-step
  `(32, 256) x (256, G·H)` products, forward and backward, are the largest items for every
  implementation (GRU: 32 + 35 ms of 243 ms); no library here does fewer of them. The
  profiler slows every path and its LSTM rows varied by 1.5x between two runs of the same
  code on 2026-12-03 (the earlier run was overwritten, not kept): read its per-operation
  split, and take ratios from the tables above.
* **The products' forms** (`benchmarks/results/products.md`, `python
  benchmarks/bench_products.py`). On XLA:CPU the gradient of a product over two leading axes,
  `(T, B, D) x (D, G)`, ran 1.1-1.9x slower than the same product on the flattened `T·B`
  rows, and a scan step's `delta_t W^T` that contracts `W`'s columns ran 1.26-1.32x slower
  than a product with `W^T` made once before the loop. So the dense cells' linear map is
  `jaxseq.kernels.xla.matmul` (2-D on the rows; the input half and the hoisted weight
  gradients), and the fused backward scan reads `W_hh` transposed once. Together they moved
  forward+backward against Flax linen from 0.96x to 0.88x (LSTM) at the reference size,
  0.89x to 0.72x (LSTM) and 0.98x to 0.84x (GRU) at B16 T100, and 0.78x to 0.52x/0.67x on
  the long two-layer sequences (the previous run of this file, commit 675c3d2, against this
  one); GRU at the reference size stayed about even (1.03x, 1.04x).
* **The products' floor** (`products.md`, its last table): the matrix products of the
  LSTM or GRU alone (no bias, no gate math; forward per step as Flax does them,
  forward+backward the fused path's), timed with the fused path and Flax linen, three
  processes. Forward, the products alone took 0.73x (LSTM) and 0.88x (GRU) of Flax linen's
  whole forward at the reference size and 0.80x and 0.69x at B16 T100 (medians; ranges up
  to 1.03x); forward+backward 0.70x, 0.74x, 0.53x and 0.66x. An implementation that does
  these products cannot take less time than they do, so the forward targets (<= 0.8x Flax)
  leave the gate math and the loop 0-11% of Flax's time (Flax spends 12-31% on them), and
  the reference-size forward+backward targets (<= 0.75x) leave 1-5%: on this CPU they need
  faster products than XLA's, not less work around them.
* **Backward.** The fused backward is JAX's transpose of the linear tangent rule: one reverse
  scan over `(B, H)` cotangents with `delta_t W_hh^T` as its only matmul, then `dW_hh` and
  `dW_ih` as single GEMMs over the `T·B` rows (per block of steps on CPU). Against the
  reference (`lax.scan` autodiff, `dW` accumulated per step) it is faster at the reference,
  B16 T100 and long sizes (0.67-0.94x) and at DeepBench's B16, and about even at its B64
  (0.99-1.09x), where the per-step products dominate both.
"""


# ----------------------------------------------------------------------------- driver


def _upgrade(saved):
  """Results saved before sets existed (``runs``, ``load``, ``wall_s``) in today's form."""
  if not saved or "sections" in saved:
    return saved or {"runs": [], "sections": {}}
  names = list(dict.fromkeys(_set_of(run) for run in saved["runs"]))  # one run, one record
  repeats = "/".join(str(r) for r in dict.fromkeys(run["repeats"] for run in saved["runs"]))
  section = {"load": saved["load"], "wall_s": saved["wall_s"], "repeats": repeats,
             "processes": max(len(group) for _, group in _groups(saved["runs"]))}
  return {"runs": saved["runs"], "sections": {", ".join(names): section}}


def write(saved, results, stem, quick, save_json=True):
  """Writes ``stem``.json (unless not ``save_json``), the markdown report and, with sweep
  runs, the plot."""
  results.mkdir(parents=True, exist_ok=True)
  if save_json:
    (results / f"{stem}.json").write_text(json.dumps(saved, indent=1))
  sweep_runs = [r for r in saved["runs"] if _set_of(r) == "sweep"]
  plot_name = None
  if sweep_runs:
    plot_name = f"{stem}.png"
    fixed = saved["sections"].get("sweep", {}).get("fixed") or SWEEP._asdict()
    plot(sweep_runs, fixed, results / plot_name)
  text = report(saved["runs"], saved["sections"], quick, plot_name)
  (results / f"{stem}.md").write_text(text)
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
  parser.add_argument("--configs", default=None,
                      help=f"comma-separated sets among {', '.join(SETS)} (default: all but "
                      "sweep; with --quick: reference, long, bf16, sweep)")
  parser.add_argument("--sweep", action="store_true", help="run only the sweep (the plot)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="run the selected sets in this dtype (default: each set's own)")
  parser.add_argument("--repeats", type=int, default=None, help="override every set's")
  parser.add_argument("--processes", type=int, default=None,
                      help="worker processes per configuration (override every set's)")
  parser.add_argument("--results", type=pathlib.Path, default=RESULTS, help=argparse.SUPPRESS)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--modes", default=",".join(MODES), help=argparse.SUPPRESS)
  parser.add_argument("--report-only", action="store_true",
                      help="rewrite the markdown (and plot) from the saved JSON, no timing")
  args = parser.parse_args(argv)
  if args.worker:
    worker(Config(**json.loads(args.worker)), args.repeats, tuple(args.modes.split(",")))
    return
  stem = "kernels-quick" if args.quick else "kernels"
  path = args.results / f"{stem}.json"
  saved = _upgrade(json.loads(path.read_text()) if path.exists() else None)
  if args.report_only:
    write(saved, args.results, stem, args.quick, save_json=False)
    return
  sets = QUICK_SETS if args.quick else SETS
  names = (["sweep"] if args.sweep else args.configs.split(",") if args.configs
           else QUICK_DEFAULT_SETS if args.quick else DEFAULT_SETS)
  unknown = [name for name in names if name not in sets]
  if unknown:
    parser.error(f"unknown set(s) {unknown}; choose among {list(sets)}")
  if "sweep" in names and args.dtype not in (None, "float32"):
    parser.error("the sweep runs in float32 only")
  for name in names:
    plan = sets[name]
    configs = [c._replace(dtype=args.dtype or c.dtype) for c in plan.configs]
    processes, repeats = args.processes or plan.processes, args.repeats or plan.repeats
    load_before, start, runs = load(), time.perf_counter(), []
    for config in [c for c in configs for _ in range(processes)]:
      # PyTorch's OpenMP threads busy-wait after each call by default, stealing the CPUs
      # from the JAX call that follows in the same process: make them sleep instead.
      env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
      out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config._asdict()),
                            "--repeats", str(repeats), "--modes", ",".join(plan.modes)],
                           check=True, capture_output=True, text=True, env=env).stdout
      runs.append(json.loads(out.strip().splitlines()[-1]))
      print(f"{name} {config.cell} {config.dtype} {_size_label(config)}: " + ", ".join(
          f"{n} {ms(t['forward+backward'])}" for n, t in runs[-1]["median_s"].items()),
            flush=True)
    replaced = {(name, c.dtype) for c in configs}
    saved["runs"] = [r for r in saved["runs"]
                     if (_set_of(r), r.get("dtype", "float32")) not in replaced] + runs
    own_dtype = [c.dtype for c in configs] == [c.dtype for c in plan.configs]
    key = name if own_dtype else f"{name} ({args.dtype})"
    # A record whose sets have no runs left (all replaced) goes, and so does a record of
    # several sets (saved before sets existed) that includes this one: its numbers are no
    # longer those of this set's runs.
    left = {_set_of(r) for r in saved["runs"]}
    saved["sections"] = {
        k: section for k, section in saved["sections"].items()
        if set(k.split(" (")[0].split(", ")) & left
        and not ("," in k and name in k.split(" (")[0].split(", "))}
    saved["sections"][key] = {
        "processes": processes, "repeats": repeats, "load": [load_before, load()],
        "wall_s": time.perf_counter() - start, "machine": machine(),
        "date": datetime.date.today().isoformat(),
        **({"fixed": (QUICK_SWEEP if args.quick else SWEEP)._asdict()}
           if name == "sweep" else {})}
    text = write(saved, args.results, stem, args.quick)   # after each set: partial results
  print(text)


if __name__ == "__main__":
  main()
