"""Helpers the benchmark scripts share: timing, the loss, tables and the machine's description.

Not a benchmark. Each script makes this folder importable before ``import _common`` (run as
``python benchmarks/x.py`` it already is; loaded by file path, as the tests load the
scripts, it is not)::

    _HERE = str(pathlib.Path(__file__).resolve().parent)
    if _HERE not in sys.path:
      sys.path.insert(0, _HERE)

JAX is imported inside the functions that need it, so that importing this module leaves JAX
unloaded (``bench_gpu.py`` sets XLA's environment before JAX loads).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable


def script(name: str):
  """The benchmark script ``benchmarks/<name>.py`` loaded as a module (one script reusing
  another's models: ``bench_kernels.model``)."""
  path = pathlib.Path(__file__).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ----------------------------------------------------------------------------- timing


def timed(call: Callable[[], Any]) -> float:
  """Wall seconds of one ``call()``."""
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def compiled(fn, *args):
  """``fn`` jitted and compiled on ``args``: ``(call, compile seconds)``, ``call()`` a
  blocking call on ``args`` that returns the outputs; the compile time is the first call's."""
  import jax
  jitted = jax.jit(fn)
  call = lambda: jax.block_until_ready(jitted(*args))
  return call, timed(call)


def interleaved(calls: dict, repeats: int) -> dict:
  """Median seconds of each call, the calls timed in turn ``repeats`` times."""
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      times[name].append(timed(call))
  return {name: statistics.median(ts) for name, ts in times.items()}


def loss(ys):
  """The benchmarks' loss: ``sum(ys ** 2)``, summed in float32."""
  import jax.numpy as jnp
  return jnp.sum(jnp.square(ys.astype(jnp.float32)))


def loss_grad(apply):
  """The gradient of ``loss(apply(params, xs))`` for the params, a function of
  ``(params, xs)``."""
  import jax
  return jax.grad(lambda p, x: loss(apply(p, x)))


# ----------------------------------------------------------------------------- report


def ms(seconds: float | None) -> str:
  """``seconds`` for a table: µs below 1 ms, ms with 2 decimals below 10 ms and 1 above;
  ``None`` (no time) as ``"n/a"``."""
  if seconds is None:
    return "n/a"
  if abs(seconds) < 1e-3:
    return f"{seconds * 1e6:.0f} µs"
  return f"{seconds * 1e3:.{2 if abs(seconds) < 1e-2 else 1}f} ms"


def write(path, text: str) -> None:
  """Writes ``text`` to ``path``, making its folder where missing, and says so."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(f"wrote {path}")


def table(head: str, rows: list) -> list:
  """A markdown table's lines: ``head``, the rule under it, ``rows``, then a blank line."""
  return [head, "| " + " | ".join("---" for _ in head.strip("|").split("|")) + " |", *rows, ""]


def load() -> float:
  """The 1-minute load average (NaN where the system does not tell)."""
  try:
    return float(os.getloadavg()[0])
  except OSError:
    return float("nan")


def version(module: str) -> str:
  """``module``'s ``__version__``, or ``"not installed"`` where it does not import."""
  try:
    return importlib.import_module(module).__version__
  except Exception:
    return "not installed"


def machine() -> dict:
  """The host: CPU model, architecture, CPUs visible, JAX's backend and Python's version
  (the scripts add their libraries' versions)."""
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {"cpu": cpu, "arch": platform.machine(), "cpus": os.cpu_count(),
          "backend": jax.default_backend(), "python": platform.python_version()}
