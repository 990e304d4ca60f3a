"""The ``jaxseq`` command line end to end, on tiny sizes.

Oracles: closed forms. A linear RNN (``--activation linear``) with an identity or orthogonal
recurrent kernel has step Jacobian ``W_hh^T``, an isometry, so every gradient norm equals the
last step's (relative norm 1 at every lag) and every Lyapunov exponent is 0. The adding
problem's baseline is Var(U1 + U2) = 1/6 for two U(0, 1) markers.
"""
import csv
import pathlib
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxseq import cli, tasks  # noqa: E402
from jaxseq import train as train_lib  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


def test_gradflow_writes_table_csv_and_png(tmp_path, capsys):
  out = tmp_path / "out"
  status = cli.main(["gradflow", "--length", "8", "--hidden", "4", "--cells", "simple_rnn,lstm",
                     "--batch-size", "2", "--out", str(out)])
  stdout = capsys.readouterr().out
  assert status == 0
  # the PNG: signature, and matplotlib reads it back as an RGBA image
  png = out / "gradflow.png"
  assert png.read_bytes()[:8] == PNG_SIGNATURE
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  # the CSV: columns, one row per cell and lag 0..T-1, norm = exp(log_norm), relative
  # norm = norm / norm at lag 0
  columns, rows = read_csv(out / "gradflow.csv")
  assert columns == ["cell", "phase", "step", "lag", "norm", "relative_norm", "log_norm"]
  assert len(rows) == 2 * 8
  for cell in ("simple_rnn", "lstm"):
    mine = [r for r in rows if r["cell"] == cell]
    assert {(r["phase"], r["step"]) for r in mine} == {("init", "0")}
    assert sorted(int(r["lag"]) for r in mine) == list(range(8))
    norms = {int(r["lag"]): float(r["norm"]) for r in mine}
    assert all(np.isfinite(n) and n > 0 for n in norms.values())
    for r in mine:
      np.testing.assert_allclose(float(r["norm"]), np.exp(float(r["log_norm"])), rtol=1e-5)
      np.testing.assert_allclose(float(r["relative_norm"]), norms[int(r["lag"])] / norms[0],
                                 rtol=1e-5)
  # the table names both cells, the lags and where the files went
  assert "simple_rnn" in stdout and "lstm" in stdout
  table_lags = [int(line.split()[0]) for line in stdout.splitlines()
                if re.match(r"^\s*\d+\s+\S+\s+\S+\s*$", line)]
  assert table_lags == [0, 1, 2, 5, 7]
  assert str(out / "gradflow.csv") in stdout and str(out / "gradflow.png") in stdout


@pytest.mark.parametrize("init", ["identity", "orthogonal"])
def test_gradflow_isometric_linear_rnn_keeps_norms(tmp_path, capsys, init):
  status = cli.main(["gradflow", "--cells", "simple_rnn", "--activation", "linear", "--init", init,
                     "--length", "12", "--hidden", "5", "--batch-size", "3",
                     "--out", str(tmp_path)])
  capsys.readouterr()
  assert status == 0
  _, rows = read_csv(tmp_path / "gradflow.csv")
  np.testing.assert_allclose([float(r["relative_norm"]) for r in rows], 1.0, rtol=1e-4)


def test_gradflow_during_training_records_each_snapshot(tmp_path, capsys):
  status = cli.main(["gradflow", "--cells", "gru", "--length", "6", "--hidden", "3",
                     "--batch-size", "4", "--train-steps", "4", "--snapshots", "2",
                     "--out", str(tmp_path)])
  stdout = capsys.readouterr().out
  assert status == 0
  _, rows = read_csv(tmp_path / "gradflow.csv")
  # init and after 2 and 4 steps, each with all 6 lags
  assert sorted({(r["phase"], int(r["step"])) for r in rows}, key=lambda p: p[1]) == [
      ("init", 0), ("step 2", 2), ("step 4", 4)]
  assert len(rows) == 3 * 6
  assert "[step 2]" in stdout and "[step 4]" in stdout
  assert stdout.count("training gru for") == 2
  by_phase = {phase: [float(r["log_norm"]) for r in rows if r["phase"] == phase]
              for phase in ("init", "step 2", "step 4")}
  assert by_phase["init"] != by_phase["step 4"]   # training changed the profile
  for name in ("gradflow.png", "gradflow-training.png"):
    assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {tmp_path / name}" in stdout


