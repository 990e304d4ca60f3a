"""Whole-sequence implementations of a cell's recurrent half, chosen by ``unroll(...,
kernel=...)`` in Python before tracing.

* ``"reference"``: ``lax.scan`` of the cell's ``recur``, differentiated by JAX.
* ``"xla"``: the fused XLA path (``jaxseq.kernels.xla``): the same recurrence with a
  linear-tangent ``custom_jvp`` whose weight gradients are single matmuls (convolutions)
  over ``T·B`` rows; every dense and conv built-in cell has it, on every backend.
* ``"cudnn"``: the cuDNN/MIOpen LSTM through ``jax.experimental.rnn`` (``jaxseq.kernels.
  cudnn``), on CUDA/ROCm GPUs, for the plain float32 LSTM (sigmoid/tanh; no peephole,
  coupling or projection), without ``remat``. Reverse mode only (a ``custom_vjp``), and
  no ``vmap`` of the op itself.
* ``"pallas"``: Pallas kernels (``jaxseq.kernels.pallas``) for the plain LSTM and the GRU
  (both reset placements), with a ``custom_vjp``; interpret mode on CPU (for testing, not
  speed), Mosaic on TPU (lowered here, not yet run on one); not available on GPUs (they do
  not lower for Mosaic GPU). Opt-in: not yet measured on hardware, so ``auto`` never picks
  it.
* ``"auto"``: cuDNN where it applies on a GPU (the cell is the plain float32 LSTM, no
  ``remat``, not inside ``jax.vmap`` as far as Python can see), else the cell's own kernel
  (today the fused XLA path on every backend), else the reference scan.

A path runs only for the exact recurrence it implements: a cell's ``Kernel`` is bound to
its ``recur`` and ``unroll`` uses any kernel only when the cell's ``recur`` is that very
function, so wrappers that change the recurrence (recurrent dropout, ``gradflow``
perturbations) run the reference scan, with their change. Asking for ``"cudnn"`` or
``"pallas"`` for a cell they do not implement is a ``ValueError`` that says why.
"""
from __future__ import annotations

from jaxseq import _checks
from jaxseq.kernels import cudnn, pallas, xla

KERNELS = ("auto", "reference", "xla", "cudnn", "pallas")
"""Every value of ``unroll``'s ``kernel`` option."""


def unavailable_reason(kernel: str) -> str | None:
  """Why ``kernel`` cannot run on this machine, or ``None``."""
  if kernel == "cudnn" and not cudnn.available():
    import jax
    return (f"the cuDNN/MIOpen LSTM needs a CUDA or ROCm GPU backend; this one is "
            f"{jax.default_backend()!r}")
  if kernel == "pallas":
    if not pallas.AVAILABLE:
      return "jax.experimental.pallas does not import with this JAX"
    return pallas.backend_reason()
  return None


def available() -> tuple[str, ...]:
  """The kernel paths this machine can run, in ``unroll(..., kernel=...)``'s names:
  ``"reference"`` and ``"xla"`` everywhere, ``"pallas"`` where Pallas imports on CPU
  (interpret mode) and TPU, ``"cudnn"`` on a CUDA/ROCm GPU."""
  return tuple(k for k in KERNELS if k != "auto" and unavailable_reason(k) is None)


def check(kernel: object) -> str:
  """Validates a ``kernel`` option; a path this machine cannot run fails here, before
  tracing."""
  if not isinstance(kernel, str):
    _checks.fail("kernel", "one of " + ", ".join(repr(k) for k in KERNELS), repr(kernel),
                 TypeError)
  _checks.choice("kernel", kernel, KERNELS)
  why = unavailable_reason(kernel)
  if why is not None:
    _checks.fail("kernel", "one of " + ", ".join(repr(k) for k in ("auto",) + available())
                 + f" ({kernel!r} is not available on this machine: {why})", repr(kernel))
  return kernel


__all__ = ["KERNELS", "available", "check", "cudnn", "pallas", "unavailable_reason", "xla"]
