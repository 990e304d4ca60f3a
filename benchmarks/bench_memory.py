"""Memory of backpropagation through time over T = 100,000 steps (issue #8's target).

An LSTM (B=4, D=H=128, float32) over T=100,000 steps: each measurement runs in a fresh
Python process (peak RSS is per process) that compiles and runs either the forward pass
alone or the forward + backward pass (gradient of a loss over all outputs, for params
and inputs), with ``remat`` off or on, on ``unroll``'s default path (the fused XLA kernel,
chunked under ``jax.checkpoint`` with ``remat``) and on the reference scan. Reported:

* peak RSS of the process (``resource.getrusage``'s ``ru_maxrss``) and the memory the
  backward pass adds: peak(forward + backward) - peak(forward), same settings;
* XLA's compiled temp bytes of the jitted function (``memory_analysis()``).

The target: with ``remat=True`` the backward adds at most 0.25x what it adds without.

    python benchmarks/bench_memory.py [--steps 100000] [--quick]

Writes benchmarks/results/memory.md.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import time

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "memory.md"

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
import jaxseq
T, B, D, H, mode, remat, kernel = json.loads(sys.argv[1])
cell = jaxseq.lstm(H)
params = cell.init(jax.random.PRNGKey(0), D)
xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
run = lambda p, x: jaxseq.unroll(cell, p, x, remat=remat, kernel=kernel)[0]
if mode == "forward":
  fn = jax.jit(run)
else:
  fn = jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x) ** 2), argnums=(0, 1)))
compiled = fn.lower(params, xs).compile()
stats = compiled.memory_analysis()
temp = None if stats is None else stats.temp_size_in_bytes
start = time.perf_counter()
jax.block_until_ready(compiled(params, xs))
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
print("RESULT" + json.dumps({"rss": rss, "temp": temp, "seconds": seconds}))
"""


def measure(T, B, D, H, mode, remat, kernel) -> dict:
  run = subprocess.run([sys.executable, "-c", CHILD,
                        json.dumps([T, B, D, H, mode, remat, kernel])],
                       capture_output=True, text=True, check=True)
  line = [l for l in run.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def mib(n) -> str:
  return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100_000)
  parser.add_argument("--quick", action="store_true", help="smoke run, T=500")
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)
  import jax
  T = 500 if args.quick else args.steps
  B, D, H = 4, 128, 128
  rows = []
  for kernel in ("auto", "reference"):
    for remat in (False, True):
      got = {mode: measure(T, B, D, H, mode, remat, kernel)
             for mode in ("forward", "forward+backward")}
      added = got["forward+backward"]["rss"] - got["forward"]["rss"]
      rows.append((kernel, remat, got, added))
      print(kernel, remat, {m: mib(v["rss"]) for m, v in got.items()}, "added", mib(added),
            flush=True)
  lines = ["# Memory of BPTT over a long sequence", "",
           f"Device: {jax.default_backend()} ({platform.machine()}), jax {jax.__version__}; "
           f"{time.strftime('%Y-%m-%d')}. LSTM B={B}, D=H={H}, T={T:,}, float32; each cell "
           "of the table is a fresh process. Regenerate with "
           "`python benchmarks/bench_memory.py`. Times are one run each, not interleaved "
           "with peers: indicative only (compare the memory columns).", "",
           "| kernel | remat | peak RSS forward | peak RSS forward+backward | added by the "
           "backward | XLA temp forward+backward | time forward+backward |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for kernel, remat, got, added in rows:
    fb = got["forward+backward"]
    lines.append(f"| {kernel} | {remat} | {mib(got['forward']['rss'])} | {mib(fb['rss'])} | "
                 f"{mib(added)} | {mib(fb['temp'])} | {fb['seconds']:.2f} s |")
  lines.append("")
  for kernel in ("auto", "reference"):
    plain, remat = (added for k, r, _, added in rows if k == kernel)
    ratio = remat / plain if plain > 0 else float("nan")
    lines.append(f"- `{kernel}`: the backward adds {mib(remat)} with `remat=True` against "
                 f"{mib(plain)} without: **{ratio:.3f}x** (target <= 0.25x).")
  write(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
