"""GPU benchmark (issue #8): jaxseq's kernel paths against cuDNN (PyTorch ``nn.LSTM`` and
``jax.experimental.rnn``) and Flax linen at FlashRNN's configuration, B16 T1024 D=H=768,
forward and forward+backward.

The issue's GPU targets, checked in the report's targets table: the plain LSTM's best jaxseq
path within 1.2x of PyTorch's cuDNN LSTM, and every other cell within 3x of that same
PyTorch cuDNN LSTM time, in each mode. FlashRNN's published H100 figures are quoted for
context; they were not measured here.

Implementations (rows), in the order they run (the most important first, so that a run cut
short still holds the reference and the targets' numbers):

* ``torch-lstm``, ``torch-gru``: ``torch.nn.LSTM`` / ``torch.nn.GRU`` on CUDA (cuDNN),
  ``batch_first=True``; the LSTM gets the jaxseq LSTM's weights (same function, so its
  outputs are compared too). Only when ``torch.cuda.is_available()``.
* ``lstm/<kernel>``: ``jaxseq.unroll(lstm, ..., kernel=k)`` for k in ``cudnn``, ``xla``,
  ``reference`` and (last, being the riskiest to compile) ``pallas``; the same params for
  all of them.
* ``jax-rnn-lstm``: ``jax.experimental.rnn.lstm`` called directly (cuDNN through JAX), with
  the same params packed by ``jaxseq.kernels.cudnn.pack``.
* ``flax-lstm``: Flax linen ``nn.RNN(nn.OptimizedLSTMCell(H))``, the JAX peer.
* ``<cell>/auto``: every other dense cell on ``unroll``'s default ``kernel="auto"`` path
  (today the cell's fused XLA kernel; the report says which path ``auto`` took): GRU with
  the reset gate after (cuDNN/PyTorch placement) and before the recurrent matmul, MGU,
  simple RNN, peephole LSTM, minGRU, minLSTM.

A row that cannot run on this machine is recorded as skipped, with the reason (no CUDA, no
cuDNN plugin, float32-only op asked for bfloat16, Pallas at full size on CPU, time budget
spent); a row that raises while building, compiling or running is recorded with its error.

Timing: one process for the JAX rows; each PyTorch row runs in a child process that sees
no GPU through JAX (``JAX_PLATFORMS=cpu``), so PyTorch's CUDA/cuDNN libraries and JAX's
never load into one process; the child takes the inputs and LSTM weights from a file. For
each row, in turn: build, first forward call and first forward+backward call (their times
are the compile times, recorded apart), ``--warmup`` warm-up calls, then
``--forward-repeats`` (20) forward calls and ``--backward-repeats`` (10) forward+backward
calls, each timed on its own; medians are reported. A row whose warm-up and repeats pass
``--row-limit-s`` (30 s) stops early (the report says how many calls), and rows not started
within ``--budget-s`` (420 s) are skipped, so that a run at the default size ends within
about 8 minutes unless one compilation hangs (a bound by design: no GPU run has been made
yet to measure it).
JAX calls end with ``jax.block_until_ready``; PyTorch calls are bracketed by
``torch.cuda.synchronize()``. The loss is ``sum(ys ** 2)`` (summed in float32), gradients
of the parameters only. PyTorch's forward runs under ``torch.no_grad()`` (the jitted JAX
forward keeps no residuals either). The LSTM rows' forward outputs are compared with the
reference scan's (max abs difference), a check that every path computes the same function.

dtype: float32 by default (TF32 settings are recorded: PyTorch lets cuDNN use TF32 by
default, XLA's default float32 matmul precision on GPU may too). ``--dtype bfloat16``: jaxseq
cells with ``dtype=bfloat16`` (float32 params), Flax ``dtype=bfloat16,
param_dtype=float32``, PyTorch ``module.to(bfloat16)``; the cuDNN paths through JAX are
float32 only and are skipped.

    python benchmarks/bench_gpu.py                      # B16 T1024 D768 H768 float32
    python benchmarks/bench_gpu.py --dtype bfloat16
    python benchmarks/bench_gpu.py --configs 16x1024x768x768,64x256x512x512
    python benchmarks/bench_gpu.py --quick              # tiny sizes; runs on CPU too

Writes benchmarks/results/gpu.md (``--quick``: gpu-quick.md; or ``--out``) and the raw
numbers beside it as JSON, both rewritten after every row, and prints a progress line per
row. Without a GPU the script runs only with ``--quick`` (or ``--allow-cpu``): GPU-only rows
are skipped with their reasons, so that the code paths are exercised.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

# JAX and PyTorch share the GPU: do not let XLA take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:   # there when run as a script, not when loaded by file path
  sys.path.insert(0, _HERE)
import _common  # noqa: E402
from _common import loss_grad, ms, table, timed  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
TORCH_DEVICE = "cuda"
"""Where the PyTorch rows run (the smoke test checks their weight copy on ``"cpu"``)."""
MODES = ("forward", "forward+backward")
TORCH_LSTM = "torch-lstm"


class Config(NamedTuple):
  """Inputs ``(B, T, D)``, ``H`` hidden units, in ``dtype``."""
  B: int
  T: int
  D: int
  H: int
  dtype: str = "float32"

  def label(self) -> str:
    return f"B{self.B} T{self.T} D{self.D} H{self.H} {self.dtype}"


class Row(NamedTuple):
  """One implementation: ``cell`` (the cell key) run by ``path``."""
  name: str
  cell: str
  path: str
  label: str


FLASHRNN = Config(16, 1024, 768, 768)
QUICK = Config(2, 8, 8, 16)

CELL_LABELS = {
    "lstm": "LSTM", "gru": "GRU (reset after)", "gru-reset-before": "GRU (reset before)",
    "mgu": "MGU", "simple_rnn": "simple RNN", "lstm-peephole": "LSTM (peephole)",
    "min_gru": "minGRU", "min_lstm": "minLSTM"}
OTHER_CELLS = ("gru", "gru-reset-before", "mgu", "simple_rnn", "lstm-peephole", "min_gru",
               "min_lstm")
ROWS = (
    Row(TORCH_LSTM, "lstm", "torch", "PyTorch nn.LSTM (cuDNN)"),
    Row("lstm/cudnn", "lstm", "cudnn", "jaxseq kernel=cudnn"),
    Row("jax-rnn-lstm", "lstm", "jax-rnn", "jax.experimental.rnn.lstm (cuDNN)"),
    Row("lstm/xla", "lstm", "xla", "jaxseq kernel=xla"),
    Row("lstm/reference", "lstm", "reference", "jaxseq kernel=reference"),
    Row("flax-lstm", "lstm", "flax", "Flax linen OptimizedLSTMCell"),
    *(Row(f"{cell}/auto", cell, "auto", "jaxseq kernel=auto") for cell in OTHER_CELLS),
    Row("torch-gru", "gru", "torch", "PyTorch nn.GRU (cuDNN)"),
    Row("lstm/pallas", "lstm", "pallas", "jaxseq kernel=pallas"),
)
JAXSEQ_LSTM = ("lstm/cudnn", "lstm/xla", "lstm/reference", "lstm/pallas")
LIMITS = {"lstm": 1.2, "other": 3.0}

# FlashRNN's repository figure (Poeppel et al. 2024), H100, B16 T1024 H768, bfloat16.
PUBLISHED = (("cuDNN LSTM", 2.01, 5.19), ("FlashRNN fused", 4.87, 13.61),
             ("FlashRNN alternating", 10.79, 26.49), ("haste", 18.41, 43.86))


class Skip(Exception):
  """A row that cannot run on this machine, with the reason."""


# ----------------------------------------------------------------------------- machine


def _distribution(name: str) -> str:
  """An installed package's version without importing it."""
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def gpu_backend() -> bool:
  import jax
  return jax.default_backend() == "gpu"