def test_gradflow_long_lags_print_below_float32(tmp_path, capsys):
  """At T = 2000 every log-norm is finite and the table prints norms far below float32's
  smallest (1.4e-45), where a float32 norm is 0."""
  status = cli.main(["gradflow", "--cells", "lstm,gru", "--length", "2000", "--hidden", "4",
                     "--batch-size", "2", "--out", str(tmp_path)])
  stdout = capsys.readouterr().out
  assert status == 0
  _, rows = read_csv(tmp_path / "gradflow.csv")
  assert len(rows) == 2 * 2000
  logs = np.array([float(r["log_norm"]) for r in rows])
  assert np.isfinite(logs).all()
  assert (np.float32(np.exp(logs)) == 0).any()   # what linear float32 norms would give
  last = [line.split() for line in stdout.splitlines() if line.strip().startswith("1999 ")]
  assert len(last) == 1
  exponents = [int(value.split("e")[1]) for value in last[0][1:]]
  assert len(exponents) == 2 and all(e < -45 for e in exponents), last
  # the CSV keeps the exponent as text where float64 cannot hold the number either
  deepest = min(rows, key=lambda r: float(r["log_norm"]))
  mantissa, exponent = deepest["norm"].split("e")
  np.testing.assert_allclose(np.log(float(mantissa)) + int(exponent) * np.log(10),
                             float(deepest["log_norm"]), atol=1e-5)


def test_train_prints_metric_baseline_verdict_and_knob(capsys):
  status = cli.main(["train", "adding", "--cell", "simple_rnn", "--length", "6", "--steps", "3",
                     "--hidden", "4", "--batch-size", "4", "--quiet"])
  captured = capsys.readouterr()
  assert status == 0 and captured.err == ""
  last = captured.out.strip().splitlines()[-1]
  match = re.fullmatch(r"adding: mse (\S+) \(baseline (\S+)\): (.*)  \[\d+\.\d s\]", last)
  assert match, last
  metric, baseline = float(match.group(1)), float(match.group(2))
  np.testing.assert_allclose(baseline, 1 / 6, atol=1e-3)
  # the verdict is the library's reading of the printed numbers (4 significant digits)
  verdict = train_lib.verdict(metric, baseline)
  assert match.group(3).startswith(verdict.text)
  assert verdict.status != "solved"   # 3 steps learn nothing: a knob follows
  assert "try " in match.group(3) and "--steps (it was 3; try 6)" in match.group(3)


def test_train_header_states_the_tasks_defaults_and_the_real_init(capsys):
  status = cli.main(["train", "copy", "--cell", "lstm", "--length", "3", "--steps", "2",
                     "--hidden", "4"])
  stdout = capsys.readouterr().out
  assert status == 0
  header = stdout.splitlines()[0]
  copy = train_lib.DEFAULTS["copy"]
  # copy's LSTM default is chrono with T_max = the sequence's 3 + 20 steps
  assert header.startswith("training lstm(H=4, init default, chrono T_max=23) on copy, "
                           "T = 3 (sequences of 23 steps), 2 training steps, "
                           f"batch {copy.batch_size}, adam lr {copy.learning_rate:g}"), header
  assert "lstm's init is the task's default" in header
  status = cli.main(["train", "copy", "--cell", "lstm", "--length", "3", "--steps", "2",
                     "--hidden", "4", "--forget-bias", "1"])
  header = capsys.readouterr().out.splitlines()[0]
  assert header.startswith("training lstm(H=4, init default, forget bias 1) on copy"), header
  assert "init is the task's default" not in header


def test_train_progress_bar_only_when_asked_or_on_a_terminal(capsys):
  argv = ["train", "adding", "--cell", "simple_rnn", "--length", "3", "--steps", "2",
          "--hidden", "2"]
  assert cli.main(argv) == 0
  assert capsys.readouterr().err == ""        # captured stderr is not a terminal
  assert cli.main(argv + ["--progress"]) == 0
  assert "adding" in capsys.readouterr().err  # tqdm's bar
  assert cli.main(argv + ["--progress", "--quiet"]) == 2
  assert "not allowed with" in capsys.readouterr().err


