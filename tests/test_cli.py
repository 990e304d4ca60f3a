"""The ``jaxseq`` command line end to end, on tiny sizes.

Oracles: closed forms. A linear RNN (``--activation linear``) with an identity or orthogonal
recurrent kernel has step Jacobian ``W_hh^T``, an isometry, so every gradient norm equals the
last step's (relative norm 1 at every lag) and every Lyapunov exponent is 0. The adding
problem's baseline is Var(U1 + U2) = 1/6 for two U(0, 1) markers.
"""
import csv
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxseq import cli  # noqa: E402

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
  # the CSV: columns, one row per cell and lag 0..T-1, relative norm = norm / norm at lag 0
  columns, rows = read_csv(out / "gradflow.csv")
  assert columns == ["cell", "phase", "lag", "norm", "relative_norm"]
  assert len(rows) == 2 * 8
  for cell in ("simple_rnn", "lstm"):
    mine = [r for r in rows if r["cell"] == cell]
    assert {r["phase"] for r in mine} == {"init"}
    assert sorted(int(r["lag"]) for r in mine) == list(range(8))
    norms = {int(r["lag"]): float(r["norm"]) for r in mine}
    assert all(np.isfinite(n) and n > 0 for n in norms.values())
    for r in mine:
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


def test_gradflow_after_training_adds_a_phase(tmp_path, capsys):
  status = cli.main(["gradflow", "--cells", "gru", "--length", "6", "--hidden", "3",
                     "--batch-size", "4", "--train-steps", "3", "--out", str(tmp_path)])
  stdout = capsys.readouterr().out
  assert status == 0
  _, rows = read_csv(tmp_path / "gradflow.csv")
  assert sorted({r["phase"] for r in rows}) == ["init", "trained"]
  assert len(rows) == 2 * 6
  assert "[trained]" in stdout


def test_train_prints_metric_next_to_baseline(capsys):
  status = cli.main(["train", "adding", "--cell", "simple_rnn", "--length", "6", "--steps", "3",
                     "--hidden", "4", "--batch-size", "4", "--quiet"])
  stdout = capsys.readouterr().out
  assert status == 0
  match = re.search(r"mse (\S+) \(baseline (\S+)\)", stdout)
  assert match, stdout
  assert np.isfinite(float(match.group(1)))
  np.testing.assert_allclose(float(match.group(2)), 1 / 6, atol=1e-3)


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
