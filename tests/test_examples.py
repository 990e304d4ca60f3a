"""Every script in ``examples/`` runs end to end on tiny settings.

The scripts are found by globbing ``examples/*.py``, so a new example cannot be forgotten:
each needs an entry in ``TINY`` (its tiny command line, the files it must write under
``--out`` and the metrics of ``main``'s dict that must be finite numbers), in
``COVERED_ELSEWHERE`` (the test that already runs it on tiny settings: not twice per suite),
or in ``SKIP`` with the reason. An example runs in this process (loaded with importlib,
``main(argv)`` called) unless it sets the module-level constant ``RUN_IN_SUBPROCESS = True``,
for instance because it sets ``XLA_FLAGS`` before importing jax; then it runs as
``python examples/NAME.py ARGS`` and must exit 0. The constant is read from the source
(``ast``), without importing the module.

How well the examples learn at their default settings is measured by running them (their
docstrings record the numbers); ``tests/test_generate.py`` and ``tests/test_seq2seq.py``
check ``char_rnn_hello`` and ``seq2seq_reverse`` at accuracy.
"""
import ast
import importlib.util
import math
import pathlib
import subprocess
import sys
from typing import NamedTuple

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
OUT = "{out}"   # in TINY's command lines: replaced by the test's temporary folder


class Tiny(NamedTuple):
  """How to run one example on tiny settings and what it must produce.

  Attributes:
    argv: the command line; ``OUT`` stands for the output folder.
    outputs: glob patterns, each of which must match a file under the output folder.
    metrics: keys of the dict ``main`` returns whose values must be finite numbers
      (in-process examples only).
  """
  argv: list
  outputs: tuple = ()
  metrics: tuple = ()


TINY = {
    "char_lm_pydoc": Tiny(
        ["--steps", "3", "--hidden", "8", "--embed", "4", "--length", "8", "--batch-size", "2",
         "--eval-chars", "400", "--sample-every", "2", "--sample-chars", "8", "--out", OUT],
        ("char_lm_pydoc.png", "char_lm_pydoc_samples.txt"),
        ("bpc", "train_bpc", "unigram_bpc", "unigram_held_out_bpc")),
    "convlstm_moving_squares": Tiny(
        ["--steps", "1", "--batch-size", "1", "--frames", "4", "--features", "2",
         "--test-size", "2", "--out", OUT],
        ("convlstm_moving_squares.png",), ("mse", "copy_mse")),
    "data_parallel": Tiny(["--steps", "2", "--devices", "2", "--length", "4", "--batch-size",
                           "4", "--hidden", "4", "--out", OUT], ("data_parallel.png",)),
    "lenet_digits": Tiny(["--epochs", "1", "--batch-size", "512", "--out", OUT],
                         ("lenet_digits.png",), ("accuracy", "loss")),
    "linen_optax": Tiny(["--steps", "2", "--hidden", "4", "--features", "2", "--length", "4",
                         "--eval-every", "1", "--out", OUT],
                        ("linen_optax.png",), ("mse", "train_mse", "baseline")),
    "nnx_digits_bilstm": Tiny(["--epochs", "1", "--hidden", "4", "--batch-size", "512",
                               "--out", OUT],
                              ("nnx_digits_bilstm.png", "nnx_digits_bilstm_checkpoint/*"),
                              ("accuracy", "restored_accuracy", "loss")),
    "quickstart": Tiny(["--steps", "2", "--hidden", "2", "--batch-size", "4",
                        "--max-length", "4"], (), ("accuracy", "loss")),
}
COVERED_ELSEWHERE = {   # example name: the test that runs it on tiny settings
    "char_rnn_hello": "tests/test_generate.py::test_char_rnn_hello_example_runs_on_tiny_settings",
    "seq2seq_reverse": "tests/test_seq2seq.py::test_reversal_example_runs_on_tiny_settings",
}
SKIP: dict[str, str] = {}   # example name: why it cannot run here


def example_names() -> list[str]:
  return sorted(path.stem for path in EXAMPLES.glob("*.py") if not path.name.startswith("_"))


