"""Backpropagation through time: ``unroll`` runs a cell over a sequence.

The cell's input half (``project``) runs once over all steps, one GEMM or convolution
over T·B; its recurrent half (``recur``) is then scanned with ``jax.lax.scan``, or run by the
cell's whole-sequence ``Kernel`` when it has one bound to that very ``recur`` (the one plug-in
point for fast kernels; see ``jaxseq.cells.base.Kernel`` and ``jaxseq.kernels``).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq import _checks
from jaxseq import kernels as kernels_lib
from jaxseq.cells.base import Cell, halves


def feature_ndim(cell: Cell) -> int:
  """Rank of one step's input without batch axes (1 for dense cells, 3 for 2-D conv cells)."""
  return getattr(cell.spec, "feature_ndim", 1)


def unroll(cell: Cell, params: Any, xs: jax.Array, carry: Any = None,
           lengths: jax.Array | None = None, reverse: bool = False, time_major: bool = False,
           unroll: int | bool = 1, remat: bool | int = False,
           kernel: str = "auto") -> tuple[Any, Any]:
  r"""Runs ``cell`` over a sequence with ``jax.lax.scan`` (backpropagation through time).

  Args:
    cell: a ``Cell``.
    params: the cell's parameters.
    xs: inputs ``(*batch, T, *features)`` (``(T, *batch, *features)`` when ``time_major``);
      any number of batch axes, none included.
    carry: initial carry; zeros (``cell.initialize_carry``) when ``None``.
    lengths: integer valid lengths, shaped like the batch axes. Outputs past a length are
      zero, inputs there are never read, and the returned carry is the carry after the last
      valid step (the initial carry for an empty sequence).
    reverse: run from the end to the start. With ``lengths`` each sequence runs from its
      last valid step back to step 0, so padding stays at the end. Outputs stay aligned
      with the inputs: ``ys[t]`` is the output computed at input ``xs[t]``.
    time_major: time is the leading axis of ``xs`` and ``ys``.
    unroll: ``lax.scan``'s unroll factor (steps per loop iteration).
    remat: gradient checkpointing for long sequences. ``True``: chunks of about
      ``sqrt(T)`` steps (``ceil(sqrt(T))``, or a divisor of T at least half of it), so
      backward memory is O(sqrt(T)) carries instead of O(T) at the cost of one extra
      forward pass; an int: that chunk length (a shorter last chunk where it does not
      divide T).
    kernel: which implementation runs the recurrent half, chosen here in Python before
      tracing (``jaxseq.kernels``). ``"auto"`` (default): on a CUDA/ROCm GPU the cuDNN
      LSTM where it applies (plain float32 LSTM, no ``remat``, not under ``vmap``), else
      the cell's own ``Kernel`` bound to its ``recur`` (every dense and conv built-in cell
      has the fused XLA path, on every backend), else the scan. ``"xla"``: the cell's
      kernel written in JAX (``Kernel.name == "xla"``) where it has one, else the scan.
      ``"cudnn"``/``"pallas"``: that path, or a ``ValueError`` saying why it cannot run
      this cell. ``"reference"``: always the ``lax.scan`` of ``recur``, differentiated by
      JAX. A wrapped cell whose recurrence changed (recurrent dropout, ``gradflow``) runs
      the scan whatever the option, so no path drops a wrapper's change. Under ``remat``
      kernels run chunk by chunk (cuDNN excepted); on CPU the fused XLA path also runs a
      long sequence in cache-sized blocks (``block_length``). ``jaxseq.kernels.available()``
      lists what this machine runs.

  Returns:
    ``(ys, carry)``: the outputs ``(*batch, T, *out_features)`` and the final carry.
  """
  if not isinstance(cell, Cell):
    _checks.fail("cell", "a jaxseq Cell (for a layer use layer.apply(params, xs))",
                 type(cell).__name__, TypeError)
  nf = feature_ndim(cell)
  xs = _checks.float_array("xs", xs)
  if xs.ndim < nf + 1:
    _checks.fail("xs", f"an array of rank >= {nf + 1} (*batch, T, *features)",
                 f"shape {tuple(xs.shape)}")
  if not isinstance(reverse, bool):
    _checks.fail("reverse", "a bool", repr(reverse), TypeError)
  if not isinstance(time_major, bool):
    _checks.fail("time_major", "a bool", repr(time_major), TypeError)
  kernel = kernels_lib.check(kernel)
  if isinstance(unroll, bool):  # lax.scan's unroll=True unrolls fully; False means 1
    unroll = True if unroll else 1
  else:
    unroll = _checks.positive_int("unroll", unroll)
  chunk = _chunk_length(remat, xs.shape[0 if time_major else xs.ndim - nf - 1])

  time_axis = 0 if time_major else xs.ndim - nf - 1
  xs = jnp.moveaxis(xs, time_axis, 0)
  num_steps = xs.shape[0]
  if num_steps == 0:
    _checks.fail("xs", "at least one time step", f"shape {tuple(xs.shape)} with T = 0")
  batch_shape = tuple(xs.shape[1:xs.ndim - nf])
  _checks.cell_params(cell, params, xs.shape[xs.ndim - nf:])
  lengths = _checks.lengths(lengths, batch_shape, num_steps)
  project, recur = halves(cell)
  step_shape = tuple(xs.shape[1:])
  # The dtypes recur computes the carry in (a float64 input widens a float32 carry).
  gx_0 = jax.eval_shape(lambda p, x: project(p, x), params,
                        jax.ShapeDtypeStruct(step_shape, xs.dtype))
  if carry is None:
    carry = cell.initialize_carry(params, step_shape)
    out = jax.eval_shape(recur, params, carry, gx_0)[0]
    carry = jax.tree.map(lambda c, o: c.astype(o.dtype), carry, out)
  else:
    _checks.carry(cell, params, carry, step_shape)
    out = jax.eval_shape(recur, params, carry, gx_0)[0]
    want = [str(o.dtype) for o in jax.tree.leaves(out)]
    got = [str(jnp.result_type(c)) for c in jax.tree.leaves(carry)]
    if want != got:
      _checks.fail("carry", f"a carry in the dtypes the cell's step returns "
                   f"({', '.join(want)})", f"dtypes ({', '.join(got)})", TypeError)

  bound = cell.kernel is not None and cell.kernel.recur is recur
  if bound and kernel in ("auto", "cudnn"):
    why = _cudnn_reason(cell, params, gx_0.dtype, chunk, carry, xs, lengths)
    if why is None and (kernel == "cudnn" or kernels_lib.cudnn.available()):
      carry, ys = kernels_lib.cudnn.unroll(cell.spec, params, carry, xs, lengths, reverse)
      return jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys), carry
    if kernel == "cudnn":
      _checks.fail("kernel", "'cudnn' only for a recurrence cuDNN implements (the plain "
                   "float32 LSTM, no remat, outside vmap)", f"'cudnn' where {why}")
  run = (_kernel_run(cell, kernel) if bound else None) or reference_run(recur)
  checkpoint = chunk is not None
  if chunk is None and bound and run is cell.kernel.run and cell.kernel.name == "xla":
    chunk = block_length(gx_0, num_steps)
  carry, ys = _run(run, project, params, carry, xs, lengths, reverse, unroll, chunk,
                   checkpoint)
  ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
  return ys, carry


