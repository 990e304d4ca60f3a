"""Speed of the parallel-in-time ``min_gru`` / ``min_lstm`` against their sequential recurrence.

* Cells: ``jaxseq.unroll`` at B=16, D=H=128, T=256..4096, forward and forward+backward
  (gradient of a loss over all outputs for the params and the inputs): the sequential path
  (``lax.scan`` of the cell's ``recur``, autodiff through the loop: the cell with its kernel
  removed) against the cell's parallel kernel with each ``scan``.
* The issue's target: ``min_gru`` against ``gru`` (``unroll``'s default path) at T=4096,
  with what bounds min_gru's time from below: its input half alone (``x W + b`` and, for a
  fixed cotangent, its gradients for ``W, b, x``: three GEMMs over T·B rows) plus the
  sequential recurrence alone (the recurrence table's T=4096 row).
* The linear recurrence ``h_t = a_t h_{t-1} + b_t`` alone, (T, 16, 128): the two scans of
  ``jaxseq.cells.min_rnn.linear_recurrence``, a chunked two-level scan and the paper's
  log-space form (Heinsen 2023), measured to choose the default on this CPU.

Paths are timed interleaved (one call of each in turn, repeated), medians reported; compile
time (first call) apart. ``--quick`` is a smoke run at tiny sizes.

    python benchmarks/bench_min_rnn.py [--quick] [--out PATH]

Writes benchmarks/results/min_rnn.md.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

import jaxseq
from jaxseq.cells import min_rnn

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
from _common import compiled, interleaved, load, ms, write  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "min_rnn.md"


def cell_paths(make, B, T, D, H):
  """``{path: (forward, forward+backward)}`` as functions of ``(params, xs)``."""
  paths = {"sequential": make(H)._replace(kernel=None),
           "kernel, scan=sequential": make(H, scan="sequential"),
           "kernel, scan=associative": make(H, scan="associative")}
  out = {}
  for name, cell in paths.items():
    forward = lambda p, x, cell=cell: jaxseq.unroll(cell, p, x)[0]
    loss = lambda p, x, cell=cell: jnp.sum(jaxseq.unroll(cell, p, x)[0] ** 2)
    out[name] = (forward, jax.grad(loss, argnums=(0, 1)))
  return out


def bench_cells(make, Ts, B, D, H, repeats):
  rows = []
  params = make(H).init(jax.random.PRNGKey(0), D)
  for T in Ts:
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
    row = {"T": T}
    for mode, index in (("fwd", 0), ("fwd+bwd", 1)):
      calls, compile_s = {}, {}
      for name, fns in cell_paths(make, B, T, D, H).items():
        calls[name], compile_s[name] = compiled(fns[index], params, xs)
      row[mode] = interleaved(calls, repeats), compile_s
    rows.append(row)
    print(make.__name__, T,
          {m: {k: ms(v) for k, v in row[m][0].items()} for m in ("fwd", "fwd+bwd")}, flush=True)
  return rows


def cell_table(name, rows, B, D, H):
  lines = [f"### {name} (B={B}, D={D}, H={H})", "",
           "| T | mode | sequential | kernel, scan=sequential | kernel, scan=associative | "
           "compile (sequential / kernel seq / kernel assoc) |",
           "| --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    for mode in ("fwd", "fwd+bwd"):
      times, compile_s = row[mode]
      ref = times["sequential"]
      cells = [ms(ref)] + [f"{ms(times[k])} ({ref / times[k]:.2f}x)"
                           for k in ("kernel, scan=sequential", "kernel, scan=associative")]
      compiles = " / ".join(f"{compile_s[k]:.2f} s" for k in compile_s)
      lines.append(f"| {row['T']} | {mode} | " + " | ".join(cells) + f" | {compiles} |")
  return lines


def bench_gru_target(T, B, D, H, repeats):
  calls = {}
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  for name, make in (("gru", jaxseq.gru), ("min_gru", jaxseq.min_gru)):
    cell = make(H)
    params = cell.init(jax.random.PRNGKey(0), D)
    loss = lambda p, x, cell=cell: jnp.sum(jaxseq.unroll(cell, p, x)[0] ** 2)
    calls[name], _ = compiled(jax.grad(loss, argnums=(0, 1)), params, xs)
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (B, T, 2 * H))   # min_gru's 2H gates
  half = lambda p, x, cell=cell: jnp.vdot(cell.project(p, x), cotangent)   # cell: min_gru
  calls["min_gru input half"], _ = compiled(jax.grad(half, argnums=(0, 1)), params, xs)
  return interleaved(calls, repeats)


# ----------------------------------------------------------------------------- recurrence


def chunked(a, b, h0, chunk=64):
  """Two-level scan: chunk summaries (vectorised over chunks), a scan over chunk carries,
  then each chunk again from its carry. Not in the library: measured no faster here."""
  T = a.shape[0]
  n = -(-T // chunk)
  pad = n * chunk - T
  a = jnp.concatenate([a, jnp.ones((pad,) + a.shape[1:], a.dtype)])
  b = jnp.concatenate([b, jnp.zeros((pad,) + b.shape[1:], b.dtype)])
  a, b = (v.reshape((n, chunk) + v.shape[1:]) for v in (a, b))
  at = lambda v, j: lax.dynamic_index_in_dim(v, j, 1, keepdims=False)

  def summary(c, j):
    prod, h = c
    return (prod * at(a, j), at(a, j) * h + at(b, j)), None
  (prod, last), _ = lax.scan(summary, (jnp.ones_like(a[:, 0]), jnp.zeros_like(b[:, 0])),
                             jnp.arange(chunk))
  _, starts = lax.scan(lambda c, pl: (pl[0] * c + pl[1], c), h0, (prod, last))

  def again(c, j):
    h, out = c
    h = at(a, j) * h + at(b, j)
    return (h, lax.dynamic_update_index_in_dim(out, h, j, 1)), None
  (_, out), _ = lax.scan(again, (starts, jnp.zeros_like(a)), jnp.arange(chunk))
  return out.reshape((n * chunk,) + out.shape[2:])[:T]


def log_space(a, b, h0):
  """The paper's log-space evaluation (Heinsen 2023); needs b > 0 and h0 > 0."""
  a_star = jnp.cumsum(jnp.log(a), axis=0)
  values = jnp.concatenate([jnp.log(h0)[None], jnp.log(b) - a_star])
  return jnp.exp(lax.cumlogsumexp(values, axis=0)[1:] + a_star)