def machine() -> dict:
  """The host (``_common.machine``), the JAX device, library versions and JAX's float32
  matmul setting. PyTorch is not imported here (see ``torch_info``): its CUDA libraries stay
  out of this process."""
  import jax
  import jaxseq
  device = jax.devices()[0]   # initialises JAX's backend first
  return {**_common.machine(), "jax_device": device.device_kind,
          "jax_devices": jax.device_count(),
          "versions": {"jax": _common.version("jax"), "jaxlib": _common.version("jaxlib"),
                       "flax": _common.version("flax"), "torch": _distribution("torch")},
          "jaxseq_kernels": list(jaxseq.kernels.available()),
          "jax_default_matmul_precision": str(
              getattr(jax.config, "jax_default_matmul_precision", None))}


def _torch_cuda() -> str | None:
  """Why PyTorch's CUDA cannot run here, or ``None`` (imports PyTorch)."""
  try:
    import torch
  except Exception as error:
    return f"PyTorch does not import ({type(error).__name__}: {error})"
  if not torch.cuda.is_available():
    return f"torch.cuda.is_available() is False (PyTorch {torch.__version__})"
  return None


def torch_info() -> dict:
  """PyTorch's device and the settings that change its float32 cuDNN timings."""
  import torch
  return {"version": torch.__version__, "device": torch.cuda.get_device_name(0),
          "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
          "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
          "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


# ----------------------------------------------------------------------------- builders
#
# Each builder returns ``(forward, grad, output)``: blocking calls of the forward pass and of
# the gradient of sum(ys ** 2) on fixed inputs, and ``output()``, the forward's ys as a
# float32 NumPy array (batch-major), or None where the row is not the shared LSTM's function.
# ``data`` holds what rows share: ``xs`` (B, T, D) and ``lstm`` (the plain LSTM's params).


def _cell(name: str, config: Config):
  import jax.numpy as jnp
  import jaxseq
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
  H = config.H
  return {"lstm": lambda: jaxseq.lstm(H, dtype=dtype),
          "lstm-peephole": lambda: jaxseq.lstm(H, peephole=True, dtype=dtype),
          "gru": lambda: jaxseq.gru(H, dtype=dtype),
          "gru-reset-before": lambda: jaxseq.gru(H, reset_after=False, dtype=dtype),
          "mgu": lambda: jaxseq.mgu(H, dtype=dtype),
          "simple_rnn": lambda: jaxseq.simple_rnn(H, dtype=dtype),
          "min_gru": lambda: jaxseq.min_gru(H, dtype=dtype),
          "min_lstm": lambda: jaxseq.min_lstm(H, dtype=dtype)}[name]()


def shared_data(config: Config) -> dict:
  """The inputs every row takes and the params every plain-LSTM row takes."""
  import jax
  import jax.numpy as jnp
  xs = jax.random.normal(jax.random.PRNGKey(1), (config.B, config.T, config.D))
  params = _cell("lstm", config).init(jax.random.PRNGKey(0), config.D)
  return {"xs": xs.astype(jnp.dtype(config.dtype)), "lstm": params}


def _as_numpy(ys):
  import numpy as np
  return np.asarray(ys, dtype=np.float32)


def _jitted(apply, params, xs, compare: bool):
  import jax
  forward = jax.jit(apply)
  grad = jax.jit(loss_grad(apply))
  output = (lambda: _as_numpy(forward(params, xs))) if compare else (lambda: None)
  return (lambda: jax.block_until_ready(forward(params, xs)),
          lambda: jax.block_until_ready(grad(params, xs)), output)


def auto_path(cell, params, config: Config) -> str:
  """Which path ``unroll(..., kernel="auto")`` takes for ``cell`` (no remat, no vmap)."""
  import jax.numpy as jnp
  from jaxseq import kernels
  dtype = jnp.dtype(config.dtype)
  if kernels.cudnn.available() and dtype == jnp.float32 and kernels.cudnn.reason(
      cell, params, dtype) is None:
    return "cudnn"
  return cell.kernel.name if cell.kernel is not None else "reference"


def _jaxseq(row: Row, config: Config, data: dict, pallas_interpret: bool):
  import jax
  import jaxseq
  from jaxseq import kernels

  cell = _cell(row.cell, config)
  params = (data["lstm"] if row.cell == "lstm"
            else cell.init(jax.random.PRNGKey(0), config.D))
  kernel = row.path
  if kernel == "cudnn":
    if not kernels.cudnn.available():
      raise Skip(kernels.unavailable_reason("cudnn"))
    why = kernels.cudnn.reason(cell, params, config.dtype)
    if why is not None:
      raise Skip(why)
  if kernel == "pallas":
    why = kernels.unavailable_reason("pallas")   # no Pallas, or a GPU (no Mosaic GPU lowering)
    if why is not None:
      raise Skip(why)
    if jax.default_backend() == "cpu" and not pallas_interpret:
      raise Skip("Pallas on CPU runs in interpret mode, far too slow at this size "
                 "(run at --quick only)")
    why = kernels.pallas.reason(cell)
    if why is not None:
      raise Skip(why)
  calls = _jitted(lambda p, x: jaxseq.unroll(cell, p, x, kernel=kernel)[0], params,
                  data["xs"], compare=row.cell == "lstm")
  path = auto_path(cell, params, config) if kernel == "auto" else kernel
  return calls, {"path": path}


def _jax_rnn(config: Config, data: dict):
  import jax.numpy as jnp
  from jaxseq import kernels

  if kernels.cudnn.rnn is None:
    raise Skip("jax.experimental.rnn does not import with this JAX")
  if not kernels.cudnn.available():
    raise Skip(kernels.unavailable_reason("cudnn"))
  if config.dtype != "float32":
    raise Skip(f"jax.experimental.rnn is float32 only (asked for {config.dtype})")
  rnn = kernels.cudnn.rnn
  weights = kernels.cudnn.pack(data["lstm"], _cell("lstm", config).spec)
  B, H, D = config.B, config.H, config.D
  zeros = jnp.zeros((1, B, H), jnp.float32)
  lengths = jnp.full((B,), config.T, jnp.int32)

  def apply(weights, xs):
    return rnn.lstm(xs, zeros, zeros, weights, lengths, input_size=D, hidden_size=H,
                    num_layers=1, dropout=0.0, bidirectional=False)[0]
  return _jitted(apply, weights, data["xs"], compare=True), {"path": "cudnn"}


def _flax(config: Config, data: dict):
  import jax
  import jax.numpy as jnp
  try:
    import flax.linen as nn
  except Exception as error:
    raise Skip(f"Flax does not import ({type(error).__name__}: {error})") from None
  options = ({"dtype": jnp.bfloat16, "param_dtype": jnp.float32}
             if config.dtype == "bfloat16" else {})
  model = nn.RNN(nn.OptimizedLSTMCell(config.H, **options))
  params = model.init(jax.random.PRNGKey(0), data["xs"])
  return _jitted(model.apply, params, data["xs"], compare=False), {"path": "scan"}


def _torch(row: Row, config: Config, data: dict):
  why = _torch_cuda()
  if why is not None:
    raise Skip(why)
  import numpy as np
  import torch

  device = torch.device(TORCH_DEVICE)
  make = torch.nn.LSTM if row.cell == "lstm" else torch.nn.GRU
  module = make(config.D, config.H, batch_first=True)
  if row.cell == "lstm":   # the shared LSTM's weights; gates i, f, g, o in both libraries
    params = {k: torch.from_numpy(np.array(v, dtype=np.float32))
              for k, v in data["lstm"].items()}
    with torch.no_grad():
      module.weight_ih_l0.copy_(params["w_ih"].T)
      module.weight_hh_l0.copy_(params["w_hh"].T)
      module.bias_ih_l0.copy_(params["b"])
      module.bias_hh_l0.zero_()
  xs = torch.from_numpy(np.array(data["xs"], dtype=np.float32))
  dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
  module, xs = module.to(device=device, dtype=dtype), xs.to(device=device, dtype=dtype)

  def forward():
    torch.cuda.synchronize()
    with torch.no_grad():
      ys = module(xs)[0]
    torch.cuda.synchronize()
    return ys

  def grad():
    torch.cuda.synchronize()
    module.zero_grad(set_to_none=True)
    (module(xs)[0].float() ** 2).sum().backward()
    torch.cuda.synchronize()

  def output():
    return forward().float().cpu().numpy() if row.cell == "lstm" else None
  return (forward, grad, output), {"path": "cudnn", "torch": torch_info()}


def build(row: Row, config: Config, data: dict, pallas_interpret: bool = False):
  """``((forward, grad, output), info)`` for ``row``; raises ``Skip`` with the reason."""
  if row.path == "torch":
    return _torch(row, config, data)
  if row.path == "jax-rnn":
    return _jax_rnn(config, data)
  if row.path == "flax":
    return _flax(config, data)
  return _jaxseq(row, config, data, pallas_interpret)


# ----------------------------------------------------------------------------- timing


def _summary(times: list) -> dict:
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "n": len(times)}


