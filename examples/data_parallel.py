"""Data-parallel training on several (forced) CPU devices.

``jaxseq.train.train(..., mesh=data_mesh())`` splits every step's batch across the devices
of a one-axis ``jax.sharding.Mesh``; params and optimiser state are replicated and XLA's
SPMD partitioner averages the gradients with one all-reduce. This script runs the LSTM
on the adding task twice, on one device and on ``--devices`` devices, and shows that the
loss curves agree to float summation order (a plot is written to ``--out``).

A CPU has one XLA device unless ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is
set before JAX starts; this script sets it itself (so it must run as its own process). On
a multi-GPU machine drop the flag: ``data_mesh()`` takes every device. On several hosts,
call ``jax.distributed.initialize()`` first in every process; ``jax.devices()`` then lists
all hosts' devices and every process runs the same ``train`` call.

    python examples/data_parallel.py                     # 4 CPU devices, ~1 min
"""
from __future__ import annotations

import argparse
import os
import sys

RUN_IN_SUBPROCESS = True   # XLA_FLAGS must be set before JAX is imported


def parse(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=4, help="forced CPU devices (default 4)")
  parser.add_argument("--length", type=int, default=50, help="adding-task length (default 50)")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "out"))
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse(argv)
  if "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
      os.environ["XLA_FLAGS"] = (
          f"{flags} --xla_force_host_platform_device_count={args.devices}").strip()
  import time

  import jax
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  import jaxseq
  from jaxseq import train as train_lib

  devices = jax.devices()[:args.devices]
  if len(devices) < args.devices:
    sys.exit(f"data_parallel.py: expected {args.devices} devices, got {len(devices)} "
             "(XLA_FLAGS was set before this script started JAX?)")
  cell = jaxseq.lstm(args.hidden)
  options = dict(length=args.length, steps=args.steps, batch_size=args.batch_size,
                 learning_rate=args.lr, eval_every=max(1, args.steps // 10))
  runs = {}
  for name, mesh in (("1 device", None), (f"{len(devices)} devices",
                                          train_lib.data_mesh(devices))):
    start = time.perf_counter()
    result = train_lib.train("adding", cell, mesh=mesh, **options)
    seconds = time.perf_counter() - start
    runs[name] = result
    print(f"{name}: {train_lib.result_line('adding', result)}  [{seconds:.1f} s]")
  single, sharded = (np.asarray(r.history) for r in runs.values())
  gap = float(np.max(np.abs(single[:, 1:] - sharded[:, 1:]) /
                     np.maximum(np.abs(single[:, 1:]), 1e-12)))
  print(f"largest relative difference between the two loss curves: {gap:.2e}")

  os.makedirs(args.out, exist_ok=True)
  figure, axis = plt.subplots(figsize=(6, 4))
  for (name, result), style in zip(runs.items(), ("-", "--")):
    history = np.asarray(result.history)
    axis.plot(history[:, 0], history[:, 2], style, label=name)
  axis.axhline(runs["1 device"].baseline, color="gray", lw=0.8, label="baseline")
  axis.set(xlabel="step", ylabel="evaluation mse", yscale="log",
           title=f"LSTM on adding T={args.length}: one device vs a mesh")
  axis.legend()
  path = os.path.join(args.out, "data_parallel.png")
  figure.savefig(path, dpi=120, bbox_inches="tight")
  print(f"wrote {path}")
  last = runs[f"{len(devices)} devices"]
  return {"metric": float(last.metric), "baseline": float(last.baseline),
          "relative_gap": gap, "plot": path}


if __name__ == "__main__":
  main()