def bench_recurrence(Ts, B, H, repeats, log_space_max_t):
  rows = []
  for T in Ts:
    keys = jax.random.split(jax.random.PRNGKey(T), 2)
    a = jax.nn.sigmoid(jax.random.normal(keys[0], (T, B, H)))
    b = jax.nn.sigmoid(jax.random.normal(keys[1], (T, B, H)))    # positive, for log space
    h0 = jnp.full((B, H), 0.5)
    methods = {"sequential": lambda a, b, h: min_rnn.linear_recurrence(a, b, h, scan="sequential"),
               "associative": lambda a, b, h: min_rnn.linear_recurrence(a, b, h,
                                                                         scan="associative"),
               "chunked (64)": chunked}
    if T <= log_space_max_t:
      methods["log space"] = log_space
    row = {"T": T}
    for mode in ("fwd", "fwd+bwd"):
      calls = {}
      for name, fn in methods.items():
        if mode == "fwd+bwd":
          fn = jax.grad(lambda a, b, h, fn=fn: jnp.sum(fn(a, b, h) ** 2), argnums=(0, 1, 2))
        calls[name], _ = compiled(fn, a, b, h0)
      row[mode] = interleaved(calls, repeats if T <= 1024 else max(3, repeats // 2))
    rows.append(row)
    print("recurrence", T, {m: {k: ms(v) for k, v in row[m].items()} for m in ("fwd", "fwd+bwd")},
          flush=True)
  return rows


def recurrence_table(rows):
  names = ["sequential", "associative", "chunked (64)", "log space"]
  lines = ["| T | mode | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
  for row in rows:
    for mode in ("fwd", "fwd+bwd"):
      times = row[mode]
      ref = times["sequential"]
      cells = [ms(ref)] + [f"{ms(times[k])} ({times[k] / ref:.2f}x)" if k in times
                           else "not run (seconds per call)" for k in names[1:]]
      lines.append(f"| {row['T']} | {mode} | " + " | ".join(cells) + " |")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke)")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="markdown output")
  args = parser.parse_args()
  if args.quick:
    B, D, H, Ts, repeats, target_t, log_t = 2, 4, 8, [16, 32], 2, 32, 32
  else:
    B, D, H, repeats, target_t, log_t = 16, 128, 128, 9, 4096, 1024
    Ts = [256, 512, 1024, 2048, 4096]
  load_before = load()
  started = time.time()

  sections = {}
  for make in (jaxseq.min_gru, jaxseq.min_lstm):
    sections[make.__name__] = bench_cells(make, Ts, B, D, H, repeats)
  target = bench_gru_target(target_t, B, D, H, repeats)
  print("target", {k: ms(v) for k, v in target.items()}, flush=True)
  recurrence = bench_recurrence(Ts, B, H, repeats, log_t)

  load_after = load()
  lines = [
      "# min_gru / min_lstm: parallel kernel against the sequential recurrence", "",
      f"Device: {jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores), "
      f"jax {jax.__version__}, float32. Load average {load_before:.1f} at the start, "
      f"{load_after:.1f} at the end ({time.time() - started:.0f} s): the machine is shared "
      "with other jobs, so single numbers are noisy (paths are interleaved and medians taken; "
      "compare ratios within a row, not across runs). Regenerate with "
      "`python benchmarks/bench_min_rnn.py`.", "",
      "*sequential* is `unroll` over the cell with its kernel removed (`lax.scan` of `recur`, "
      "gates computed inside the loop, autodiff through it); *kernel* is the cell's parallel "
      "path (all gates for all steps at once, then `linear_recurrence` with that `scan`, whose "
      "custom derivative keeps only `a` and `h`). Ratios are sequential / kernel (> 1: the "
      "kernel is faster). Forward+backward is the gradient of `sum(ys**2)` for params and "
      "inputs.", ""]
  for name, rows in sections.items():
    lines += cell_table(name, rows, B, D, H) + [""]
  half = target["min_gru input half"]
  scan = next(row["fwd+bwd"]["sequential"] for row in recurrence if row["T"] == target_t)
  lines += [f"## The issue's target: forward+backward at B={B}, T={target_t}, D=H={H}", "",
            "| gru (`unroll` default path) | min_gru (kernel, scan=auto) | gru / min_gru "
            "| min_gru's input half alone | sequential recurrence alone | lower bound (sum) "
            "| gru / lower bound |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {ms(target['gru'])} | {ms(target['min_gru'])} | "
            f"{target['gru'] / target['min_gru']:.1f}x | {ms(half)} | {ms(scan)} | "
            f"{ms(half + scan)} | {target['gru'] / (half + scan):.1f}x |", "",
            "The input half alone: `x W + b` over all T·B rows and its gradients for the "
            "params and the inputs for a fixed cotangent (three GEMMs and the bias sum). The "
            f"sequential recurrence alone: fwd+bwd of the T={target_t} row of the recurrence "
            "table below (with the same `sum(h ** 2)` loss as min_gru's). Their sum bounds "
            "min_gru's time from below on this CPU: the gates' elementwise math and its "
            "derivative come on top, so gru / lower bound is the largest ratio these pieces "
            "allow.", "",
            f"## The linear recurrence alone, (T, {B}, {H})", "",
            "Ratios are method / sequential (> 1: slower than the sequential scan). Log space "
            "is the paper's Appendix form, `exp(a* + cumlogsumexp(log b - a*))`; XLA's CPU "
            f"`cumlogsumexp` is slow, so it runs only up to T={log_t}. Chunked: chunk summaries "
            "vectorised over chunks, a scan over chunk carries, each chunk again from its carry "
            "(autodiff backward; with the sequential scan's custom derivative instead, its "
            "backward is the sequential one).", ""]
  lines += recurrence_table(recurrence)
  write(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
