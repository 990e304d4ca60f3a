"""The dense products' forms: over leading axes or flattened rows; a weight as given or
transposed once.

1. Leading axes. A dense cell's input half is ``x W`` with ``x`` of shape ``(T, B, D)``, and
   the fused path's hoisted weight gradients are ``A^T Delta`` over ``(T, B)`` rows. Written
   as one ``jnp.matmul`` of the 3-D operand, XLA:CPU's weight gradient contracts two axes;
   written on ``x.reshape(-1, D)`` (``jaxseq.kernels.xla.matmul``, the dense cells' linear
   map), every product is 2-D. Both are timed forward (``y = x W``) and forward+backward
   (``y`` and the gradients of ``<y, c>`` for ``x`` and ``W``, ``c`` a fixed cotangent:
   exactly the products ``c W^T`` and ``x^T c``), at the shapes the benchmarks use: the
   ``min_gru`` target's input half, (4096, 16, 128) to 2H = 256 columns; the reference
   size's input half to 4H = 1024 (LSTM) and 3H = 768 (GRU), and its recurrent weight
   gradient, (256, 32, 256) to 1024; the ``small`` size's LSTM input half, (100, 16, 32)
   to 512.
2. The backward scan's product. Each step of the fused path's backward multiplies the
   ``(B, G)`` cotangent by ``W_hh^T``. A 256-step ``lax.scan`` of
   ``h = tanh(c_t W^T + h)`` is timed with ``W`` (``(H, G)``) as given, the product then
   contracting ``W``'s columns, against ``W`` transposed once outside the loop (``(G, H)``,
   a plain product; what ``jaxseq.kernels.xla`` gives its backward scan), at the reference
   and ``small`` sizes.

One process, the forms interleaved, medians of ``--repeats``; ratios are the first form's
time over the second's (> 1: the second, jaxseq's, is faster). ``--quick`` is a smoke run
at tiny sizes.

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
from jax import lax

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
STEPS = ((256, 32, 256, 1024), (256, 32, 256, 768), (100, 16, 128, 512), (100, 16, 128, 384))
QUICK_STEPS = ((5, 2, 4, 8),)
WEIGHTS = ("as given", "transposed once")


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


def step_calls(T: int, B: int, H: int, G: int) -> dict:
  """``{weight: call}``: the scan ``h = tanh(c_t W^T + h)`` over ``T`` steps, ``W`` (H, G)
  as given or transposed before the loop."""
  keys = jax.random.split(jax.random.PRNGKey(T * B + H + G), 2)
  w = jax.random.normal(keys[0], (H, G)) / G ** 0.5
  cs = jax.random.normal(keys[1], (T, B, G))

  def scan(weight, product):
    body = lambda h, c: (jnp.tanh(product(c, weight) + h), None)
    return lax.scan(body, jnp.zeros((B, H)), cs)[0]
  given = lambda w: scan(w, lambda c, w: lax.dot_general(c, w, (((1,), (1,)), ((), ()))))
  once = lambda w: scan(w.T, jnp.matmul)
  return {name: compiled(fn, w)[0] for name, fn in zip(WEIGHTS, (given, once))}


def measure_steps(shapes, repeats: int) -> list:
  """``[(shape, {weight: median seconds})]``."""
  return [(shape, interleaved(step_calls(*shape), repeats)) for shape in shapes]


def report(rows, steps, repeats: int, loads: tuple, seconds: float) -> str:
  lines = [
      "# The dense products' forms", "",
      f"Device: {jax.default_backend()} ({platform.machine()}, {os.cpu_count()} cores), "
      f"jax {jax.__version__}, float32; {datetime.date.today()}. One process, medians of "
      f"{repeats} interleaved repeats; load average {loads[0]:.1f} at the start, "
      f"{loads[1]:.1f} at the end ({seconds:.0f} s). Regenerate with "
      "`python benchmarks/bench_products.py`.", "",
      "## Over leading axes or flattened rows", "",
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
  lines += [
      "", "## The backward scan's product: the weight as given or transposed once", "",
      "`h = tanh(c_t W^T + h)` over T steps: *as given*, `W` of shape (H, G), the product "
      "contracting its columns; *transposed once*, `W.T` made before the loop, a plain "
      "product. Ratio: as given / transposed once (> 1: transposed once faster).", "",
      "| T, B, G -> H | as given | transposed once | ratio |", "| --- | --- | --- | --- |"]
  for (T, B, H, G), times in steps:
    given, once = (times[name] for name in WEIGHTS)
    lines.append(f"| {T}, {B}, {G} -> {H} | {ms(given)} | {ms(once)} | {given / once:.2f}x |")
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
  steps = measure_steps(QUICK_STEPS if args.quick else STEPS, repeats)
  text = report(rows, steps, repeats, (load_before, load()), time.perf_counter() - start)
  out = args.out or (RESULTS.with_name("products-quick.md") if args.quick else RESULTS)
  write(out, text)
  print(text)


if __name__ == "__main__":
  main()