def test_train_resume_with_another_cell_names_what_differs(tmp_path, capsys):
  argv = ["train", "adding", "--length", "4", "--steps", "2", "--hidden", "3",
          "--checkpoint-dir", str(tmp_path / "run")]
  assert cli.main(argv + ["--cell", "simple_rnn"]) == 0
  capsys.readouterr()
  status = cli.main(argv[:5] + ["4"] + argv[6:] + ["--cell", "gru", "--resume"])
  captured = capsys.readouterr()
  assert status == 2
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert lines[0].startswith("jaxseq train: error: resume: expected a checkpoint of this run, "
                             "got one that differs in cell.name ('simple_rnn' in the "
                             "checkpoint, 'gru' now)"), lines[0]


def test_missing_scikit_learn_is_one_line(monkeypatch, capsys):
  for module in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
    monkeypatch.setitem(sys.modules, module, None)   # "import sklearn" raises ImportError
  tasks._digits_split.cache_clear()
  try:
    status = cli.main(["train", "sequential_digits", "--cell", "lstm", "--steps", "1"])
  finally:
    tasks._digits_split.cache_clear()
  captured = capsys.readouterr()
  assert status == 2
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert "pip install scikit-learn" in lines[0] and "Traceback" not in captured.err


def test_lenet_example_without_scikit_learn_is_one_line(tmp_path):
  script = pathlib.Path(__file__).resolve().parent.parent / "examples" / "lenet_digits.py"
  code = ("import runpy, sys; sys.modules['sklearn'] = None; sys.argv = ['lenet_digits.py']; "
          f"runpy.run_path({str(script)!r}, run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip() == ("lenet_digits.py needs scikit-learn: pip install scikit-learn "
                                 "(or pip install 'jaxseq[examples]')")


def test_lyapunov_of_isometric_linear_rnn_is_zero(capsys):
  status = cli.main(["lyapunov", "--cell", "simple_rnn", "--activation", "linear",
                     "--init", "orthogonal", "--hidden", "4", "--length", "30",
                     "--warmup", "5"])
  stdout = capsys.readouterr().out
  assert status == 0
  values = {name: float(value) for name, value in
            re.findall(r"^\s*(largest|smallest|sum)\s+(\S+)", stdout, re.M)}
  assert set(values) == {"largest", "smallest", "sum"}
  np.testing.assert_allclose(list(values.values()), 0.0, atol=1e-3)


@pytest.mark.parametrize("options, init", [
    ([], "lstm(H=3, init default)"),
    (["--chrono"], "lstm(H=3, init default, chrono T_max=20)"),
    (["--chrono", "7"], "lstm(H=3, init default, chrono T_max=7)"),
    (["--forget-bias", "1"], "lstm(H=3, init default, forget bias 1)"),
    (["--init", "orthogonal"], "lstm(H=3, init orthogonal)"),
    (["--cell", "simple_rnn", "--activation", "relu", "--init", "identity"],
     "simple_rnn(H=3, init identity, relu)"),
])
def test_lyapunov_header_names_the_real_init(capsys, options, init):
  argv = ["lyapunov", "--cell", "lstm", "--hidden", "3", "--length", "20", "--warmup", "4",
          "--k", "1"]
  status = cli.main(argv + options)
  header = capsys.readouterr().out.splitlines()[0]
  assert status == 0
  assert header.startswith(f"Lyapunov exponents of {init} driven by adding inputs"), header


def test_lyapunov_runs_on_lstm(capsys):
  status = cli.main(["lyapunov", "--cell", "lstm", "--hidden", "3", "--length", "20",
                     "--warmup", "4", "--k", "2"])
  stdout = capsys.readouterr().out
  assert status == 0
  assert re.search(r"sum\s+-?\d+\.\d+\s+\(of 2 exponents\)", stdout), stdout


