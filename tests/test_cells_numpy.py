"""Cells against naive NumPy loops written from the papers' equations, in float64.

Each oracle below reads the parameter layout documented in the cells' docstrings (kernels
``(in, out)``, gate blocks concatenated along ``out``) and runs the published equations one
time step at a time:

* Elman (1990): ``h_t = phi(W x_t + U h_{t-1} + b)``.
* LSTM with forget gate (Gers, Schmidhuber & Cummins 2000), peepholes (Gers & Schmidhuber
  2000: ``i, f`` see ``c_{t-1}``, ``o`` sees ``c_t``), coupled input-forget gate
  (``i = 1 - f``, Greff et al. 2017), recurrent projection (LSTMP, Sak et al. 2014:
  ``r_t = W_rm m_t`` is what recurs).
* GRU (Cho et al. 2014): ``n = tanh(W x + U (r * h) + b)``; and the reset-after form of
  cuDNN/PyTorch: ``n = tanh(W x + b_in + r * (U h + b_hn))``.
* MGU (Zhou et al. 2016, eq. 9): ``f = sigma(W_f x + U_f h + b_f)``,
  ``n = tanh(W_n x + U_n (f * h) + b_n)``, ``h' = (1 - f) h + f n``; and Flax's
  reset-after form ``n = tanh(W_n x + b_n + f * (U_n h + b_hn))``, ``h' = (1 - f) n + f h``.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq.cells as cells
from jaxseq import initializers
from jaxseq.sequence import unroll

B, T, D, H, P = 2, 4, 3, 5, 2


# ---- activations, in NumPy -----------------------------------------------------------------

def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def hard_sigmoid(x):   # jax.nn.hard_sigmoid: relu6(x + 3) / 6
  return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def softsign(x):
  return x / (1.0 + np.abs(x))


def relu(x):
  return np.maximum(x, 0.0)


def identity(x):
  return x


def blocks(w, n):
  """The ``n`` gate blocks of a kernel or bias concatenated along its last axis."""
  return np.split(np.asarray(w), n, axis=-1)


# ---- oracles from the papers --------------------------------------------------------------

def elman(p, xs, phi):
  h = np.zeros((xs.shape[0], H))
  b = p.get("b", np.zeros(H))
  ys = []
  for t in range(xs.shape[1]):
    h = phi(xs[:, t] @ p["w_ih"] + h @ p["w_hh"] + b)
    ys.append(h)
  return np.stack(ys, 1), h


def lstm_oracle(p, xs, *, peephole=False, coupled=False, proj=False, sigma=sigmoid,
                phi_c=np.tanh, phi_h=np.tanh):
  names = "fgo" if coupled else "ifgo"
  W = dict(zip(names, blocks(p["w_ih"], len(names))))
  U = dict(zip(names, blocks(p["w_hh"], len(names))))
  b = dict(zip(names, blocks(p["b"], len(names))))
  h = np.zeros((xs.shape[0], P if proj else H))
  c = np.zeros((xs.shape[0], H))
  ys = []
  for t in range(xs.shape[1]):
    x = xs[:, t]
    c_prev = c
    f = sigma(x @ W["f"] + h @ U["f"] + b["f"] + (p["p_f"] * c_prev if peephole else 0))
    if coupled:
      i = 1.0 - f
    else:
      i = sigma(x @ W["i"] + h @ U["i"] + b["i"] + (p["p_i"] * c_prev if peephole else 0))
    g = phi_c(x @ W["g"] + h @ U["g"] + b["g"])
    c = f * c_prev + i * g
    o = sigma(x @ W["o"] + h @ U["o"] + b["o"] + (p["p_o"] * c if peephole else 0))
    m = o * phi_h(c)
    h = m @ p["w_hr"] if proj else m
    ys.append(h)
  return np.stack(ys, 1), (h, c)


def gru_cho(p, xs):
  """Cho et al. 2014, eqs. 5-8 (reset before the recurrent matmul)."""
  W_r, W_z, W_n = blocks(p["w_ih"], 3)
  U_r, U_z, U_n = blocks(p["w_hh"], 3)
  b_r, b_z, b_n = blocks(p["b"], 3)
  h = np.zeros((xs.shape[0], H))
  ys = []
  for t in range(xs.shape[1]):
    x = xs[:, t]
    r = sigmoid(x @ W_r + h @ U_r + b_r)
    z = sigmoid(x @ W_z + h @ U_z + b_z)
    n = np.tanh(x @ W_n + (r * h) @ U_n + b_n)
    h = z * h + (1.0 - z) * n
    ys.append(h)
  return np.stack(ys, 1), h


def gru_reset_after(p, xs):
  """cuDNN / PyTorch ``nn.GRU``: the reset gate scales ``U_n h + b_hn``."""
  W_r, W_z, W_n = blocks(p["w_ih"], 3)
  U_r, U_z, U_n = blocks(p["w_hh"], 3)
  b_r, b_z, b_n = blocks(p["b"], 3) if "b" in p else (0.0, 0.0, 0.0)
  b_hn = p.get("b_hn", 0.0)
  h = np.zeros((xs.shape[0], H))
  ys = []
  for t in range(xs.shape[1]):
    x = xs[:, t]
    r = sigmoid(x @ W_r + h @ U_r + b_r)
    z = sigmoid(x @ W_z + h @ U_z + b_z)
    n = np.tanh(x @ W_n + b_n + r * (h @ U_n + b_hn))
    h = (1.0 - z) * n + z * h
    ys.append(h)
  return np.stack(ys, 1), h


def mgu_zhou(p, xs):
  """Zhou, Wu, Zhang & Zhou 2016, eq. 9."""
  W_f, W_n = blocks(p["w_ih"], 2)
  U_f, U_n = blocks(p["w_hh"], 2)
  b_f, b_n = blocks(p["b"], 2)
  h = np.zeros((xs.shape[0], H))
  ys = []
  for t in range(xs.shape[1]):
    x = xs[:, t]
    f = sigmoid(x @ W_f + h @ U_f + b_f)
    n = np.tanh(x @ W_n + (f * h) @ U_n + b_n)
    h = (1.0 - f) * h + f * n
    ys.append(h)
  return np.stack(ys, 1), h


def mgu_flax(p, xs):
  """Flax ``MGUCell``: the gate scales ``U_n h + b_hn`` and keeps the old state."""
  W_f, W_n = blocks(p["w_ih"], 2)
  U_f, U_n = blocks(p["w_hh"], 2)
  b_f, b_n = blocks(p["b"], 2)
  h = np.zeros((xs.shape[0], H))
  ys = []
  for t in range(xs.shape[1]):
    x = xs[:, t]
    f = sigmoid(x @ W_f + h @ U_f + b_f)
    n = np.tanh(x @ W_n + b_n + f * (h @ U_n + p["b_hn"]))
    h = (1.0 - f) * n + f * h
    ys.append(h)
  return np.stack(ys, 1), h


# ---- the documented parameter layouts -------------------------------------------------------

def lstm_shapes(peephole=False, coupled=False, proj=False):
  G = 3 if coupled else 4
  shapes = {"w_ih": (D, G * H), "w_hh": (P if proj else H, G * H), "b": (G * H,)}
  if peephole:
    shapes.update({name: (H,) for name in ("p_f", "p_o") + (() if coupled else ("p_i",))})
  if proj:
    shapes["w_hr"] = (H, P)
  return shapes


SIMPLE = {"w_ih": (D, H), "w_hh": (H, H), "b": (H,)}
GRU_BEFORE = {"w_ih": (D, 3 * H), "w_hh": (H, 3 * H), "b": (3 * H,)}
GRU_AFTER = {**GRU_BEFORE, "b_hn": (H,)}
MGU_BEFORE = {"w_ih": (D, 2 * H), "w_hh": (H, 2 * H), "b": (2 * H,)}
MGU_AFTER = {**MGU_BEFORE, "b_hn": (H,)}

f64 = jnp.float64
# name: (cell factory (called under x64), documented param shapes, oracle)
CASES = {
    "simple-tanh": (lambda: cells.simple_rnn(H, param_dtype=f64), SIMPLE,
                    lambda p, xs: elman(p, xs, np.tanh)),
    "simple-relu": (lambda: cells.simple_rnn(H, jax.nn.relu, param_dtype=f64), SIMPLE,
                    lambda p, xs: elman(p, xs, relu)),
    "simple-identity-nobias": (
        lambda: cells.simple_rnn(H, lambda x: x, use_bias=False, param_dtype=f64),
        {"w_ih": (D, H), "w_hh": (H, H)}, lambda p, xs: elman(p, xs, identity)),
    "lstm": (lambda: cells.lstm(H, param_dtype=f64), lstm_shapes(), lstm_oracle),
    "lstm-peephole": (lambda: cells.lstm(H, peephole=True, param_dtype=f64),
                      lstm_shapes(peephole=True),
                      lambda p, xs: lstm_oracle(p, xs, peephole=True)),
    "lstm-coupled": (lambda: cells.lstm(H, coupled=True, param_dtype=f64),
                     lstm_shapes(coupled=True),
                     lambda p, xs: lstm_oracle(p, xs, coupled=True)),
    "lstm-coupled-peephole": (
        lambda: cells.lstm(H, coupled=True, peephole=True, param_dtype=f64),
        lstm_shapes(peephole=True, coupled=True),
        lambda p, xs: lstm_oracle(p, xs, peephole=True, coupled=True)),
    "lstm-projection": (lambda: cells.lstm(H, proj_size=P, param_dtype=f64),
                        lstm_shapes(proj=True), lambda p, xs: lstm_oracle(p, xs, proj=True)),
    "lstm-projection-peephole": (
        lambda: cells.lstm(H, proj_size=P, peephole=True, param_dtype=f64),
        lstm_shapes(peephole=True, proj=True),
        lambda p, xs: lstm_oracle(p, xs, peephole=True, proj=True)),
    "lstm-hard-sigmoid-softsign-relu": (
        lambda: cells.lstm(H, gate_fn=jax.nn.hard_sigmoid, cell_fn=jax.nn.soft_sign,
                           hidden_fn=jax.nn.relu, param_dtype=f64),
        lstm_shapes(),
        lambda p, xs: lstm_oracle(p, xs, sigma=hard_sigmoid, phi_c=softsign, phi_h=relu)),
    "gru-reset-before": (lambda: cells.gru(H, reset_after=False, param_dtype=f64),
                         GRU_BEFORE, gru_cho),
    "gru-reset-after": (lambda: cells.gru(H, param_dtype=f64), GRU_AFTER, gru_reset_after),
    "gru-reset-after-nobias": (lambda: cells.gru(H, use_bias=False, param_dtype=f64),
                               {"w_ih": (D, 3 * H), "w_hh": (H, 3 * H)}, gru_reset_after),
    "mgu": (lambda: cells.mgu(H, param_dtype=f64), MGU_BEFORE, mgu_zhou),
    "mgu-reset-after": (lambda: cells.mgu(H, reset_after=True, param_dtype=f64), MGU_AFTER,
                        mgu_flax),
}


def random_params(shapes, seed):
  """Params drawn by the test (not by ``cell.init``), large enough to leave tanh's linear
  range, with non-zero biases and peepholes."""
  rng = np.random.default_rng(seed)
  return {name: 0.6 * rng.standard_normal(shape) for name, shape in shapes.items()}


@pytest.mark.parametrize("name", CASES)
def test_cell_matches_paper_equations(name, x64):
  make_cell, shapes, oracle = CASES[name]
  cell = make_cell()
  # The documented layout is the one cell.init produces.
  produced = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), D))
  assert {k: tuple(v.shape) for k, v in produced.items()} == shapes
  assert all(v.dtype == jnp.float64 for v in produced.values())

  params = random_params(shapes, seed=sorted(CASES).index(name))
  xs = np.random.default_rng(100).standard_normal((B, T, D))
  ys_expected, carry_expected = oracle(params, xs)

  jparams = {k: jnp.asarray(v) for k, v in params.items()}
  ys, carry = unroll(cell, jparams, jnp.asarray(xs))
  assert ys.dtype == jnp.float64
  np.testing.assert_allclose(ys, ys_expected, rtol=0, atol=1e-10)
  if isinstance(carry, cells.LSTMState):
    np.testing.assert_allclose(carry.h, carry_expected[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(carry.c, carry_expected[1], rtol=0, atol=1e-10)
  else:
    np.testing.assert_allclose(carry, carry_expected, rtol=0, atol=1e-10)

  # Gradients of the unrolled sequence (outputs and final carry), w.r.t. params and inputs,
  # against central finite differences.
  check_grads(lambda p, x: unroll(cell, p, x), (jparams, jnp.asarray(xs)), order=1,
              modes=["fwd", "rev"])


# ---- initializers ---------------------------------------------------------------------------

HI = 16   # wider cells so that the initializer statistics mean something
KEY = jax.random.PRNGKey(0)


def test_chrono_initialization():
  t_max = 20.0
  b = np.asarray(cells.lstm(HI, chrono_t_max=t_max).init(KEY, D)["b"])
  b_i, b_f = b[:HI], b[HI:2 * HI]
  assert np.all(b_f >= 0) and np.all(b_f <= math.log(t_max - 1) + 1e-6)
  assert np.ptp(b_f) > 0.5                       # drawn, not constant
  np.testing.assert_array_equal(b_i, -b_f)
  # Coupled: the f block comes first and there is no i block to mirror it.
  b = np.asarray(cells.lstm(HI, coupled=True, chrono_t_max=t_max).init(KEY, D)["b"])
  assert b.shape == (3 * HI,)
  assert np.all(b[:HI] >= 0) and np.all(b[:HI] <= math.log(t_max - 1) + 1e-6)


@pytest.mark.parametrize("coupled", [False, True])
def test_forget_bias_sets_b_f_exactly(coupled):
  b = np.asarray(cells.lstm(HI, coupled=coupled, forget_bias=1.0).init(KEY, D)["b"])
  f = 0 if coupled else 1
  np.testing.assert_array_equal(b[f * HI:(f + 1) * HI], 1.0)
  rest = np.delete(b, np.arange(f * HI, (f + 1) * HI))
  assert np.all(np.abs(rest) <= 1 / math.sqrt(HI)) and np.ptp(rest) > 0


@pytest.mark.parametrize("factory,num_gates", [
    (lambda **kw: cells.simple_rnn(HI, **kw), 1), (lambda **kw: cells.lstm(HI, **kw), 4),
    (lambda **kw: cells.gru(HI, **kw), 3), (lambda **kw: cells.mgu(HI, **kw), 2)])
def test_recurrent_init_is_per_gate(factory, num_gates):
  w = np.asarray(factory(recurrent_init=initializers.identity()).init(KEY, D)["w_hh"])
  assert w.shape == (HI, num_gates * HI)
  for block in np.split(w, num_gates, axis=1):
    np.testing.assert_array_equal(block, np.eye(HI))
  w = np.asarray(factory(recurrent_init=initializers.orthogonal()).init(KEY, D)["w_hh"])
  gate_blocks = np.split(w, num_gates, axis=1)
  for block in gate_blocks:
    np.testing.assert_allclose(block.T @ block, np.eye(HI), atol=1e-5)
  for a, b in zip(gate_blocks, gate_blocks[1:]):
    assert not np.allclose(a, b)                 # each gate draws its own matrix


@pytest.mark.parametrize("factory", [
    lambda: cells.simple_rnn(HI), lambda: cells.lstm(HI, peephole=True),
    lambda: cells.lstm(HI, proj_size=4), lambda: cells.gru(HI),
    lambda: cells.gru(HI, reset_after=False), lambda: cells.mgu(HI, reset_after=True)])
def test_default_init_is_pytorch_uniform(factory):
  bound = 1 / math.sqrt(HI)
  params = factory().init(KEY, 8)
  everything = np.concatenate([np.ravel(v) for v in params.values()])
  assert np.all(np.abs(everything) <= bound)
  # Spread over the whole interval (PyTorch's U(-1/sqrt(H), 1/sqrt(H))), both signs.
  assert everything.max() > 0.9 * bound and everything.min() < -0.9 * bound
  assert abs(everything.mean()) < 0.1 * bound


# ---- bfloat16 compute ------------------------------------------------------------------------

def test_bfloat16_lstm_keeps_cell_state_float32():
  cell16 = cells.lstm(H, dtype=jnp.bfloat16)
  params = {k: jnp.asarray(v, jnp.float32)
            for k, v in random_params(lstm_shapes(), seed=1).items()}
  xs = np.random.default_rng(2).standard_normal((B, T, D)).astype(np.float32)
  carry0 = cell16.initial_carry(params, (B,))
  assert carry0.h.dtype == jnp.bfloat16 and carry0.c.dtype == jnp.float32

  ys16, carry16 = unroll(cell16, params, jnp.asarray(xs))
  assert ys16.dtype == jnp.bfloat16
  assert carry16.h.dtype == jnp.bfloat16 and carry16.c.dtype == jnp.float32

  ys_expected, (_, c_expected) = lstm_oracle({k: np.float64(v) for k, v in params.items()},
                                            np.float64(xs))
  ys32, carry32 = unroll(cells.lstm(H), params, jnp.asarray(xs))
  np.testing.assert_allclose(ys32, ys_expected, atol=1e-5)
  # bfloat16 keeps 8 significant bits (relative error 2**-9 per rounding): a few steps of
  # gates stay within a few 1e-2 of the exact result.
  np.testing.assert_allclose(np.float32(ys16), ys_expected, atol=3e-2)
  np.testing.assert_allclose(carry16.c, c_expected, atol=3e-2)
  # The float32 cell state holds more than bfloat16 could: c is not a rounded bf16 value.
  assert np.any(np.asarray(carry16.c) != np.float32(carry16.c.astype(jnp.bfloat16)))
