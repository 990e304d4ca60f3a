"""Speed and memory of ``jaxseq.unroll`` against its peers, measured in one run.

* Speed: forward+backward of a 1-layer LSTM over (B, T, D) on the default JAX device,
  jaxseq vs Flax linen ``nn.RNN(nn.OptimizedLSTMCell)`` vs PyTorch ``nn.LSTM`` (CPU), as a
  ratio to jaxseq (median of repeated timings after warm-up).
* Memory: XLA's compiled temp memory for the gradient of a long sequence with
  ``remat=False``, ``remat=True`` (chunks of about sqrt(T)) and ``remat=32``.

    python benchmarks/bench_unroll.py [--quick]

Writes benchmarks/results/unroll.md.
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp

import jaxseq

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import interleaved, ms, write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "unroll.md"


def timed(fn, repeats):
  """Median seconds of ``repeats`` calls of ``fn`` after a warm-up call (compilation), ``fn``
  alone (the peers are timed one after the other, not interleaved)."""
  fn()
  return interleaved({"fn": fn}, repeats)["fn"]


def jaxseq_fn(B, T, D, H):
  cell = jaxseq.lstm(H)
  params = cell.init(jax.random.PRNGKey(0), D)
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  loss = jax.jit(jax.grad(lambda p, x: jnp.sum(jaxseq.unroll(cell, p, x)[0] ** 2)))
  return lambda: jax.block_until_ready(loss(params, xs))


def flax_fn(B, T, D, H):
  import flax.linen as nn
  model = nn.RNN(nn.OptimizedLSTMCell(H))
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  params = model.init(jax.random.PRNGKey(0), xs)
  loss = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2)))
  return lambda: jax.block_until_ready(loss(params, xs))


def torch_fn(B, T, D, H):
  import torch
  module = torch.nn.LSTM(D, H, batch_first=True)
  xs = torch.randn(B, T, D)

  def run():
    module.zero_grad()
    (module(xs)[0] ** 2).sum().backward()
  return run


def temp_bytes(T, remat, B=16, D=32, H=128):
  cell = jaxseq.lstm(H)
  params = cell.init(jax.random.PRNGKey(0), D)
  xs = jnp.zeros((B, T, D))
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jaxseq.unroll(cell, p, x, remat=remat)[0][:, -1])))
  stats = grad.lower(params, xs).compile().memory_analysis()
  return None if stats is None else stats.temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
  args = parser.parse_args()
  repeats = 3 if args.quick else 10
  shapes = [(16, 50, 32, 64)] if args.quick else [(16, 100, 32, 128), (64, 200, 64, 256)]
  lines = ["# unroll: speed and memory", "",
           f"Device: {jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}. "
           "Regenerate with `python benchmarks/bench_unroll.py`.", "",
           "## Forward + backward of a 1-layer LSTM (median seconds; ratio = peer / jaxseq)", "",
           "| B, T, D, H | jaxseq | Flax nn.RNN(OptimizedLSTMCell) | PyTorch nn.LSTM (CPU) |",
           "| --- | --- | --- | --- |"]
  for shape in shapes:
    t_ours = timed(jaxseq_fn(*shape), repeats)
    t_flax = timed(flax_fn(*shape), repeats)
    t_torch = timed(torch_fn(*shape), repeats)
    lines.append(f"| {shape} | {ms(t_ours)} | {ms(t_flax)} ({t_flax / t_ours:.2f}x) | "
                 f"{ms(t_torch)} ({t_torch / t_ours:.2f}x) |")
    print(lines[-1])
  lines += ["", "## Gradient memory with checkpointed BPTT (XLA temp bytes, B=16, D=32, H=128)",
            "", "| T | remat=False | remat=True (√T chunks) | remat=32 |",
            "| --- | --- | --- | --- |"]
  for T in ([256] if args.quick else [256, 1024, 4096]):
    sizes = [temp_bytes(T, r) for r in (False, True, 32)]
    cells = ["n/a" if s is None else f"{s / 2**20:.2f} MiB" for s in sizes]
    lines.append(f"| {T} | " + " | ".join(cells) + " |")
    print(lines[-1])
  write(RESULTS, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
