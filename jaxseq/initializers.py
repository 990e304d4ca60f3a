"""Initializers for cell parameters: ``init(key, shape, dtype) -> array``.

Cells apply kernel initializers per gate block, so ``orthogonal()`` or ``identity()`` give
each gate's ``(H, H)`` recurrent block its own orthogonal/identity matrix.

References:
  * PyTorch's default: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)).
  * LeCun et al. 1998; Glorot & Bengio 2010: variance-scaled input kernels.
  * Saxe, McClelland & Ganguli 2014: orthogonal recurrent kernels.
  * Le, Jaitly & Hinton 2015 (IRNN): identity recurrent kernel, ReLU, zero bias.
  * Gers, Schmidhuber & Cummins 2000; Jozefowicz et al. 2015: forget-gate bias of 1.
  * Tallec & Ollivier 2018 (chrono): b_f ~ log U[1, T_max - 1], b_i = -b_f.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.nn.initializers import (constant, glorot_normal, glorot_uniform, he_normal,
                                 he_uniform, lecun_normal, lecun_uniform, normal, ones,
                                 orthogonal, zeros)

from jaxseq import _checks

__all__ = [
    "uniform", "torch_default", "identity", "chrono", "constant", "glorot_normal",
    "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform", "normal",
    "ones", "orthogonal", "zeros",
]


def uniform(scale: float):
  """U(-scale, scale) (``jax.nn.initializers.uniform`` is U[0, scale))."""
  scale = _checks.positive_float("scale", scale)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def torch_default(hidden_size: int):
  """PyTorch's recurrent default, U(-1/sqrt(H), 1/sqrt(H)), for weights and biases."""
  hidden_size = _checks.positive_int("hidden_size", hidden_size)
  return uniform(1.0 / math.sqrt(hidden_size))


def identity(scale: float = 1.0):
  """``scale * I`` for a square kernel: the IRNN recurrent init (Le et al. 2015)."""
  scale = _checks.number("scale", scale)

  def init(key, shape, dtype=jnp.float32):
    del key
    if len(shape) != 2 or shape[0] != shape[1]:
      _checks.fail("shape", "a square 2-D shape (identity initializer)", tuple(shape))
    return scale * jnp.eye(shape[0], dtype=dtype)
  return init


def chrono(t_max: float):
  """Chrono forget-gate bias (Tallec & Ollivier 2018): log U[1, t_max - 1]."""
  t_max = _checks.number("t_max", t_max, "a finite float > 2 (the longest dependency "
                         "in steps)", lambda v: v > 2)

  def init(key, shape, dtype=jnp.float32):
    return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, t_max - 1.0))
  return init
