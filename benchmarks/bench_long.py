"""Forward passes over T = 100,000 steps in float32 (and bfloat16 compute): every gated cell
stays finite (issue #10's numerics record; the tests run the same at small sizes).

Each cell (B=4, D=H=128, default init) reads inputs drawn N(0, 3^2), large enough to
saturate gates, through ``jaxseq.unroll``'s default path. Reported per cell: whether every
output and the final carry are finite, the largest |output| and |carry| leaf, and the time
of the (compiled) run.

    python benchmarks/bench_long.py [--steps 100000]

Writes benchmarks/results/long.md.
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxseq

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import compiled, write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "long.md"

CELLS = {
    "lstm": lambda H: jaxseq.lstm(H),
    "lstm, chrono T_max = T": lambda H, T=None: jaxseq.lstm(H, chrono_t_max=float(T)),
    "lstm, bfloat16 compute": lambda H: jaxseq.lstm(H, dtype=jnp.bfloat16),
    "lstm, peephole + projection": lambda H: jaxseq.lstm(H, peephole=True, proj_size=H // 2),
    "gru": lambda H: jaxseq.gru(H),
    "gru, reset before": lambda H: jaxseq.gru(H, reset_after=False),
    "mgu": lambda H: jaxseq.mgu(H),
    "min_gru": lambda H: jaxseq.min_gru(H),
    "min_lstm": lambda H: jaxseq.min_lstm(H),
}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100_000)
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)
  T, B, D, H = args.steps, 4, 128, 128
  xs = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (B, T, D), jnp.float32)
  lines = ["# Long sequences: forward over T = {:,} steps".format(T), "",
           f"Device: {jax.default_backend()} ({platform.machine()}), jax {jax.__version__}; "
           f"{time.strftime('%Y-%m-%d')}. B={B}, D=H={H}, inputs N(0, 3^2), float32 params, "
           "default init, `unroll`'s default path. Regenerate with "
           "`python benchmarks/bench_long.py`.", "",
           "| cell | finite | max abs output | max abs carry | output dtype | seconds |",
           "| --- | --- | --- | --- | --- | --- |"]
  for name, make in CELLS.items():
    cell = make(H, T) if "chrono" in name else make(H)
    params = cell.init(jax.random.PRNGKey(0), D)
    run, _ = compiled(lambda p, x, cell=cell: jaxseq.unroll(cell, p, x), params, xs)
    start = time.perf_counter()
    ys, carry = run()
    seconds = time.perf_counter() - start
    leaves = [np.asarray(l, np.float32) for l in jax.tree.leaves(carry)]
    finite = bool(np.isfinite(np.asarray(ys, np.float32)).all()
                  and all(np.isfinite(l).all() for l in leaves))
    top_y = float(np.abs(np.asarray(ys, np.float32)).max())
    top_c = max(float(np.abs(l).max()) for l in leaves)
    lines.append(f"| {name} | {'yes' if finite else '**no**'} | {top_y:.4g} | {top_c:.4g} | "
                 f"{ys.dtype} | {seconds:.2f} |")
    print(lines[-1], flush=True)
  write(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
