"""The dense products' forms: over leading axes or flattened rows; a weight as given or
transposed once; the products alone against whole models.

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

3. The products alone against whole models: the matrix products of an LSTM (4 gates) or GRU
   (3 gates) over a sequence, with nothing else (no bias, no gate, the new ``h`` the first
   ``H`` columns of ``gx_t + h W_hh``), timed with jaxseq's fused path and Flax linen
   (``bench_kernels.model``) in one process. Forward: per step ``x_t W_ih + h W_hh``
   (Flax's form; measured faster here than one ``(T·B, D) W_ih`` product before the loop,
   ``gx`` being larger than the cache); forward+backward: the fused path's products, that
   forward, a reverse scan of ``dz_t W_hh^T`` and ``dW_hh = H^T dZ``, ``dW_ih = X^T dZ``,
   ``dX = dZ W_ih^T`` over ``T·B`` rows. Every library's time at least that of its
   products; at the same GEMM engine, the rest (gates, loop, residual buffers) is what a
   library can save, so this table bounds the ratio to Flax that is reachable.

The forms interleaved, medians of ``--repeats``; sections 1 and 2 in one process, their
ratios the first form's time over the second's (> 1: the second, jaxseq's, is faster);
section 3 in ``--processes`` fresh processes. ``--quick`` is a smoke run at tiny sizes, in
one process.

    python benchmarks/bench_products.py [--quick] [--out PATH]

Writes benchmarks/results/products.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq.kernels.xla import matmul

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import compiled, interleaved, load, loss_grad, ms, script, write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "products.md"
SHAPES = ((4096, 16, 128, 256), (256, 32, 128, 1024), (256, 32, 128, 768),
          (256, 32, 256, 1024), (100, 16, 32, 512))
QUICK_SHAPES = ((6, 2, 4, 8), (5, 3, 2, 4))
FORMS = {"leading axes": jnp.matmul, "rows": matmul}
STEPS = ((256, 32, 256, 1024), (256, 32, 256, 768), (100, 16, 128, 512), (100, 16, 128, 384))
QUICK_STEPS = ((5, 2, 4, 8),)
WEIGHTS = ("as given", "transposed once")
FLOORS = (("lstm", 32, 256, 128, 256), ("gru", 32, 256, 128, 256),
          ("lstm", 16, 100, 32, 128), ("gru", 16, 100, 32, 128))
QUICK_FLOORS = (("gru", 2, 5, 3, 4),)
GATES = {"lstm": 4, "gru": 3}
MODELS = ("products alone", "jaxseq xla", "Flax linen")
MODES = ("forward", "forward+backward")


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


def products(T: int, B: int, D: int, H: int, G: int) -> tuple:
  """``(forward, both, operands)``: a ``G``-gate cell's matrix products alone over ``T``
  steps (see the module docstring), functions of ``operands = (xs, w_ih, w_hh, dys)``;
  ``both`` returns the outputs and the cotangents ``(dW_ih, dW_hh, dX)`` of ``<hs, dys>``."""
  keys = jax.random.split(jax.random.PRNGKey(T * B + D + H + G), 4)
  xs = jax.random.normal(keys[0], (T, B, D))
  w_ih = jax.random.normal(keys[1], (D, G * H)) / D ** 0.5
  w_hh = 0.9 * jax.random.normal(keys[2], (H, G * H)) / H ** 0.5   # h neither grows nor dies
  dys = jax.random.normal(keys[3], (T, B, H))

  def forward(xs, w_ih, w_hh, dys):
    step = lambda h, x: ((x @ w_ih + h @ w_hh)[:, :H],) * 2
    return lax.scan(step, jnp.zeros((B, H)), xs)[1]

  def both(xs, w_ih, w_hh, dys):
    hs = forward(xs, w_ih, w_hh, dys)
    w_t = w_hh.T
    back = lambda dh, dy: (lambda dz: (dz @ w_t, dz))(
        jnp.pad(dh + dy, ((0, 0), (0, (G - 1) * H))))
    dzs = lax.scan(back, jnp.zeros((B, H)), dys, reverse=True)[1].reshape(T * B, G * H)
    h_prev = jnp.concatenate([jnp.zeros((1, B, H)), hs[:-1]]).reshape(T * B, H)
    return (hs, xs.reshape(T * B, D).T @ dzs, h_prev.T @ dzs,
            matmul(dzs, w_ih.T).reshape(T, B, D))
  return forward, both, (xs, w_ih, w_hh, dys)


def floor_calls(cell: str, B: int, T: int, D: int, H: int) -> dict:
  """``{(model, mode): call}``: the products alone, jaxseq's fused path and Flax linen
  (``bench_kernels.model``; forward+backward the gradient of ``sum(ys ** 2)``)."""
  bench = script("bench_kernels")
  forward, both, operands = products(T, B, D, H, GATES[cell])
  out = {("products alone", "forward"): compiled(forward, *operands)[0],
         ("products alone", "forward+backward"): compiled(both, *operands)[0]}
  for model, name in zip(MODELS[1:], ("xla", "flax")):
    apply, params, xs = bench.model(name, bench.Config("floor", cell, B, T, D, H))
    out[model, "forward"] = compiled(apply, params, xs)[0]
    out[model, "forward+backward"] = compiled(loss_grad(apply), params, xs)[0]
  return out


def measure_floors(configs, repeats: int, processes: int = 0) -> list:
  """``[(config, [{(model, mode): median seconds}, ...])]``: one dict per process, the
  configurations measured in ``processes`` fresh processes one after the other (0: in this
  one). On this shared machine a ratio moves more from one process to the next than inside
  one (``kernels.md``), so the report gives each ratio's median and range over them."""
  if not processes:
    return [(config, [interleaved(floor_calls(*config), repeats)]) for config in configs]
  runs = []
  for _ in range(processes):
    out = subprocess.run([sys.executable, __file__, "--floor-worker", json.dumps(
        [list(configs), repeats])], check=True, capture_output=True, text=True).stdout
    runs.append(json.loads(out.strip().splitlines()[-1]))
  return [(config, [_parsed(run[i]) for run in runs]) for i, config in enumerate(configs)]


