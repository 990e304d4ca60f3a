"""The dense product over several leading axes: as it comes, or on its flattened rows.

A dense cell's input half is ``x W`` with ``x`` of shape ``(T, B, D)``, and the fused path's
hoisted weight gradients are ``A^T Delta`` over ``(T, B)`` rows. Written as one
``jnp.matmul`` of the 3-D operand, XLA:CPU's weight gradient contracts two axes; written on
``x.reshape(-1, D)`` (``jaxseq.kernels.xla.matmul``, the dense cells' linear map), every
product is 2-D. This script times both, forward (``y = x W``) and forward+backward (``y`` and
the gradients of ``<y, c>`` for ``x`` and ``W``, ``c`` a fixed cotangent: exactly the
products ``c W^T`` and ``x^T c``), at the shapes the benchmarks use:

* the ``min_gru`` target's input half, (T, B, D) = (4096, 16, 128) to 2H = 256 columns;
* the reference size's input half, (256, 32, 128) to 4H = 1024 (LSTM) and 3H = 768 (GRU);
* the reference size's recurrent weight gradient, (256, 32, 256) to 1024;
* the ``small`` size's LSTM input half, (100, 16, 32) to 512.

One process, the two forms interleaved, medians of ``--repeats``; ratios are leading axes /
rows (> 1: the flattened form is faster). ``--quick`` is a smoke run at tiny sizes.

    python benchmarks/bench_products.py [--quick] [--out PATH]

Writes benchmarks/results/products.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp

from jaxseq.kernels.xla import matmul

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import compiled, interleaved, load, ms, write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "products.md"
SHAPES = ((4096, 16, 128, 256), (256, 32, 128, 1024), (256, 32, 128, 768),
          (256, 32, 256, 1024), (100, 16, 32, 512))
QUICK_SHAPES = ((6, 2, 4, 8), (5, 3, 2, 4))
FORMS = {"leading axes": jnp.matmul, "rows": matmul}


def calls(T: int, B: int, D: int, G: int) -> dict:
  """``{(form, mode): call}``, each compiled on the same operands."""
  keys = jax.random.split(jax.random.PRNGKey(T * B + D + G), 3)
  x = jax.random.normal(keys[0], (T, B, D))
  w = jax.random.normal(keys[1], (D, G)) / D ** 0.5
  c = jax.random.normal(keys[2], (T, B, G))
  out = {}
  for form, product in FORMS.items():
    both = jax.value_and_grad(lambda x, w, p=product: jnp.vdot(p(x, w), c), argnums=(0, 1))
    for mode, fn in (("forward", product), ("forward+backward", both)):
      out[form, mode], _ = compiled(fn, x, w)
  return out


def measure(shapes, repeats: int) -> list:
  """``[(shape, {(form, mode): median seconds})]``, the calls of each shape interleaved."""
  return [(shape, interleaved(calls(*shape), repeats)) for shape in shapes]


def report(rows, repeats: int, loads: tuple, seconds: float) -> str:
  lines = [
      "# The dense product over leading axes, as it comes and on its flattened rows", "",
      f"Device: {jax.default_backend()} ({platform.machine()}, {os.cpu_count()} cores), "
      f"jax {jax.__version__}, float32; {datetime.date.today()}. One process, medians of "
      f"{repeats} interleaved repeats; load average {loads[0]:.1f} at the start, "
      f"{loads[1]:.1f} at the end ({seconds:.0f} s). Regenerate with "
      "`python benchmarks/bench_products.py`.", "",
      "*leading axes*: `jnp.matmul(x, w)` with `x` of shape (T, B, D); *rows*: "
      "`jaxseq.kernels.xla.matmul`, the same product on `x.reshape(-1, D)`. "
      "Forward+backward: `y` and the gradients of `<y, c>` for `x` and `w`. "
      "Ratio: leading axes / rows (> 1: rows faster).", "",
      "| (T, B, D) -> columns | mode | leading axes | rows | ratio |",
      "| --- | --- | --- | --- | --- |"]
  for (T, B, D, G), times in rows:
    for mode in ("forward", "forward+backward"):
      lead, flat = times["leading axes", mode], times["rows", mode]
      lines.append(f"| ({T}, {B}, {D}) -> {G} | {mode} | {ms(lead)} | {ms(flat)} | "
                   f"{lead / flat:.2f}x |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats")
  parser.add_argument("--repeats", type=int, default=11)
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args()
  repeats = 3 if args.quick else args.repeats
  start, load_before = time.perf_counter(), load()
  rows = measure(QUICK_SHAPES if args.quick else SHAPES, repeats)
  text = report(rows, repeats, (load_before, load()), time.perf_counter() - start)
  out = args.out or (RESULTS.with_name("products-quick.md") if args.quick else RESULTS)
  write(out, text)
  print(text)


if __name__ == "__main__":
  main()
