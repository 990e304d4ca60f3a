"""Every benchmark in ``benchmarks/`` runs, at a tiny smoke size: that it runs and fills its
table, never how fast (speed is measured by running the benchmarks in full, and recorded in
``benchmarks/results/``). The timing code is called in this process where it can be, so
that the smoke costs compile time only."""
import importlib.util
import json
import math
import pathlib

import jax
import pytest

import jaxseq

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(seconds):
  return isinstance(seconds, float) and math.isfinite(seconds) and seconds > 0


def test_bench_kernels_worker_and_report(capsys):
  bench = _load("bench_kernels")
  bench.worker("gru", 2, 3, 2, 4, 1)
  run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(run["median_s"]) == set(bench.IMPLEMENTATIONS) == set(run["compile_s"])
  assert all(_positive(t) for times in run["median_s"].values() for t in times.values())
  other = {**run, "median_s": {n: {m: 2 * t for m, t in times.items()}
                               for n, times in run["median_s"].items()}}
  text = bench.report([run, other], True, 0.5, 0.5, 1.0)
  # Two processes of one configuration: one row per mode, ratios with their range.
  rows = [line for line in text.splitlines() if line.startswith("| gru | 2, 3, 2, 4 |")]
  assert len(rows) == 3 and "2 worker process(es)" in text
  xla_over_flax = run["median_s"]["xla"]["forward"] / run["median_s"]["flax"]["forward"]
  assert f"{xla_over_flax:.2f}x [" in rows[1]


def test_bench_lengths_measures_both_libraries():
  bench = _load("bench_lengths")
  for make in (bench.jaxseq_grad, bench.flax_grad):
    compile_s, step_s = bench.measure(make, (2, 6, 3, 4), True, 1)
    assert _positive(compile_s) and _positive(step_s)


def test_bench_unroll_times_every_peer_and_reads_temp_bytes():
  bench = _load("bench_unroll")
  for make in (bench.jaxseq_fn, bench.flax_fn, bench.torch_fn):
    assert _positive(bench.timed(make(2, 5, 3, 4), 1))
  temp = bench.temp_bytes(8, True, B=2, D=3, H=4)
  assert temp is None or temp > 0


def test_bench_min_rnn_tables():
  bench = _load("bench_min_rnn")
  rows = bench.bench_cells(jaxseq.min_gru, [8], 2, 3, 4, 1)
  assert len(bench.cell_table("min_gru", rows, 2, 3, 4)) > 2
  target = bench.bench_gru_target(8, 2, 3, 4, 1)
  assert _positive(target["gru"]) and _positive(target["min_gru"])
  assert len(bench.recurrence_table(bench.bench_recurrence([8], 2, 4, 1, 8))) > 2


def test_bench_long_writes_its_table(tmp_path):
  out = tmp_path / "long.md"
  _load("bench_long").main(["--steps", "12", "--out", str(out)])
  rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][2:]
  assert rows and all(row.split(" | ")[1] == "yes" for row in rows)   # every cell finite


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="peak RSS of CPU processes")
def test_bench_memory_child_reports_rss_and_temp_bytes():
  got = _load("bench_memory").measure(16, 2, 3, 4, "forward+backward", True, "auto")
  assert got["rss"] > 0 and _positive(got["seconds"])
