"""Whole-sequence implementations of a cell's recurrent half, chosen by ``unroll(...,
kernel=...)`` in Python before tracing.

* ``"reference"``: ``lax.scan`` of the cell's ``recur``, differentiated by JAX.
* ``"xla"``: the fused XLA path (``jaxseq.kernels.xla``): the same recurrence with a
  linear-tangent ``custom_jvp`` whose weight gradients are single matmuls (convolutions)
  over ``T·B`` rows; every dense and conv built-in cell has it, on every backend.
* ``"auto"``: the cell's own kernel where it has one (today the fused XLA path on every
  backend), else the reference scan.
* ``"cudnn"``, ``"pallas"``: named by the design, not in this build (``ValueError``).

A path runs only for the exact recurrence it implements: a cell's ``Kernel`` is bound to
its ``recur`` and ``unroll`` uses it only when the cell's ``recur`` is that very function,
so wrappers that change the recurrence (recurrent dropout, ``gradflow`` perturbations) run
the reference scan, with their change.
"""
from __future__ import annotations

from jaxseq import _checks
from jaxseq.kernels import xla

KERNELS = ("auto", "reference", "xla", "cudnn", "pallas")
"""Every value of ``unroll``'s ``kernel`` option."""

UNAVAILABLE = ("cudnn", "pallas")
"""Named by the design, not implemented in this build."""


def available() -> tuple[str, ...]:
  """The kernel paths this machine can run, in ``unroll(..., kernel=...)``'s names:
  ``("reference", "xla")`` on every backend in this build (no cuDNN or Pallas path yet)."""
  return tuple(k for k in KERNELS if k != "auto" and k not in UNAVAILABLE)


def check(kernel: object) -> str:
  """Validates a ``kernel`` option; ``"cudnn"``/``"pallas"`` fail here, before tracing."""
  if not isinstance(kernel, str):
    _checks.fail("kernel", "one of " + ", ".join(repr(k) for k in KERNELS), repr(kernel),
                 TypeError)
  _checks.choice("kernel", kernel, KERNELS)
  if kernel in UNAVAILABLE:
    _checks.fail("kernel", "one of " + ", ".join(repr(k) for k in ("auto",) + available())
                 + f" ({kernel!r} is not available in this build)", repr(kernel))
  return kernel


__all__ = ["KERNELS", "available", "check", "xla"]