@pytest.mark.parametrize("argv, names", [
    (["gradflow", "--cells", "simple_rnn,nosuchcell"], "nosuchcell"),
    (["gradflow", "--cells", ","], "--cells"),
    (["gradflow", "--init", "nosuchinit"], "nosuchinit"),
    (["gradflow", "--task", "nosuchtask"], "nosuchtask"),
    (["gradflow", "--length", "0"], "--length"),
    (["gradflow", "--cells", "gru", "--forget-bias", "1"], "--forget-bias"),
    (["train", "nosuchtask", "--cell", "lstm"], "nosuchtask"),
    (["train", "adding", "--cell", "nosuchcell"], "nosuchcell"),
    (["train", "adding", "--resume"], "--checkpoint-dir"),
    (["train", "adding", "--optimizer", "nosuchopt"], "nosuchopt"),
    (["lyapunov", "--cell", "nosuchcell"], "nosuchcell"),
    (["lyapunov", "--length", "10", "--warmup", "10"], "--warmup"),
    (["gradflow", "--batch-size", "100000"], "--batch-size: expected at most 512"),
    (["gradflow", "--lr", "inf"], "--lr"),
    (["gradflow", "--snapshots", "0"], "--snapshots"),
    (["gradflow", "--forget-bias", "nan", "--cells", "lstm"], "--forget-bias"),
    (["train", "adding", "--lr", "inf"], "--lr"),
    (["train", "adding", "--lr", "nan"], "--lr"),
    (["train", "adding", "--clip-norm", "inf"], "--clip-norm"),
    (["train", "adding", "--forget-bias", "1", "--chrono"], "--chrono"),
    (["reproduce", "--only", "nosuchexperiment"], "nosuchexperiment"),
    (["reproduce", "--budget-minutes", "nan"], "--budget-minutes"),
    (["nosuchcommand"], "nosuchcommand"),
    ([], "COMMAND"),
])
def test_bad_command_line_exits_2_with_one_line(capsys, argv, names):
  status = cli.main(argv)
  captured = capsys.readouterr()
  assert status == 2
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert names in lines[0] and "error" in lines[0]
  assert "Traceback" not in captured.err + captured.out


def test_console_entry_point_exit_status():
  """One real process: ``python -m jaxseq`` exits 2 with one line and no traceback."""
  proc = subprocess.run([sys.executable, "-m", "jaxseq", "train", "nosuchtask"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "nosuchtask" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_dir_that_is_a_file_is_one_line(tmp_path, capsys):
  path = tmp_path / "a-file"
  path.write_text("x")
  status = cli.main(["train", "adding", "--steps", "1", "--checkpoint-dir", str(path)])
  captured = capsys.readouterr()
  assert status == 2
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert lines[0].startswith("jaxseq train: error: --checkpoint-dir: expected a folder"), lines
  assert captured.out == "" and path.read_text() == "x"


def test_gradflow_out_that_is_a_file_is_one_line(tmp_path, capsys):
  path = tmp_path / "a-file"
  path.write_text("x")
  for out in (path, path / "below"):
    status = cli.main(["gradflow", "--length", "4", "--hidden", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxseq gradflow: error: --out: expected "
                                                   "a folder"), captured.err
    assert captured.out == ""
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_gradflow_batch_size_up_to_the_evaluation_set_is_used(tmp_path, capsys):
  status = cli.main(["gradflow", "--cells", "gru", "--length", "3", "--hidden", "2",
                     "--batch-size", "512", "--out", str(tmp_path)])
  stdout = capsys.readouterr().out
  assert status == 0 and "batch 512" in stdout


def test_reproduce_runs_in_process_and_writes_its_report(tmp_path, capsys):
  out = tmp_path / "report.md"
  status = cli.main(["reproduce", "--quick", "--only", "gradflow", "--out", str(out)])
  stdout = capsys.readouterr().out
  assert status == 0
  report = out.read_text()
  assert report.startswith("# Published claims, re-run at CPU scale")
  assert f"Regenerate with `jaxseq reproduce --quick --only gradflow --out {out}`" in report
  assert "| simple_rnn, relu, identity (IRNN) |" in report
  assert f"wrote {out}" in stdout


def test_advice_names_overfitting_when_training_loss_is_far_below_the_metric():
  args = cli.build_parser().parse_args(["train", "permuted_digits", "--cell", "lstm"])
  task = tasks.TASKS["permuted_digits"]
  settings = train_lib.defaults(task)
  choice = train_lib.cell_for(task, "lstm")
  baseline = float(np.log(10))
  overfit = train_lib.TrainResult(None, [(2000, 0.07, 0.6)], 0.6, baseline)
  advice = cli._advice(args, task, settings, train_lib.verdict(0.6, baseline), 64, 2000,
                       3e-3, choice, overfit)
  assert advice == ("it overfits (training xent 0.07): fewer --steps or a smaller --hidden")
  learning = train_lib.TrainResult(None, [(2000, 0.5, 0.6)], 0.6, baseline)
  advice = cli._advice(args, task, settings, train_lib.verdict(0.6, baseline), 64, 2000,
                       3e-3, choice, learning)
  assert advice == "try more --steps (it was 2000; try 4000)"
