"""``pip install .`` (not editable) into a fresh virtual environment, then ``jaxseq reproduce``
from another folder: the command must not need a source checkout.

Kept fast: the environment reuses this interpreter's packages (``--system-site-packages``
plus a ``.pth`` line naming our site-packages, for when the tests themselves run in a
venv) and the build uses ``--no-deps --no-build-isolation``; the source is copied first so
the build writes nothing into the checkout.
"""
import os
import pathlib
import shutil
import site
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(argv, cwd, timeout=300):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env=env)
  assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout


def test_non_editable_install_runs_reproduce_from_another_folder(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    if (ROOT / name).exists():
      shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / "jaxseq", source / "jaxseq",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

  env_dir = tmp_path / "env"
  venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  purelib = pathlib.Path(run([python, "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
  # Our dependencies (jax, optax, setuptools, ...), after the environment's own packages.
  ours = [p for p in site.getsitepackages() if pathlib.Path(p).is_dir()]
  (purelib / "zz_test_dependencies.pth").write_text("\n".join(ours) + "\n")

  run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
       "--no-build-isolation", "--no-index", source], tmp_path)

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  location = pathlib.Path(run([python, "-c", "import jaxseq; print(jaxseq.__file__)"],
                              elsewhere).strip())
  assert location.is_relative_to(purelib), location   # the installed copy, not the checkout

  # --quick trains 11 toy runs (minutes on 2 busy cores); its "defaults" rows alone go
  # through the registry, the per-task defaults, the trainer and the report.
  out = run([env_dir / "bin" / "jaxseq", "reproduce", "--quick", "--only", "defaults"],
            elsewhere, timeout=600)
  report = elsewhere / "jaxseq-out" / "reproduce-quick-defaults.md"
  assert f"wrote {report.relative_to(elsewhere)}" in out
  text = report.read_text()
  assert "Regenerate with `jaxseq reproduce --quick --only defaults`" in text
  assert "`jaxseq train copy --cell lstm --length 10` reaches" in text   # trained rows
  assert "lstm(H=128, init default, chrono T_max=30)" in text
  assert "skipped" not in text