def _kernel_run(cell: Cell, kernel: str):
  """The whole-sequence ``run`` that ``kernel`` selects for a cell running its own
  recurrence, or ``None`` for the reference scan."""
  if kernel == "pallas":
    why = kernels_lib.pallas.reason(cell)
    if why is not None:
      _checks.fail("kernel", "'pallas' only for a recurrence it implements (the plain "
                   "LSTM, the GRU)", f"'pallas' where {why}")
    return kernels_lib.pallas.run_for(cell)
  if kernel == "reference" or (kernel == "xla" and cell.kernel.name != "xla"):
    return None
  return cell.kernel.run


def _cudnn_reason(cell: Cell, params: Any, dtype: Any, chunk: int | None, carry: Any,
                  xs: jax.Array, lengths: Any) -> str | None:
  """Why the cuDNN LSTM cannot run this call (the cell is known to run its own
  recurrence), or ``None``; decided in Python, before anything is traced."""
  if chunk is not None:
    return "remat is on (cuDNN's LSTM has no checkpointed version)"
  if any(isinstance(leaf, jax.core.Tracer) and "Batch" in type(leaf).__name__
         for leaf in jax.tree.leaves((params, carry, xs, lengths))):
    return "the call is inside jax.vmap (the cuDNN op has no batching rule)"
  for name, tree in (("xs", xs), ("carry", carry)):
    for leaf in jax.tree.leaves(tree):
      if jnp.result_type(leaf) != jnp.float32:
        return f"jax.experimental.rnn is float32 only ({name} is {jnp.result_type(leaf)})"
  return kernels_lib.cudnn.reason(cell, params, dtype)