def _head(row: Row) -> dict:
  return {"row": row.name, "cell": row.cell, "implementation": row.label}


def _repeat(call: Callable[[], Any], repeats: int, deadline: float) -> list:
  """Times up to ``repeats`` calls, fewer (at least one) once ``deadline`` has passed."""
  times = []
  while len(times) < repeats and (not times or time.perf_counter() < deadline):
    times.append(timed(call))
  return times


def time_row(row: Row, config: Config, data: dict, forward_repeats: int,
             backward_repeats: int, warmup: int = 2, pallas_interpret: bool = False,
             outputs: dict | None = None, limit_s: float = 30.0) -> dict:
  """Times one row in this process; returns its record: ``status`` ``"ok"`` (with
  ``compile_s`` and ``forward``/``forward+backward`` summaries), ``"skipped"`` or
  ``"error"`` (with ``reason``). ``outputs``, when given, collects the shared LSTM rows'
  forward outputs. A path so slow that its warm-up and repeats pass ``limit_s`` after its
  compilation gets fewer of them, at least one of each (the summaries' ``n`` says how
  many)."""
  record = _head(row)
  try:
    (forward, grad, output), info = build(row, config, data, pallas_interpret)
    record.update(info)
    compile_s = {"forward": timed(forward), "forward+backward": timed(grad)}
    deadline = time.perf_counter() + limit_s
    if warmup:
      _repeat(forward, warmup, deadline)
      _repeat(grad, warmup, deadline)
    forward_times = _repeat(forward, forward_repeats, deadline)
    backward_times = _repeat(grad, backward_repeats, deadline)
    if outputs is not None:
      ys = output()
      if ys is not None:
        outputs[row.name] = ys
  except Skip as why:
    return {**record, "status": "skipped", "reason": str(why)}
  except Exception as error:   # a path that fails here is a result too: record it, go on
    return {**record, "status": "error", "reason": _error(error)}
  return {**record, "status": "ok", "compile_s": compile_s,
          "forward": _summary(forward_times), "forward+backward": _summary(backward_times)}


