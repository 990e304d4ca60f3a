"""Where the time goes: a per-operation profile of one call of each sequence path.

For one configuration (cell, B, T, D, H) and mode (forward, or forward+backward: the
gradient of ``sum(ys ** 2)`` for the parameters), each implementation is compiled, warmed up,
then called ``--calls`` times under ``jax.profiler.trace(..., create_perfetto_trace=True)``.
The trace's events whose names are instructions of the compiled program (its HLO text) are
the operations XLA ran; each event's *self* time is its duration minus that of the events
nested in it on the same thread (a ``while`` contains its body's operations). The report
gives, per implementation and per call: the wall time, the self time of matrix products
(``dot``, ``convolution`` and fusions that call one: on XLA:CPU the ``ynn_fusion``s), of
everything else, and the operations that took longest, with how often they ran per call
and their result shapes. Times are one process on a shared machine: compare the rows of
one run, and run it again before citing a number.

Implementations: ``bench_kernels.py``'s JAX models, by default ``xla`` (``jaxseq.unroll``,
the fused path), ``reference`` (``kernel="reference"``, ``lax.scan`` differentiated by JAX)
and ``flax`` (Flax linen ``nn.RNN`` of ``OptimizedLSTMCell`` / ``GRUCell``); also
``xla-store``, ``nnx``, ``equinox``, ``haiku``. Peers run LSTM and GRU only.

    python benchmarks/profile_kernels.py                      # LSTM and GRU, reference size
    python benchmarks/profile_kernels.py --cell min_gru --size 16,4096,128,128
    python benchmarks/profile_kernels.py --quick              # smoke: tiny size, one call

Writes benchmarks/results/profile.md (``--out`` elsewhere).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import platform
import re
import sys
import tempfile
import time

import jax

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import loss_grad, ms, script, write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "profile.md"
MODES = ("forward", "forward+backward")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?(?:\{[^}]*\})?) ([\w\-]+)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


BENCH = script("bench_kernels")   # the models this script profiles


def functions(cell_name: str, implementation: str, B: int, T: int, D: int, H: int):
  """``(forward, gradient, params, xs)`` of one implementation (``bench_kernels.model``):
  jittable functions of ``(params, xs)``, the gradient that of ``sum(ys ** 2)``."""
  forward, params, xs = BENCH.model(implementation, BENCH.Config("profile", cell_name, B, T,
                                                                 D, H))
  return forward, loss_grad(forward), params, xs


def instructions(hlo_text: str) -> dict:
  """``{name: (result shape, kind)}`` of every instruction of a compiled program's HLO text,
  ``kind`` being ``"matmul"`` for a ``dot``/``convolution`` or a fusion (or call) whose
  computation contains one, else the opcode."""
  computations, current, table = collections.defaultdict(set), None, {}
  for line in hlo_text.splitlines():
    start = _COMPUTATION.match(line)
    if start and line.rstrip().endswith("{"):
      current = start.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode = match.groups()
    table[name] = (shape, opcode, _CALLS.findall(line))
    computations[current].add(opcode)
    computations[current].update("->" + c for c in _CALLS.findall(line))

  def has_matmul(computation, seen=()):
    ops = computations.get(computation, set())
    return bool(ops & {"dot", "convolution"}) or any(
        has_matmul(op[2:], seen + (computation,)) for op in ops
        if op.startswith("->") and op[2:] not in seen)
  return {name: (shape, "matmul" if opcode in ("dot", "convolution") or any(
      has_matmul(c) for c in calls) else opcode) for name, (shape, opcode, calls)
          in table.items()}


def self_times(events: list, names: set) -> dict:
  """``{name: [total self seconds, count]}`` of the complete events named in ``names``:
  duration minus the durations of the named events directly nested in it on its thread."""
  by_thread = collections.defaultdict(list)
  for event in events:
    if event.get("ph") == "X" and event.get("name") in names:
      by_thread[(event.get("pid"), event.get("tid"))].append(event)
  totals = collections.defaultdict(lambda: [0.0, 0])
  for thread_events in by_thread.values():
    thread_events.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    stack = []          # [end, name, child time]
    def close(until):
      while stack and stack[-1][0] <= until:
        end, name, children, duration = stack.pop()
        totals[name][0] += (duration - children) * 1e-6
        totals[name][1] += 1
        if stack:
          stack[-1][2] += duration
    for event in thread_events:
      close(event["ts"])
      duration = event.get("dur", 0)
      stack.append([event["ts"] + duration, event["name"], 0.0, duration])
    close(float("inf"))
  return dict(totals)


def profile(fn, args, calls: int) -> dict:
  """Wall seconds per call and per-operation self times of ``jax.jit(fn)(*args)``."""
  jitted = jax.jit(fn)
  table = instructions(jitted.lower(*args).compile().as_text())
  for _ in range(2):
    jax.block_until_ready(jitted(*args))
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(jitted(*args))
      wall = (time.perf_counter() - start) / calls
    (trace,) = pathlib.Path(directory).rglob("perfetto_trace.json.gz")
    data = json.loads(gzip.decompress(trace.read_bytes()))
  events = data["traceEvents"] if isinstance(data, dict) else data
  ops = {name: {"seconds": total / calls, "count": count / calls, "shape": table[name][0],
                "kind": table[name][1]}
         for name, (total, count) in self_times(events, set(table)).items()}
  return {"wall_s": wall, "ops": ops}


def summary(result: dict) -> dict:
  ops = result["ops"].values()
  matmul = sum(op["seconds"] for op in ops if op["kind"] == "matmul")
  other = sum(op["seconds"] for op in ops) - matmul
  return {"wall_s": result["wall_s"], "matmul_s": matmul, "other_s": other,
          "outside_s": result["wall_s"] - matmul - other}


def report(results: dict, top: int) -> str:
  """Markdown of ``{(cell, size, mode): {implementation: profile}}``."""
  lines = ["# Where the time goes: per-operation profiles", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, "
           f"{jax.default_backend()} backend, jax {jax.__version__}. One process; times per "
           "call, averaged over the profiled calls. Self time: an operation's time minus "
           "the operations nested in it (a `while` loop's own time is its loop overhead); outside "
           "operations: the wall time no operation accounts for (dispatch, waits; below zero "
           "when operations ran on both threads at once). "
           "Regenerate with `python benchmarks/profile_kernels.py`.", ""]
  for (cell, size, mode), by_implementation in results.items():
    lines += [f"## {cell}, B, T, D, H = {size}, {mode}", "",
              "| implementation | wall | matmul self time | other operations' self time | "
              "outside operations |", "| --- | --- | --- | --- | --- |"]
    for name, result in by_implementation.items():
      s = summary(result)
      lines.append(f"| {name} | {ms(s['wall_s'])} | {ms(s['matmul_s'])} | "
                   f"{ms(s['other_s'])} | {ms(s['outside_s'])} |")
    for name, result in by_implementation.items():
      lines += ["", f"{name}, the {top} longest operations:", "",
                "| operation | kind | result | per call | time per call |",
                "| --- | --- | --- | --- | --- |"]
      ranked = sorted(result["ops"].items(), key=lambda item: -item[1]["seconds"])
      for op_name, op in ranked[:top]:
        lines.append(f"| `{op_name}` | {op['kind']} | `{op['shape']}` | "
                     f"{op['count']:g} | {ms(op['seconds'])} |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cell", default="lstm,gru", help="comma-separated cell names")
  parser.add_argument("--size", default="32,256,128,256", help="B,T,D,H")
  parser.add_argument("--implementations", default="xla,reference,flax")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--calls", type=int, default=5)
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--quick", action="store_true", help="tiny size, one call")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  size = (2, 5, 3, 4) if args.quick else tuple(int(v) for v in args.size.split(","))
  calls = 1 if args.quick else args.calls
  results = {}
  for cell in args.cell.split(","):
    for mode in args.modes.split(","):
      if mode not in MODES:
        parser.error(f"--modes: expected names from {MODES}, got {mode!r}")
      row = results.setdefault((cell, ", ".join(map(str, size)), mode), {})
      for name in args.implementations.split(","):
        if name in BENCH.JAX_PEERS and cell not in BENCH.CELLS:
          continue          # the peers' cells: LSTM and GRU
        forward, gradient, params, xs = functions(cell, name, *size)
        row[name] = profile(forward if mode == "forward" else gradient, (params, xs), calls)
        print(f"{cell} {mode} {name}: " + ", ".join(
            f"{k} {ms(v)}" for k, v in summary(row[name]).items()), flush=True)
  out = args.out or (RESULTS.with_name("profile-quick.md") if args.quick else RESULTS)
  write(out, report(results, args.top))
  return results


if __name__ == "__main__":
  main()
