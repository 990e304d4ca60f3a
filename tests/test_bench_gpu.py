"""benchmarks/bench_gpu.py at a tiny size on CPU: every row that can run here runs and is
timed, the GPU-only rows are skipped with their reasons, the LSTM rows compute the same
function (PyTorch's LSTM included, run on CPU with the copied weights), and the report's
targets table is produced. Never how fast: the GPU numbers come from running the script on
a GPU."""
import importlib.util
import json
import math
import pathlib

import jax
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
GPU_ONLY = ("torch-lstm", "torch-gru", "lstm/cudnn", "jax-rnn-lstm")
CONFIG = (2, 3, 4, 4)


def _load():
  spec = importlib.util.spec_from_file_location("_benchmark_bench_gpu",
                                                BENCHMARKS / "bench_gpu.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(seconds):
  return isinstance(seconds, float) and math.isfinite(seconds) and seconds > 0


def _torch_cuda():
  try:
    import torch
  except ImportError:
    return False
  return torch.cuda.is_available()


@pytest.fixture(scope="module")
def bench():
  if jax.default_backend() != "cpu" or _torch_cuda():
    pytest.skip("checks the CPU behaviour (GPU-only rows skipped)")
  return _load()


@pytest.fixture(scope="module")
def result(bench):
  config = bench.Config(*CONFIG)
  return bench.run_config(config, bench.ROWS, forward_repeats=2, backward_repeats=1, warmup=0,
                          pallas_interpret=True, torch_in_process=True)


def test_rows_run_or_skip_with_reason(bench, result):
  rows = result["rows"]
  assert list(rows) == [row.name for row in bench.ROWS]
  for name in GPU_ONLY:
    assert rows[name]["status"] == "skipped", name
    assert rows[name]["reason"], name
  assert "torch.cuda.is_available() is False" in rows["torch-lstm"]["reason"]
  assert "GPU" in rows["lstm/cudnn"]["reason"]
  ran = [name for name in rows if name not in GPU_ONLY]
  assert "lstm/pallas" in ran and "flax-lstm" in ran   # interpret mode, and the JAX peer
  for name in ran:
    record = rows[name]
    assert record["status"] == "ok", (name, record.get("reason"))
    assert all(_positive(record["compile_s"][mode]) for mode in bench.MODES), name
    for mode, n in (("forward", 2), ("forward+backward", 1)):
      assert record[mode]["n"] == n
      assert all(_positive(record[mode][key]) for key in ("median_s", "min_s", "max_s"))
  # kernel="auto" takes each cell's fused XLA kernel on CPU.
  assert {rows[f"{cell}/auto"]["path"] for cell in bench.OTHER_CELLS} == {"xla"}
  # The LSTM paths share weights and compute one function.
  assert result["agreement"]["against"] == "lstm/reference"
  diffs = result["agreement"]["max_abs_diff"]
  assert set(diffs) == {"lstm/xla", "lstm/pallas"}
  assert all(diff < 1e-5 for diff in diffs.values())


def test_report_targets(bench, result):
  saved = {"date": "2026-12-03", "argv": ["--quick"], "quick": True,
           "machine": bench.machine(), "configs": [result], "finished": True}
  text = bench.report(saved)
  assert "No GPU on this machine" in text
  assert "### Targets (issue #8)" in text
  assert "| plain LSTM, best jaxseq path | forward |" in text
  assert text.count("not checked |") == 2 * (1 + len(bench.OTHER_CELLS))  # no torch LSTM
  assert "### Not run" in text and all(f"`{name}`" in text for name in GPU_ONLY)
  assert "FlashRNN fused | 4.87 ms | 13.61 ms" in text
  json.dumps(saved)     # the JSON the script writes

  # With a PyTorch cuDNN LSTM time the targets are checked: ratio = best jaxseq / PyTorch.
  rows = dict(result["rows"])
  xla = rows["lstm/xla"]
  rows["torch-lstm"] = {**rows["torch-lstm"], "status": "ok", "compile_s": xla["compile_s"],
                        **{mode: {**xla[mode], "median_s": xla[mode]["median_s"] * 2}
                           for mode in bench.MODES}}
  checks = bench.targets({**result, "rows": rows})
  assert len(checks) == 2 * (2 + len(bench.OTHER_CELLS))
  for check in checks:
    assert check["ratio"] == pytest.approx(check["time_s"] / check["reference_s"])
    assert check["met"] is (None if check["limit"] is None else check["ratio"] <= check["limit"])
  best = [c for c in checks if c["target"] == "plain LSTM, best jaxseq path"]
  assert all(c["ratio"] <= 0.5 + 1e-12 and c["met"] for c in best)   # xla at most: half
  text = bench.report({**saved, "configs": [{**result, "rows": rows}]})
  assert "not checked |" not in text and "| 1.2x | yes |" in text


def test_torch_lstm_gets_the_shared_weights(bench, result, monkeypatch):
  """PyTorch's LSTM, run on CPU here, computes the jaxseq LSTM's function with the copied
  weights (the GPU run compares their outputs the same way)."""
  torch = pytest.importorskip("torch")
  monkeypatch.setattr(bench, "TORCH_DEVICE", "cpu")
  monkeypatch.setattr(bench, "_torch_cuda", lambda: None)
  monkeypatch.setattr(bench, "torch_info", lambda: {"device": "cpu"})
  monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
  config = bench.Config(*CONFIG)
  data = bench.shared_data(config)
  outputs = {}
  rows = {row.name: row for row in bench.ROWS}
  for name in ("lstm/reference", "torch-lstm", "torch-gru"):
    record = bench.time_row(rows[name], config, data, 1, 1, warmup=0, outputs=outputs)
    assert record["status"] == "ok", record.get("reason")
  assert set(outputs) == {"lstm/reference", "torch-lstm"}   # the GRU has its own weights
  diff = bench.agreement(outputs)["max_abs_diff"]["torch-lstm"]
  assert diff < 1e-5


def test_main_quick_writes_report_and_json(bench, tmp_path, capsys):
  out = tmp_path / "gpu-quick.md"
  # The PyTorch row goes through its child process (skipped there: no CUDA).
  bench.main(["--quick", "--configs", "2x3x4x4", "--rows", "torch-lstm,lstm/xla",
              "--forward-repeats", "1", "--backward-repeats", "1", "--warmup", "0",
              "--out", str(out)])
  progress = capsys.readouterr().out
  assert "torch-lstm: skipped (torch.cuda.is_available() is False" in progress
  saved = json.loads(out.with_suffix(".json").read_text())
  assert saved["finished"] and saved["machine"]["backend"] == "cpu"
  rows = saved["configs"][0]["rows"]
  assert list(rows) == ["torch-lstm", "lstm/xla"]
  assert rows["lstm/xla"]["status"] == "ok"
  assert "### Targets (issue #8)" in out.read_text()
  with pytest.raises(SystemExit):
    bench.main(["--quick", "--configs", "2x3x4", "--out", str(out)])


def test_limits_cut_a_run_short(bench):
  config = bench.Config(*CONFIG)
  row = next(r for r in bench.ROWS if r.name == "simple_rnn/auto")
  # Past the row's limit: one warm-up and one timed call of each mode, no more.
  record = bench.time_row(row, config, bench.shared_data(config), 5, 5, warmup=3, limit_s=0.0)
  assert record["forward"]["n"] == 1 == record["forward+backward"]["n"]
  # Past the run's budget: the rows left are skipped, saying why.
  result = bench.run_config(config, bench.ROWS[:2], 1, 1, deadline=0.0)
  assert {r["status"] for r in result["rows"].values()} == {"skipped"}
  assert all("--budget-s" in r["reason"] for r in result["rows"].values())
  assert "(n = 1)" in bench._fewer(1, 5) and bench._fewer(5, 5) == ""
