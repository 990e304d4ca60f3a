"""What ``lengths`` cost: a 2-layer bidirectional LSTM with and without per-example lengths,
jaxseq ``stack(bidirectional(lstm), bidirectional(lstm))`` against Flax linen
``nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell))`` x2 with and without ``seq_lengths``.

Forward+backward of a summed-squares loss under ``jax.jit``: compile time (lowering and
XLA compilation of the gradient, first call) and the steady step (median of repeated calls
after warm-up). Ratios are within one run on one machine.

    python benchmarks/bench_lengths.py [--quick]

Writes benchmarks/results/lengths.md.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxseq

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import compiled, interleaved, write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "lengths.md"


def _inputs(B, T, D):
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  lengths = jnp.asarray(np.random.default_rng(0).integers(T // 2, T + 1, B), jnp.int32)
  return xs, lengths


def jaxseq_grad(B, T, D, H, with_lengths):
  layer = jaxseq.stack(jaxseq.bidirectional(jaxseq.lstm(H)),
                       jaxseq.bidirectional(jaxseq.lstm(H)))
  params = layer.init(jax.random.PRNGKey(0), D)
  xs, lengths = _inputs(B, T, D)

  def loss(p, x, n):
    ys, _ = layer.apply(p, x, lengths=n if with_lengths else None)
    return jnp.sum(ys ** 2)
  return jax.grad(loss), (params, xs, lengths)


def flax_grad(B, T, D, H, with_lengths):
  import flax.linen as nn

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x, seq_lengths=None):
      for _ in range(2):
        x = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(H)),
                             nn.RNN(nn.OptimizedLSTMCell(H)))(x, seq_lengths=seq_lengths)
      return x

  model = Model()
  xs, lengths = _inputs(B, T, D)
  params = model.init(jax.random.PRNGKey(0), xs)

  def loss(p, x, n):
    ys = model.apply(p, x, seq_lengths=n if with_lengths else None)
    if with_lengths:  # Flax leaves garbage past the lengths: compare like with like
      ys = jnp.where(jnp.arange(x.shape[1])[None, :, None] < n[:, None, None], ys, 0)
    return jnp.sum(ys ** 2)
  return jax.grad(loss), (params, xs, lengths)


def measure(make, shape, with_lengths, repeats):
  """``(compile seconds, median step seconds)`` of ``make``'s gradient under ``jax.jit``."""
  fn, args = make(*shape, with_lengths)
  step, compile_s = compiled(fn, *args)
  return compile_s, interleaved({"step": step}, repeats)["step"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
  args = parser.parse_args()
  repeats = 3 if args.quick else 10
  shapes = [(8, 50, 16, 32)] if args.quick else [(16, 100, 32, 128)]
  lines = ["# The cost of `lengths`", "",
           f"Device: {jax.devices()[0].device_kind} ({platform.machine()}, "
           f"{os.cpu_count()} CPUs), jax {jax.__version__}. Regenerate with "
           "`python benchmarks/bench_lengths.py`. 2-layer bidirectional LSTM, "
           "forward+backward under jit; lengths drawn in [T/2, T].", "",
           "| B, T, D, H | library | lengths | compile (s) | step (ms) | step vs no lengths |",
           "| --- | --- | --- | --- | --- | --- |"]
  for shape in shapes:
    for name, make in (("jaxseq", jaxseq_grad), ("Flax", flax_grad)):
      base = None
      for with_lengths in (False, True):
        compile_s, step_s = measure(make, shape, with_lengths, repeats)
        base = step_s if base is None else base
        lines.append(f"| {shape} | {name} | {'yes' if with_lengths else 'no'} | "
                     f"{compile_s:.2f} | {step_s * 1e3:.1f} | {step_s / base:.2f}x |")
        print(lines[-1], flush=True)
  write(RESULTS, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