@functools.lru_cache(maxsize=256)   # one function per recur: jit's static cache hits
def reference_run(recur: Callable[..., Any]) -> Callable[..., Any]:
  """The reference whole-sequence ``run(params, carry, gxs, lengths, reverse, unroll)`` of
  a recurrent half: ``scan_recur`` of ``recur``, differentiated by JAX."""
  def run(params, carry, gxs, lengths, reverse, unroll):
    return scan_recur(recur, params, carry, gxs, lengths, reverse, unroll)
  return run


def _masked_inputs(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
  """Zeroes the padding before the input half reads it, so garbage there (inf, nan) cannot
  reach the valid results or their gradients."""
  if lengths is None:
    return xs
  valid = jnp.arange(xs.shape[0]).reshape((-1,) + (1,) * lengths.ndim) < lengths
  return jnp.where(_broadcast_to_leaf(valid, xs), xs, 0)


BLOCK_BYTES = 2 ** 19
"""On CPU the fused XLA path projects the input ``BLOCK_BYTES`` of ``gx`` at a time (see
``block_length``)."""


def block_length(gx_0: Any, num_steps: int) -> int | None:
  """Steps per block of the fused XLA path on CPU, or ``None`` for one block.

  On CPU a ``(T, *batch, gates)`` input projection larger than the cache is slow to write
  and read back (``benchmarks/results/profile.md``, GRU B32 T256 D128 H256,
  forward+backward, ``gx`` 24 MiB: the reference scan's projection in one GEMM took 37 ms,
  the same GEMM in the fused path's 64 blocks 16 ms in all; the reference's bias add over
  it 13 ms, its zero-filled cotangent buffer 14 ms). So where ``gx`` exceeds
  ``16 * BLOCK_BYTES`` the sequence runs in blocks of about ``BLOCK_BYTES`` each
  (``chunked`` without checkpointing; a block length that divides T where one is within
  2x): a scan over blocks that projects one block, then runs the kernel over it. Forward
  against Flax linen at that size, ``benchmarks/results/kernels.md``: LSTM 1.21x and GRU
  1.29x in one block (the run committed before blocks), 0.96x and 0.88x (medians over 3
  processes) in blocks. The price is compile time (a scan around the
  kernel; a probe, 2-layer bidirectional LSTM B16 T100: 1.8 s in one block, 5.3 s in
  blocks with a shorter last one), hence blocks for large projections only. Values equal
  the one-block path's up to float rounding. On GPU and TPU one large GEMM is the fast way,
  so blocks are for the CPU only.
  """
  if jax.default_backend() != "cpu":
    return None
  step_bytes = sum(l.size * l.dtype.itemsize for l in jax.tree.leaves(gx_0))
  if step_bytes * num_steps <= 16 * BLOCK_BYTES:
    return None
  return _near_divisor(num_steps, max(1, BLOCK_BYTES // step_bytes))


def _near_divisor(num_steps: int, target: int) -> int:
  """The largest divisor of ``num_steps`` up to ``target`` when it is at least half of it,
  else ``target``: chunks of equal length where one is close, since a shorter last chunk
  is a second copy of the kernel to compile."""
  divisor = max(d for d in range(1, target + 1) if num_steps % d == 0)
  return divisor if 2 * divisor >= target else target


@functools.partial(jax.jit, static_argnums=(0, 1, 6, 7, 8, 9))
def _run(run, project, params, carry, xs, lengths, reverse, unroll, chunk, checkpoint):
  """``project`` over all steps then ``run``; with a ``chunk`` length, both chunk by chunk
  (``chunked``; under ``jax.checkpoint`` when ``checkpoint``). Jitted with the functions
  static, so eager calls reuse the compiled sequence instead of re-tracing it (inside an
  outer jit it is inlined)."""
  if chunk is None:
    return run(params, carry, project(params, _masked_inputs(xs, lengths)), lengths,
               reverse, unroll)
  return chunked(run, project, chunk, params, carry, xs, lengths, reverse, unroll,
                 checkpoint)


def chunked(run, project, chunk, params, carry, xs, lengths, reverse, unroll,
            checkpoint=True):
  """``project`` then ``run`` over ``chunk`` steps at a time: a scan over the whole chunks,
  in the recurrence's direction, then the remaining steps as one shorter chunk.

  With ``checkpoint`` (checkpointed BPTT, ``remat``) each chunk is under
  ``jax.checkpoint``: the backward pass keeps only the carries at chunk boundaries and
  recomputes one chunk's input projection and recurrence at a time, so its memory is
  ~T/chunk carries plus one chunk's residuals (the (T, *batch, gates) input projection of
  the whole sequence is never stored). Without it, the chunks only keep the projection
  cache-sized (``block_length``)."""
  num_steps = xs.shape[0]
  num_chunks, rest = divmod(num_steps, chunk)
  # Forward: whole chunks on [0, m), the rest on [m, T); reverse: the rest on [0, rest),
  # run last, after the whole chunks on [rest, T).
  first = rest if reverse else 0
  rest_at = 0 if reverse else num_chunks * chunk

  def piece(carry, start, x):
    limit = None if lengths is None else jnp.clip(lengths - start, 0, x.shape[0])
    return run(params, carry, project(params, _masked_inputs(x, limit)), limit, reverse,
               unroll)
  if checkpoint:
    piece = jax.checkpoint(piece)

  if num_chunks == 0:
    return piece(carry, jnp.asarray(0), xs)
  whole = xs[first:first + num_chunks * chunk]
  starts = first + jnp.arange(num_chunks) * chunk
  carry, ys = lax.scan(lambda c, i: piece(c, *i), carry,
                       (starts, whole.reshape((num_chunks, chunk) + xs.shape[1:])),
                       reverse=reverse)
  ys = jax.tree.map(lambda y: y.reshape((num_chunks * chunk,) + y.shape[2:]), ys)
  if not rest:
    return carry, ys
  carry, ys_rest = piece(carry, jnp.asarray(rest_at), xs[rest_at:rest_at + rest])
  order = (lambda a, b: (b, a)) if reverse else (lambda a, b: (a, b))
  return carry, jax.tree.map(lambda y, r: jnp.concatenate(order(y, r)), ys, ys_rest)


def _chunk_length(remat: bool | int, num_steps: int) -> int | None:
  if remat is False:
    return None
  if remat is True:
    return _near_divisor(num_steps, max(1, math.isqrt(max(num_steps - 1, 0)) + 1))
  return _checks.positive_int("remat", remat)


def _broadcast_to_leaf(mask: jax.Array, leaf: jax.Array) -> jax.Array:
  """Appends unit axes to a batch-shaped mask so that it broadcasts against ``leaf``."""
  return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


def scan_recur(recur, params, carry, gxs, lengths=None, reverse=False, unroll=1):
  """The reference whole-sequence run of a recurrent half: ``lax.scan`` of ``recur`` over
  the time-major ``gxs``; steps at or past ``lengths`` keep the carry and output zeros.
  Returns ``(carry, ys)``."""
  def body(carry, inputs):
    t, gx_t = inputs
    if lengths is None:
      return recur(params, carry, gx_t)
    valid = jnp.asarray(t < lengths)
    new_carry, y = recur(params, carry, gx_t)
    keep = lambda new, old: jnp.where(_broadcast_to_leaf(valid, new), new, old)
    # Outputs are masked once after the loop, outside the scan and its backward pass.
    return jax.tree.map(keep, new_carry, carry), y

  num_steps = jax.tree.leaves(gxs)[0].shape[0]
  carry, ys = lax.scan(body, carry, (jnp.arange(num_steps), gxs), reverse=reverse,
                       unroll=unroll)
  if lengths is None:
    return carry, ys
  valid = jnp.arange(num_steps).reshape((-1,) + (1,) * lengths.ndim) < lengths
  return carry, jax.tree.map(lambda y: jnp.where(_broadcast_to_leaf(valid, y), y, 0), ys)