def _parsed(times: dict) -> dict:
  """A worker's ``{"model|mode": seconds}`` as ``{(model, mode): seconds}``."""
  return {tuple(key.split("|")): t for key, t in times.items()}


def _floor_worker(argument: str) -> None:
  """Prints, as one JSON line, the floor times of ``[configs, repeats]``."""
  configs, repeats = json.loads(argument)
  print(json.dumps([{"|".join(key): t for key, t in interleaved(floor_calls(*config),
                                                                 repeats).items()}
                    for config in configs]))


def report(rows, steps, floors, repeats: int, loads: tuple, seconds: float) -> str:
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
  lines += [
      "", "## The products alone against whole models", "",
      "*products alone*: the cell's matrix products over the sequence with nothing else "
      "(the module docstring says which); *jaxseq xla*: `jaxseq.unroll`, the fused path; "
      "*Flax linen*: `nn.RNN` of `OptimizedLSTMCell` / `GRUCell`; forward+backward: the "
      "gradient of `sum(ys ** 2)` (the products alone: the same products' backward). The "
      "issue's targets are xla / Flax at most 0.8x forward and 0.75x forward+backward; "
      "products / Flax is the least xla / Flax can be while the rest costs anything.", "",
      f"Measured in {len(floors[0][1]) if floors else 0} process(es) one after the other, "
      "each interleaving the three; times are medians over the processes, ratios the "
      "median of each process's ratio with their range in brackets.", "",
      "| cell | B, T, D, H | mode | products alone | jaxseq xla | Flax linen | "
      "products / Flax | xla / Flax |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for (cell, B, T, D, H), runs in floors:
    for mode in MODES:
      alone, xla, flax = (statistics.median(run[model, mode] for run in runs)
                          for model in MODELS)
      lines.append(f"| {cell} | {B}, {T}, {D}, {H} | {mode} | {ms(alone)} | {ms(xla)} | "
                   f"{ms(flax)} | {_ratio(runs, 'products alone', mode)} | "
                   f"{_ratio(runs, 'jaxseq xla', mode)} |")
  return "\n".join(lines) + "\n"


def _ratio(runs: list, model: str, mode: str) -> str:
  """The median over processes of ``model``'s time over Flax linen's, with the range."""
  ratios = sorted(run[model, mode] / run["Flax linen", mode] for run in runs)
  spread = f" [{ratios[0]:.2f}-{ratios[-1]:.2f}]" if len(ratios) > 1 else ""
  return f"{statistics.median(ratios):.2f}x{spread}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats")
  parser.add_argument("--repeats", type=int, default=11)
  parser.add_argument("--processes", type=int, default=3,
                      help="fresh processes for the floor table (0: this one)")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument("--floor-worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.floor_worker:
    return _floor_worker(args.floor_worker)
  repeats = 3 if args.quick else args.repeats
  start, load_before = time.perf_counter(), load()
  rows = measure(QUICK_SHAPES if args.quick else SHAPES, repeats)
  steps = measure_steps(QUICK_STEPS if args.quick else STEPS, repeats)
  floors = measure_floors(QUICK_FLOORS if args.quick else FLOORS, repeats,
                          0 if args.quick else args.processes)
  text = report(rows, steps, floors, repeats, (load_before, load()), time.perf_counter() - start)
  out = args.out or (RESULTS.with_name("products-quick.md") if args.quick else RESULTS)
  write(out, text)
  print(text)


if __name__ == "__main__":
  main()