def runs_in_subprocess(path: pathlib.Path) -> bool:
  """Whether the module sets ``RUN_IN_SUBPROCESS = True`` at its top level."""
  for node in ast.parse(path.read_text(encoding="utf-8")).body:
    targets = (node.targets if isinstance(node, ast.Assign)
               else [node.target] if isinstance(node, ast.AnnAssign) else [])
    if any(isinstance(t, ast.Name) and t.id == "RUN_IN_SUBPROCESS" for t in targets):
      return isinstance(node.value, ast.Constant) and node.value.value is True
  return False


def load(name: str):
  """The example as a module (registered in ``sys.modules``, as dataclasses need)."""
  spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[spec.name]
    raise
  return module


def test_every_example_has_tiny_settings():
  missing = [name for name in example_names()
             if name not in TINY and name not in COVERED_ELSEWHERE and name not in SKIP]
  assert not missing, (f"examples without tiny settings in tests/test_examples.py TINY "
                       f"(or a test in COVERED_ELSEWHERE, or a reason in SKIP): {missing}")


def test_tiny_settings_name_existing_examples():
  stale = sorted((set(TINY) | set(COVERED_ELSEWHERE) | set(SKIP)) - set(example_names()))
  assert not stale, f"TINY/COVERED_ELSEWHERE/SKIP entries for missing examples: {stale}"


@pytest.mark.parametrize("name", sorted(COVERED_ELSEWHERE))
def test_examples_covered_elsewhere_are_run_there(name):
  path, function = COVERED_ELSEWHERE[name].split("::")
  source = (EXAMPLES.parent / path).read_text(encoding="utf-8")
  body = source.split(f"def {function}(", 1)
  assert len(body) == 2, f"{COVERED_ELSEWHERE[name]} does not exist"
  assert f'load_example("{name}").main(' in body[1].split("\ndef ", 1)[0], (
      f"{COVERED_ELSEWHERE[name]} does not run {name}")


def test_subprocess_marker_is_read_from_the_source(tmp_path):
  for source, expected in (("RUN_IN_SUBPROCESS = True\n", True),
                           ("RUN_IN_SUBPROCESS: bool = True\n", True),
                           ("RUN_IN_SUBPROCESS = False\n", False),
                           ("def main():\n  RUN_IN_SUBPROCESS = True\n", False),
                           ('"""RUN_IN_SUBPROCESS = True"""\n', False)):
    path = tmp_path / "example.py"
    path.write_text(source)
    assert runs_in_subprocess(path) is expected, source


@pytest.mark.parametrize("name", example_names())
def test_example_runs_on_tiny_settings(name, tmp_path, capsys):
  if name in SKIP:
    pytest.skip(SKIP[name])
  if name in COVERED_ELSEWHERE:
    pytest.skip(f"run on tiny settings by {COVERED_ELSEWHERE[name]}")
  if name not in TINY:
    pytest.fail(f"{name}: no tiny settings in TINY (see test_every_example_has_tiny_settings)")
  tiny = TINY[name]
  out = tmp_path / "out"
  argv = [arg.replace(OUT, str(out)) for arg in tiny.argv]
  path = EXAMPLES / f"{name}.py"
  if runs_in_subprocess(path):
    proc = subprocess.run([sys.executable, str(path), *argv], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    if OUT in tiny.argv and not tiny.outputs:
      assert any(p.is_file() for p in out.rglob("*")), f"{name} wrote nothing under {out}"
  else:
    result = load(name).main(argv)
    assert capsys.readouterr().out.strip(), f"{name} printed nothing"
    assert isinstance(result, dict), f"{name}.main returned {type(result).__name__}"
    for key in tiny.metrics:
      value = result[key]
      assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
  for pattern in tiny.outputs:
    assert any(p.is_file() for p in out.glob(pattern)), f"{name}: no {pattern} in {out}"


@pytest.mark.parametrize("name, blocked, package", [
    ("nnx_digits_bilstm", "sklearn", "scikit-learn"),
    ("nnx_digits_bilstm", "orbax", "orbax-checkpoint"),
])
def test_missing_optional_dependency_is_one_line(tmp_path, name, blocked, package):
  script = EXAMPLES / f"{name}.py"
  code = (f"import runpy, sys; sys.modules[{blocked!r}] = None; sys.argv = [{script.name!r}]; "
          f"runpy.run_path({str(script)!r}, run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip() == (f"{script.name} needs {package}: pip install {package} "
                                 "(or pip install 'jaxseq[examples]')")
