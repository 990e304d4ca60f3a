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

__all__ = [
    "uniform", "torch_default", "identity", "chrono", "constant", "glorot_normal",
    "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform", "normal",
    "ones", "orthogonal", "zeros",
]


def uniform(scale: float):
  """U(-scale, scale) (``jax.nn.initializers.uniform`` is U[0, scale))."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def torch_default(hidden_size: int):
  """PyTorch's recurrent default, U(-1/sqrt(H), 1/sqrt(H)), for weights and biases."""
  return uniform(1.0 / math.sqrt(hidden_size))


def identity(scale: float = 1.0):
  """``scale * I`` for a square kernel: the IRNN recurrent init (Le et al. 2015)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    if len(shape) != 2 or shape[0] != shape[1]:
      raise ValueError(f"identity: expected a square 2-D shape, got {tuple(shape)}")
    return scale * jnp.eye(shape[0], dtype=dtype)
  return init


def chrono(t_max: float):
  """Chrono forget-gate bias (Tallec & Ollivier 2018): log U[1, t_max - 1]."""
  if not t_max > 2:
    raise ValueError(f"chrono: expected t_max > 2, got {t_max!r}")

  def init(key, shape, dtype=jnp.float32):
    return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, t_max - 1.0))
  return init