def _error(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _save_data(data: dict, path: pathlib.Path) -> None:
  import numpy as np
  arrays = {"xs": _as_numpy(data["xs"])}
  arrays.update({f"lstm.{k}": _as_numpy(v) for k, v in data["lstm"].items()})
  np.savez(path, **arrays)


def _load_data(path: str) -> dict:
  import numpy as np
  with np.load(path) as arrays:
    return {"xs": arrays["xs"], "lstm": {k.split(".", 1)[1]: arrays[k] for k in arrays.files
                                         if k.startswith("lstm.")}}


def torch_row(row: Row, config: Config, data_path: pathlib.Path, forward_repeats: int,
              backward_repeats: int, warmup: int = 2, outputs: dict | None = None,
              limit_s: float = 30.0, timeout_s: float = 300.0) -> dict:
  """Times a PyTorch row in a child process (``--torch-worker``), so that PyTorch's CUDA
  and cuDNN libraries never meet JAX's in one process; the child sees no GPU through JAX
  (``JAX_PLATFORMS=cpu``) and takes the inputs and LSTM weights from ``data_path``."""
  import numpy as np
  ys_path = data_path.with_name(f"{row.name}.npy")
  job = {"row": row.name, "config": config._asdict(), "data": str(data_path),
         "ys": str(ys_path), "forward_repeats": forward_repeats,
         "backward_repeats": backward_repeats, "warmup": warmup, "limit_s": limit_s}
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  try:
    done = subprocess.run([sys.executable, __file__, "--torch-worker", json.dumps(job)],
                          capture_output=True, text=True, env=env, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {**_head(row), "status": "error",
            "reason": f"the PyTorch worker ran past {timeout_s:.0f} s"}
  lines = done.stdout.strip().splitlines()
  if done.returncode != 0 or not lines:
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {**_head(row), "status": "error",
            "reason": f"the PyTorch worker failed (exit {done.returncode}): {tail}"}
  record = json.loads(lines[-1])
  if outputs is not None and ys_path.exists():
    outputs[row.name] = np.load(ys_path)
    ys_path.unlink()
  return record


def _torch_worker(job: dict) -> None:
  import numpy as np
  row = next(r for r in ROWS if r.name == job["row"])
  outputs = {}
  record = time_row(row, Config(**job["config"]), _load_data(job["data"]),
                    job["forward_repeats"], job["backward_repeats"], job["warmup"],
                    outputs=outputs, limit_s=job["limit_s"])
  if row.name in outputs:
    np.save(job["ys"], outputs[row.name])
  print(json.dumps(record), flush=True)


def agreement(outputs: dict) -> dict:
  """Max |ys - ys of lstm/reference| (or of the first LSTM row that ran) per LSTM row."""
  import numpy as np
  if not outputs:
    return {}
  base = "lstm/reference" if "lstm/reference" in outputs else next(iter(outputs))
  return {"against": base, "max_abs_diff": {
      name: float(np.max(np.abs(ys - outputs[base]))) for name, ys in outputs.items()
      if name != base and ys.shape == outputs[base].shape}}


def run_config(config: Config, rows, forward_repeats: int, backward_repeats: int,
               warmup: int = 2, pallas_interpret: bool = False, deadline: float | None = None,
               on_row: Callable[[dict], None] | None = None,
               torch_in_process: bool = False, limit_s: float = 30.0) -> dict:
  """Times ``rows`` at ``config``, one after the other; ``on_row(result)`` after each
  (the result so far). Rows not started before ``deadline`` (``time.perf_counter``) are
  skipped; ``limit_s`` bounds each row's calls after compilation (``time_row``). PyTorch rows
  run in a child process unless ``torch_in_process``."""
  result = {"config": config._asdict(), "rows": {}, "agreement": {},
            "repeats": {"forward": forward_repeats, "forward+backward": backward_repeats,
                        "warmup": warmup}}
  data, outputs = shared_data(config), {}
  with tempfile.TemporaryDirectory(prefix="bench_gpu_") as scratch:
    data_path = pathlib.Path(scratch) / "data.npz"
    for row in rows:
      if deadline is not None and time.perf_counter() > deadline:
        record = {**_head(row), "status": "skipped",
                  "reason": "the run's time budget (--budget-s) was spent"}
      elif row.path == "torch" and not torch_in_process:
        if not data_path.exists():
          _save_data(data, data_path)
        record = torch_row(row, config, data_path, forward_repeats, backward_repeats, warmup,
                           outputs, limit_s)
      else:
        record = time_row(row, config, data, forward_repeats, backward_repeats, warmup,
                          pallas_interpret, outputs, limit_s)
      gc.collect()    # the row's compiled functions and device buffers go before the next
      result["rows"][row.name] = record
      result["agreement"] = agreement(outputs)
      print(_progress(config, record), flush=True)
      if on_row is not None:
        on_row(result)
  return result


def _progress(config: Config, record: dict) -> str:
  head = f"[{config.label()}] {record['row']}:"
  if record["status"] != "ok":
    return f"{head} {record['status']} ({record['reason']})"
  compile_s = record["compile_s"]
  return (f"{head} forward {ms(record['forward']['median_s'])}, forward+backward "
          f"{ms(record['forward+backward']['median_s'])} (compile {compile_s['forward']:.1f}"
          f" s + {compile_s['forward+backward']:.1f} s)")


# ----------------------------------------------------------------------------- report


def _time(record: dict | None, mode: str) -> float | None:
  if not record or record.get("status") != "ok":
    return None
  return record[mode]["median_s"]


def _ratio(numerator: float | None, denominator: float | None) -> str:
  if numerator is None or denominator is None:
    return "n/a"
  return f"{numerator / denominator:.2f}x"


def targets(result: dict) -> list:
  """The issue's targets for one config: ``[{target, mode, row, time, reference, ratio,
  limit, met}]``; ``met`` is None where a time is missing, and for the information-only
  row (the best jaxseq LSTM path without cuDNN, limit None)."""
  rows = result["rows"]
  checks = []
  for mode in MODES:
    reference = _time(rows.get(TORCH_LSTM), mode)
    groups = [("plain LSTM, best jaxseq path", JAXSEQ_LSTM, LIMITS["lstm"]),
              ("plain LSTM, best jaxseq path without cuDNN (information)",
               tuple(n for n in JAXSEQ_LSTM if n != "lstm/cudnn"), None)]
    groups += [(f"{CELL_LABELS[cell]}, kernel=auto", (f"{cell}/auto",), LIMITS["other"])
               for cell in OTHER_CELLS]
    for target, names, limit in groups:
      timed = [(t, n) for n in names for t in [_time(rows.get(n), mode)] if t is not None]
      best, name = min(timed) if timed else (None, None)
      ratio = None if best is None or reference is None else best / reference
      checks.append({"target": target, "mode": mode, "row": name, "time_s": best,
                     "reference_s": reference, "ratio": ratio, "limit": limit,
                     "met": None if ratio is None or limit is None else ratio <= limit})
  return checks


def _torch_of(saved: dict) -> dict | None:
  """PyTorch's device record, from the first PyTorch row that ran."""
  for result in saved["configs"]:
    for record in (result or {}).get("rows", {}).values():
      if record.get("torch"):
        return record["torch"]
  return None


def _machine_lines(info: dict, torch: dict | None) -> list:
  versions = ", ".join(f"{m} {v}" for m, v in info["versions"].items())
  device = (f"{torch['device']} (CUDA {torch['cuda']}, cuDNN {torch['cudnn']})" if torch
            else "none (no PyTorch row ran on CUDA)")
  line = (f"* Float32 matmul settings: JAX `jax_default_matmul_precision` = "
          f"{info['jax_default_matmul_precision']} (None: XLA's default, which may use TF32 "
          "on GPUs that have it)")
  if torch:
    line += (f"; PyTorch `backends.cudnn.allow_tf32` = {torch['cudnn_allow_tf32']}, "
             f"`backends.cuda.matmul.allow_tf32` = {torch['matmul_allow_tf32']}")
  return [f"* JAX device: {info['jax_device']} ({info['backend']} backend, "
          f"{info['jax_devices']} device(s)); PyTorch device: {device}.",
          f"* Python {info['python']}, {versions}; jaxseq kernels available: "
          f"{', '.join(info['jaxseq_kernels'])}.", line + "."]


def report(saved: dict) -> str:
  """The markdown report of ``saved`` (``{"machine", "date", "configs": [...]}``)."""
  info = saved["machine"]
  lines = ["# GPU benchmark: jaxseq against cuDNN" + (" (quick smoke run)"
                                                      if saved.get("quick") else ""), ""]
  if info["backend"] != "gpu":
    lines += [f"**No GPU on this machine** ({info['backend']} backend): GPU-only paths are "
              "skipped and the times below are not GPU times; the targets are not checked "
              "in earnest by this run.", ""]
  command = " ".join(["python benchmarks/bench_gpu.py", *saved.get("argv", [])])
  if not saved.get("finished"):
    wall = " (partial: written while the run was going; it did not finish)"
  else:
    wall = f", {saved['wall_s'] / 60:.1f} min in all" if "wall_s" in saved else ""
  lines += [f"Run on {saved['date']} by `{command}`{wall}.", ""]
  lines += _machine_lines(info, _torch_of(saved)) + [""]
  lines += ["Each row is timed on its own, one after the other (the JAX rows in one process, "
            "each PyTorch row in a child process): the first forward and forward+backward "
            "calls (compile time, listed apart), warm-up calls, then the repeats; medians. "
            "Loss `sum(ys ** 2)`, gradients of the parameters. Ratios are to PyTorch's cuDNN "
            "`nn.LSTM` at the same size and dtype (`torch-lstm`).", ""]
  for result in [r for r in saved["configs"] if r]:
    config = Config(**result["config"])
    rows = result["rows"]
    reference = {mode: _time(rows.get(TORCH_LSTM), mode) for mode in MODES}
    repeats = result["repeats"]
    lines += [f"## {config.label()}", "",
              f"{repeats['forward']} forward and {repeats['forward+backward']} "
              f"forward+backward timed calls per row after {repeats['warmup']} warm-up "
              "call(s) of each.", ""]
    diffs = result.get("agreement", {}).get("max_abs_diff", {})
    against = result.get("agreement", {}).get("against")
    body = []
    for name, record in rows.items():
      if record["status"] != "ok":
        continue
      times = [_time(record, mode) for mode in MODES]
      compile_s = record["compile_s"]
      path = record.get("path", "")
      diff = (f"{diffs[name]:.1e}" if name in diffs else "(base)" if name == against
              else "n/a")
      body.append(
          f"| {CELL_LABELS[record['cell']]} | {record['implementation']} | {path} | "
          + " | ".join(ms(t) + _fewer(record[m]["n"], repeats[m])
                       for t, m in zip(times, MODES)) + " | "
          + " | ".join(_ratio(t, reference[m]) for t, m in zip(times, MODES)) + " | "
          + f"{compile_s['forward']:.1f} s / {compile_s['forward+backward']:.1f} s | "
          + f"{diff} |")
    lines += table("| cell | implementation | path | forward | forward+backward | forward / "
                   "torch LSTM | fwd+bwd / torch LSTM | compile (fwd / fwd+bwd) | "
                   "max abs diff of ys |", body)
    if against:
      lines += [f"Max abs diff: the LSTM rows share one set of weights (PyTorch's LSTM gets "
                f"them copied in); each row's forward outputs against `{against}`'s.", ""]
    lines += ["### Targets (issue #8)", ""]
    checks = targets(result)
    lines += table("| target | mode | jaxseq row | time | PyTorch cuDNN LSTM | ratio | "
                   "limit | met |", [
                       f"| {c['target']} | {c['mode']} | {c['row'] or 'none ran'} | "
                       f"{ms(c['time_s'])} | {ms(c['reference_s'])} | "
                       f"{'n/a' if c['ratio'] is None else format(c['ratio'], '.2f') + 'x'}"
                       f" | {'-' if c['limit'] is None else format(c['limit'], 'g') + 'x'} | "
                       f"{_met(c)} |" for c in checks])
    if reference["forward"] is None:
      why = rows.get(TORCH_LSTM, {}).get("reason", "it did not run")
      lines += [f"Not checked: PyTorch's cuDNN LSTM, the reference, did not run ({why}).",
                ""]
    not_run = [r for r in rows.values() if r["status"] != "ok"]
    if not_run:
      lines += ["### Not run", ""] + [
          f"* `{r['row']}` ({r['implementation']}): {r['status']}: {r['reason']}"
          for r in not_run] + [""]
  lines += ["## Published figures, for context (not measured here)", "",
            "FlashRNN's repository figure (Pöppel et al., 2024), H100, B16 T1024 H768, "
            "bfloat16, as published:", ""]
  lines += table("| implementation | forward | forward+backward |",
                 [f"| {name} | {fwd:.2f} ms | {both:.2f} ms |"
                  for name, fwd, both in PUBLISHED])
  lines += ["They are bfloat16 times on another GPU, with FlashRNN's own harness: set them "
            "beside a `--dtype bfloat16` run's, as orders of magnitude; the targets above "
            "compare with PyTorch's cuDNN LSTM measured in this run.", ""]
  return "\n".join(lines)


def _fewer(n: int, wanted: int) -> str:
  """A note on a time taken over fewer calls than asked (the row's time limit)."""
  return f" (n = {n})" if n < wanted else ""


def _met(check: dict) -> str:
  if check["limit"] is None:
    return "(information)"
  if check["met"] is None:
    return "not checked"
  return "yes" if check["met"] else "**no**"


def write(saved: dict, out: pathlib.Path) -> str:
  """Writes the report to ``out`` and the numbers to ``out`` with a .json suffix."""
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(saved, indent=1))
  text = report(saved)
  out.write_text(text + "\n")
  return text


# ----------------------------------------------------------------------------- driver


def _parse_configs(text: str, dtype: str) -> list:
  configs = []
  for item in text.split(","):
    sizes = item.strip().lower().split("x")
    if len(sizes) != 4 or not all(s.isdigit() and int(s) > 0 for s in sizes):
      raise ValueError(f"--configs: expected BxTxDxH with positive integers, got {item!r}")
    configs.append(Config(*map(int, sizes), dtype=dtype))
  return configs


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help=f"tiny size ({QUICK.B}x{QUICK.T}x{QUICK.D}x{QUICK.H}), 3 repeats; "
                      "runs on CPU too (Pallas in interpret mode)")
  parser.add_argument("--configs", default=None,
                      help="comma-separated BxTxDxH sizes (default 16x1024x768x768)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--rows", default=None,
                      help="comma-separated rows to run (default all): "
                      + ", ".join(row.name for row in ROWS))
  parser.add_argument("--forward-repeats", type=int, default=None, help="default 20")
  parser.add_argument("--backward-repeats", type=int, default=None, help="default 10")
  parser.add_argument("--warmup", type=int, default=2, help="warm-up calls per mode")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="skip rows not started after this many seconds (default 420; "
                      "none with --quick)")
  parser.add_argument("--row-limit-s", type=float, default=30.0,
                      help="a row's warm-up and repeats stop this long after its compilation "
                      "(at least one call of each)")
  parser.add_argument("--allow-cpu", action="store_true",
                      help="run full sizes even without a GPU (very slow)")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="markdown report path (JSON beside it); default "
                      "benchmarks/results/gpu.md, or gpu-quick.md with --quick")
  parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.torch_worker:
    _torch_worker(json.loads(args.torch_worker))
    return
  try:
    configs = (_parse_configs(args.configs, args.dtype) if args.configs
               else [(QUICK if args.quick else FLASHRNN)._replace(dtype=args.dtype)])
  except ValueError as error:
    parser.error(str(error))
  rows = ROWS
  if args.rows:
    wanted = args.rows.split(",")
    unknown = sorted(set(wanted) - {row.name for row in ROWS})
    if unknown:
      parser.error(f"unknown rows {unknown}")
    rows = tuple(row for row in ROWS if row.name in wanted)
  if not gpu_backend() and not (args.quick or args.allow_cpu):
    parser.error("no GPU backend: run with --quick (tiny sizes; GPU-only rows skipped) or "
                 "--allow-cpu")
  forward_repeats = args.forward_repeats or (3 if args.quick else 20)
  backward_repeats = args.backward_repeats or (3 if args.quick else 10)
  budget = args.budget_s if args.budget_s is not None else (None if args.quick else 420.0)
  out = args.out or RESULTS / ("gpu-quick.md" if args.quick else "gpu.md")
  start = time.perf_counter()
  deadline = None if budget is None else start + budget
  saved = {"date": datetime.date.today().isoformat(), "quick": args.quick,
           "argv": list(sys.argv[1:] if argv is None else argv), "machine": machine(),
           "configs": [], "finished": False}
  info = saved["machine"]
  print(f"JAX device: {info['jax_device']} ({info['backend']}); budget "
        f"{'none' if budget is None else f'{budget:.0f} s'}; writing {out}", flush=True)
  for config in configs:
    saved["configs"].append(None)

    def on_row(result):
      saved["configs"][-1] = result
      saved["wall_s"] = time.perf_counter() - start
      write(saved, out)
    run_config(config, rows, forward_repeats, backward_repeats, args.warmup,
               pallas_interpret=args.quick, deadline=deadline, on_row=on_row,
               limit_s=args.row_limit_s)
  saved["wall_s"] = time.perf_counter() - start
  saved["finished"] = True
  text = write(saved, out)
  print(text)
  print(f"wrote {out} and {out.with_suffix('.json')} in {saved['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
  main()
