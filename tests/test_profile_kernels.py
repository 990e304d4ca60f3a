"""``benchmarks/profile_kernels.py``: its trace accounting against hand-made events and HLO,
and one smoke profile (that it runs and attributes the step's matmul, never how fast)."""
import importlib.util
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "profile_kernels.py"


@pytest.fixture(scope="module")
def profiler():
  spec = importlib.util.spec_from_file_location("_benchmark_profile_kernels", PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_self_time_subtracts_nested_events_on_the_same_thread_only(profiler):
  event = lambda name, ts, dur, tid=1: {"ph": "X", "name": name, "ts": ts, "dur": dur,
                                        "pid": 0, "tid": tid}
  events = [event("while", 0, 10), event("dot", 2, 3), event("add", 6, 2),
            event("dot", 20, 4), event("add", 3, 5, tid=2),   # another thread: not nested
            event("python", 1, 1),                            # not an HLO op: ignored
            {"ph": "M", "name": "thread_name"}]
  got = profiler.self_times(events, {"while", "dot", "add"})
  assert got == {"while": [pytest.approx(5e-6), 1], "dot": [pytest.approx(7e-6), 2],
                 "add": [pytest.approx(7e-6), 2]}


def test_instructions_classify_fusions_that_call_a_matmul(profiler):
  hlo = """HloModule m

%fused_computation (p0: f32[2,3], p1: f32[3,4]) -> f32[2,4] {
  %p0 = f32[2,3]{1,0} parameter(0)
  %p1 = f32[3,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[2,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0: f32[2,4]) -> f32[2,4] {
  %p0 = f32[2,4]{1,0} parameter(0)
  ROOT %add.1 = f32[2,4]{1,0} add(%p0, %p0)
}

ENTRY %main (x: f32[2,3], w: f32[3,4]) -> f32[2,4] {
  %x = f32[2,3]{1,0} parameter(0)
  %w = f32[3,4]{1,0} parameter(1)
  %ynn_fusion = f32[2,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation
  ROOT %add_fusion = f32[2,4]{1,0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_add
}
"""
  table = profiler.instructions(hlo)
  assert table["ynn_fusion"] == ("f32[2,4]{1,0}", "matmul")
  assert table["add_fusion"] == ("f32[2,4]{1,0}", "fusion")
  assert table["dot.1"][1] == "matmul" and table["x"][1] == "parameter"


def test_quick_profile_finds_the_per_step_matmul(profiler, tmp_path):
  out = tmp_path / "profile.md"
  results = profiler.main(["--quick", "--cell", "gru", "--implementations", "xla,flax",
                           "--modes", "forward", "--out", str(out)])
  (row,) = results.values()
  T = 5                                           # --quick's size is B, T, D, H = 2, 5, 3, 4
  for name in ("xla", "flax"):
    ops = row[name]["ops"]
    assert row[name]["wall_s"] > 0 and ops
    # The recurrent product runs once per step, and is attributed to matmuls.
    assert any(op["kind"] == "matmul" and op["count"] == T for op in ops.values()), name
  text = out.read_text()
  assert "| xla |" in text and "| flax |" in text and "the 12 longest operations" in text
