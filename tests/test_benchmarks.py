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


def test_bench_kernels_worker_and_report(capsys, tmp_path, monkeypatch):
  bench = _load("bench_kernels")
  # Every implementation in-process: GRU in float32, and a two-layer LSTM in bfloat16.
  configs = [bench.Config("small", "gru", 2, 3, 2, 4),
             bench.Config("long", "lstm", 2, 3, 2, 4, layers=2, dtype="bfloat16")]
  runs = []
  for config in configs:
    bench.worker(config, 1)
    runs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
  for config, run in zip(configs, runs):
    assert run["unavailable"] == {}          # every peer is installed (test extra) and runs
    assert set(run["median_s"]) == set(bench.IMPLEMENTATIONS) == set(run["compile_s"])
    assert all(_positive(t) for times in run["median_s"].values() for t in times.values())
    for name, output in run["output"].items():   # each ran at this size, in this dtype
      dtype, shape = output.split(" ", 1)
      want = (3, 2, 4) if name == "haiku" else (2, 3, 4)      # Haiku is time-major
      assert shape == str(want), name
      # Flax's carry starts in float32 (param_dtype), so its bfloat16 outputs are float32.
      assert dtype == ("float32" if name in ("flax", "nnx") else config.dtype), name
  # The LSTM stacks two layers everywhere: W_ih and W_hh of both (D=2, H=4) and the biases.
  weights = 4 * 4 * (2 + 4) + 4 * 4 * (4 + 4)
  assert all(weights <= n <= weights + 4 * 2 * 16 for n in runs[1]["params"].values())
  gru_weights = 3 * 4 * (2 + 4)                 # one GRU layer
  assert all(gru_weights <= n <= gru_weights + 2 * 12 for n in runs[0]["params"].values())

  doubled = [{**run, "median_s": {n: {m: 2 * t for m, t in times.items()}
                                  for n, times in run["median_s"].items()}} for run in runs]
  section = {"processes": 2, "repeats": 1, "load": [0.5, 0.5], "wall_s": 1.0,
             "machine": bench.machine(), "date": "2026-12-03"}
  text = bench.report(runs + doubled, {"small": section, "long": section}, True)
  # Two processes of each configuration: a row in each of the five tables, ratios with
  # their range, no n/a.
  for start in ("| small | gru | f32 | 2, 3, 2, 4 |", "| long | lstm | bf16 | 2, 3, 2, 4 (2 "
                "layers) |"):
    rows = [line for line in text.splitlines() if line.startswith(start)]
    assert len(rows) == 5 and not any("n/a" in row for row in rows), start
  rows = [line for line in text.splitlines() if line.startswith("| small | gru |")]
  xla_over_nnx = runs[0]["median_s"]["xla"]["forward"] / runs[0]["median_s"]["nnx"]["forward"]
  assert f"{xla_over_nnx:.2f}x [" in rows[3]      # forward ratios, Flax NNX column
  assert "Flax NNX" in text and "Haiku" in text and "Equinox" in text

  # A peer that is not installed is skipped and reported, not a crash.
  monkeypatch.setitem(bench.PEER_MODULES, "haiku", "haiku_not_installed_here")
  bench.worker(configs[0], 1, implementations=("xla", "haiku"))
  skipped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(skipped["median_s"]) == {"xla"}
  assert skipped["unavailable"]["haiku"].startswith("not installed")
  text = bench.report([skipped], {"small": section})
  assert "| n/a |" in text and "* Haiku: not installed" in text

  # The sweep: its points, then the report and the plot from saved results (--report-only).
  sweep = bench.SWEEP
  points = {(c.T, c.H) for c in sweep.configs()}
  assert {(T, sweep.H) for T in sweep.Ts} | {(sweep.T, H) for H in sweep.Hs} == points
  quick = bench.QUICK_SWEEP
  sweep_runs = [{**runs[0], "set": "sweep", "cell": "lstm", "T": c.T, "D": c.H, "H": c.H,
                 "median_s": {n: {"forward+backward": c.T * c.H * 1e-6} for n in
                              runs[0]["median_s"]}} for c in quick.configs()]
  saved = {"runs": runs + sweep_runs, "sections": {
      "small": section, "long": section, "sweep": {**section, "fixed": quick._asdict()}}}
  (tmp_path / "kernels.json").write_text(json.dumps(saved))
  bench.main(["--report-only", "--results", str(tmp_path)])
  assert (tmp_path / "kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (tmp_path / "kernels.md").read_text()
  assert "![time against T and H](kernels.png)" in md
  sweep_rows = md.split("## Sweep", 1)[1].split("## Reading", 1)[0].splitlines()
  assert len([r for r in sweep_rows if r.startswith(("| 6 |", "| 12 |", "| 8 |", "| 16 |"))]) \
      == len(quick.Ts) + len(quick.Hs)


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
  assert set(target) == {"gru", "min_gru", "min_gru input half"}
  assert all(_positive(t) for t in target.values())
  assert len(bench.recurrence_table(bench.bench_recurrence([8], 2, 4, 1, 8))) > 2


def test_bench_products_times_both_forms(capsys):
  bench = _load("bench_products")
  rows = bench.measure(bench.QUICK_SHAPES, 1)
  assert [shape for shape, _ in rows] == list(bench.QUICK_SHAPES)
  for _, times in rows:                  # both forms, both modes, each timed
    assert set(times) == {(f, m) for f in bench.FORMS for m in ("forward", "forward+backward")}
    assert all(_positive(t) for t in times.values())
  given, once = (bench.step_calls(*bench.QUICK_STEPS[0])[name]() for name in bench.WEIGHTS)
  assert jax.numpy.allclose(given, once, atol=1e-6)       # the same scan, two weight forms
  steps = bench.measure_steps(bench.QUICK_STEPS, 1)
  assert all(set(times) == set(bench.WEIGHTS) and all(_positive(t) for t in times.values())
             for _, times in steps)
  floors = bench.measure_floors(bench.QUICK_FLOORS, 1)
  assert [len(runs) for _, runs in floors] == [1]
  keys = {(m, mode) for m in bench.MODELS for mode in bench.MODES}
  assert all(set(runs[0]) == keys and all(_positive(t) for t in runs[0].values())
             for _, runs in floors)
  bench._floor_worker(json.dumps([list(bench.QUICK_FLOORS), 1]))   # a process's JSON line
  (worker,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(bench._parsed(worker)) == keys
  floors = [(floors[0][0], floors[0][1] + [bench._parsed(worker)])]   # two processes
  text = bench.report(rows, steps, floors, 1, (0.5, 0.5), 1.0).splitlines()
  table = [line for line in text if line.startswith("| (") and line[3].isdigit()]
  assert len(table) == 2 * len(bench.QUICK_SHAPES) and all(line.endswith("x |") for line in table)
  assert sum(line.startswith("| 5, 2, 8 -> 4 |") and line.endswith("x |") for line in text) == 1
  rows = [line for line in text if line.startswith("| gru | 2, 5, 3, 4 |")]
  assert len(rows) == 2 and all(line.endswith("] |") for line in rows)   # ranges over two


def test_bench_products_backward_is_the_products_gradient():
  # The floor's explicit backward (reverse scan of dz W_hh^T, then X^T dZ, H^T dZ, dZ W_ih^T)
  # is the gradient of <hs, dys> for its forward, which JAX differentiates here.
  bench = _load("bench_products")
  forward, both, (xs, w_ih, w_hh, dys) = bench.products(5, 2, 3, 4, 3)
  hs, vjp = jax.vjp(lambda x, a, b: forward(x, a, b, dys), xs, w_ih, w_hh)
  d_xs, d_ih, d_hh = vjp(dys)
  out = both(xs, w_ih, w_hh, dys)
  for got, want in zip(out, (hs, d_ih, d_hh, d_xs)):
    assert got.shape == want.shape
    assert jax.numpy.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bench_long_writes_its_table(tmp_path):
  out = tmp_path / "long.md"
  _load("bench_long").main(["--steps", "12", "--out", str(out)])
  rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][2:]
  assert rows and all(row.split(" | ")[1] == "yes" for row in rows)   # every cell finite


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="peak RSS of CPU processes")
def test_bench_memory_child_reports_rss_and_temp_bytes():
  got = _load("bench_memory").measure(16, 2, 3, 4, "forward+backward", True, "auto")
  assert got["rss"] > 0 and _positive(got["seconds"])
