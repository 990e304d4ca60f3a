"""Convolutional cells (``conv_lstm``, ``conv_gru``) against independent oracles.

* NumPy loops of the papers' equations, with the convolution written as explicit loops over
  kernel offsets on a padded array (zeros for ``"SAME"``: ``((k - 1) // 2, k // 2)`` per
  axis, as TensorFlow/``lax`` define it; ``np.pad(mode="wrap")`` for ``"CIRCULAR"``):
  ConvLSTM of Shi et al. 2015 (eq. 3, Hadamard peepholes with one weight per position and
  channel) and ConvGRU of Ballas et al. 2016 (and its reset-after form).
* Flax linen's ``ConvLSTMCell`` through ``from_flax_conv_lstm``/``from_flax``, stepped by
  hand and inside ``flax.linen.RNN``, on frames of two sizes (the frame size comes from the
  input: only peephole weights fix one).
* ``unroll`` with ``lengths``/``reverse`` against per-sequence runs of the valid part.
* Central finite differences (``check_grads``) in float64.
"""
import itertools

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq
import jaxseq.interop
from jaxseq import nn
from jaxseq.cells.base import LSTMState
import jaxseq.cells.conv as conv_module
from jaxseq.cells.conv import conv_gru, conv_lstm
from jaxseq.interop._flax_conv import from_flax_conv_lstm
from jaxseq.layers import bidirectional, recurrent, stack
from jaxseq.sequence import unroll

B, T, C, F = 2, 4, 2, 3
S = (5, 5)
KEY = jax.random.PRNGKey(0)


# ---- NumPy oracles ------------------------------------------------------------------------

def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_conv(x, w, padding="SAME"):
  """Stride-1 cross-correlation ``x (B, *S, C)`` with ``w (*K, C, O)`` -> ``(B, *S, O)``,
  as a sum over kernel offsets of shifted windows of the padded input."""
  nd = w.ndim - 2
  kernel, spatial = w.shape[:nd], x.shape[1:1 + nd]
  pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in kernel] + [(0, 0)]
  xp = np.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "constant")
  out = np.zeros(x.shape[:1] + spatial + (w.shape[-1],))
  for offset in itertools.product(*(range(k) for k in kernel)):
    window = xp[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(offset, spatial))]
    out += window @ w[offset]
  return out


def gate(a, name, gates):
  """Block ``name`` of a kernel/bias whose last axis concatenates ``gates``."""
  return np.split(np.asarray(a), len(gates), axis=-1)[gates.index(name)]


def np_conv_lstm(p, xs, peephole=True, padding="SAME", forget_offset=0.0):
  """Shi et al. 2015, eq. 3, one gate at a time (``*`` = conv, ``o`` = Hadamard)."""
  h = c = np.zeros(xs.shape[:1] + xs.shape[2:-1] + (p["w_hh"].shape[-2],))
  W = lambda g, side: gate(p["w_" + side], g, "ifgo")
  b = lambda g: gate(p["b"], g, "ifgo") if "b" in p else 0.0
  pre = lambda g, x, h: np_conv(x, W(g, "ih"), padding) + np_conv(h, W(g, "hh"), padding) + b(g)
  ys = []
  for t in range(xs.shape[1]):
    x = xs[:, t]
    i = sigmoid(pre("i", x, h) + (p["p_i"] * c if peephole else 0.0))
    f = sigmoid(pre("f", x, h) + (p["p_f"] * c if peephole else 0.0) + forget_offset)
    c = f * c + i * np.tanh(pre("g", x, h))
    o = sigmoid(pre("o", x, h) + (p["p_o"] * c if peephole else 0.0))
    h = o * np.tanh(c)
    ys.append(h)
  return np.stack(ys, 1), (h, c)


def np_conv_gru(p, xs, reset_after=False):
  """Ballas et al. 2016 (with biases; ``z`` is the share of the old state, as jaxseq.gru)."""
  h = np.zeros(xs.shape[:1] + xs.shape[2:-1] + (p["w_hh"].shape[-2],))
  W = lambda g, side: gate(p["w_" + side], g, "rzn")
  b = lambda g: gate(p["b"], g, "rzn")
  ys = []
  for t in range(xs.shape[1]):
    x = xs[:, t]
    r = sigmoid(np_conv(x, W("r", "ih")) + np_conv(h, W("r", "hh")) + b("r"))
    z = sigmoid(np_conv(x, W("z", "ih")) + np_conv(h, W("z", "hh")) + b("z"))
    if reset_after:
      n = np.tanh(np_conv(x, W("n", "ih")) + b("n") + r * (np_conv(h, W("n", "hh"))
                                                           + p["b_hn"]))
    else:
      n = np.tanh(np_conv(x, W("n", "ih")) + np_conv(r * h, W("n", "hh")) + b("n"))
    h = (1.0 - z) * n + z * h
    ys.append(h)
  return np.stack(ys, 1), h


def random_params(cell, input_shape, seed, scale=0.5):
  """Params drawn by the test with the shapes of ``cell.init(key, input_shape)`` (a cell or
  a sequence layer; ``input_shape`` is one step's ``(*spatial, C)``, or ``C`` for cells
  without peepholes; non-zero biases and peepholes, whose default init is zeros). NumPy
  float64 arrays."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: cell.init(KEY, input_shape))
  return jax.tree.map(lambda v: scale * rng.standard_normal(v.shape), shapes)


def inputs(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape)


def assert_close(actual, expected, atol):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=atol)


# ---- ConvLSTM and ConvGRU against the papers ------------------------------------------------

def test_conv_lstm_param_layout():
  cell = conv_lstm(F, (3, 2))
  params = jax.eval_shape(lambda: cell.init(KEY, S + (C,)))
  assert {k: v.shape for k, v in params.items()} == {
      "w_ih": (3, 2, C, 4 * F), "w_hh": (3, 2, F, 4 * F), "b": (4 * F,),
      "p_i": S + (F,), "p_f": S + (F,), "p_o": S + (F,)}
  assert cell.spec.feature_ndim == 3 and cell.spec.name == "conv_lstm"
  # initialize_carry takes one step's input shape, batch axes included (Flax's meaning).
  carry = jax.eval_shape(lambda: cell.initialize_carry(cell.init(KEY, S + (C,)),
                                                       (B,) + S + (C,)))
  assert carry.h.shape == carry.c.shape == (B,) + S + (F,)
  carry = jax.eval_shape(lambda: cell.initialize_carry(cell.init(KEY, S + (C,)),
                                                       (B, 1) + S + (C,)))
  assert carry.h.shape == (B, 1) + S + (F,)
  # Without peepholes no parameter depends on the frame size: C alone or any shape.
  plain = conv_lstm(F, (3, 2), peephole=False)
  layouts = [{k: v.shape for k, v in jax.eval_shape(lambda: plain.init(KEY, shape)).items()}
             for shape in (C, (4, 4, C), (9, 7, C))]
  assert layouts[0] == layouts[1] == layouts[2] == {
      "w_ih": (3, 2, C, 4 * F), "w_hh": (3, 2, F, 4 * F), "b": (4 * F,)}
  zeros = jax.nn.initializers.zeros
  b = conv_lstm(F, (3,), peephole=False, forget_bias=1.0, kernel_init=zeros,
                recurrent_init=zeros).init(KEY, C)["b"]
  assert_close(b, np.r_[np.zeros(F), np.ones(F), np.zeros(2 * F)], 0)


def test_conv_lstm_matches_shi_et_al_float32():
  cell = conv_lstm(F, (3, 3), forget_offset=0.5)
  params = random_params(cell, S + (C,), seed=1)
  xs = inputs((B, T) + S + (C,))
  ys_expected, (h, c) = np_conv_lstm(params, xs, forget_offset=0.5)
  ys, carry = jax.jit(lambda p, x: unroll(cell, p, x))(
      jax.tree.map(jnp.float32, params), jnp.float32(xs))
  assert ys.dtype == jnp.float32 and ys.shape == (B, T) + S + (F,)
  assert_close(ys, ys_expected, 1e-5)
  assert_close(carry.h, h, 1e-5)
  assert_close(carry.c, c, 1e-5)


# kernel_size, spatial, peephole, padding: 1-D/2-D/3-D, even kernels (asymmetric
# padding), periodic boundaries.
CASES_64 = [((3,), (6,), True, "SAME"), ((2, 3), (4, 5), True, "SAME"),
            ((3, 3), (4, 4), False, "CIRCULAR"), ((3, 1, 2), (3, 2, 3), True, "SAME")]


@pytest.mark.parametrize("kernel_size, spatial, peephole, padding", CASES_64)
def test_conv_lstm_matches_shi_et_al_float64(kernel_size, spatial, peephole, padding, x64):
  cell = conv_lstm(F, kernel_size, peephole=peephole, padding=padding)
  params = random_params(cell, spatial + (C,), seed=len(spatial))
  xs = inputs((B, 3) + spatial + (C,), seed=2)
  ys_expected, (h, c) = np_conv_lstm(params, xs, peephole, padding)
  ys, carry = unroll(cell, jax.tree.map(jnp.asarray, params), jnp.asarray(xs))
  assert ys.dtype == jnp.float64
  assert_close(ys, ys_expected, 1e-10)
  assert_close(carry.h, h, 1e-10)
  assert_close(carry.c, c, 1e-10)


@pytest.mark.parametrize("reset_after", [False, True])
def test_conv_gru_matches_ballas_et_al_float64(reset_after, x64):
  cell = conv_gru(F, (3, 3), reset_after=reset_after)
  params = random_params(cell, C, seed=3)
  shapes = {k: v.shape for k, v in params.items()}
  assert shapes == {"w_ih": (3, 3, C, 3 * F), "w_hh": (3, 3, F, 3 * F), "b": (3 * F,),
                    **({"b_hn": (F,)} if reset_after else {})}
  xs = inputs((B, T) + S + (C,), seed=4)
  ys_expected, h = np_conv_gru(params, xs, reset_after)
  ys, carry = unroll(cell, jax.tree.map(jnp.asarray, params), jnp.asarray(xs))
  assert_close(ys, ys_expected, 1e-10)
  assert_close(carry, h, 1e-10)


# Cells whose params fit every frame size, with their NumPy oracles.
ANY_FRAME_SIZE = {
    "conv_lstm": (lambda: conv_lstm(F, (3, 3), peephole=False, forget_offset=1.0),
                  lambda p, xs: np_conv_lstm(p, xs, False, forget_offset=1.0)),
    "conv_lstm_circular": (lambda: conv_lstm(F, (2, 3), peephole=False, padding="CIRCULAR"),
                           lambda p, xs: np_conv_lstm(p, xs, False, "CIRCULAR")),
    "conv_gru": (lambda: conv_gru(F, (3, 3), reset_after=True),
                 lambda p, xs: np_conv_gru(p, xs, True)),
}


@pytest.mark.parametrize("name", list(ANY_FRAME_SIZE))
def test_same_params_run_on_8x8_and_16x16_frames(name, x64):
  """One set of params (``init(key, C)``: no frame size anywhere) on two frame sizes, each
  against the NumPy oracle; ``step`` from ``initialize_carry(params, x_t.shape)`` is
  ``recur(project(x_t))`` and, driven by hand, gives ``unroll``'s results."""
  make_cell, oracle = ANY_FRAME_SIZE[name]
  cell = make_cell()
  params_np = random_params(cell, C, seed=21)
  params = jax.tree.map(jnp.asarray, params_np)
  run = jax.jit(lambda p, x: unroll(cell, p, x))
  step = jax.jit(cell.step)
  for size in (8, 16):
    xs = inputs((B, 3, size, size, C), seed=size)
    ys_expected, carry_expected = oracle(params_np, xs)
    ys, carry = run(params, jnp.asarray(xs))
    assert ys.dtype == jnp.float64 and ys.shape == (B, 3, size, size, F)
    assert_close(ys, ys_expected, 1e-10)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(carry_expected)):
      assert got.shape == (B, size, size, F)
      assert_close(got, want, 1e-10)
    by_hand = cell.initialize_carry(params, xs[:, 0].shape)
    for t in range(xs.shape[1]):
      x_t = jnp.asarray(xs[:, t])
      split = cell.recur(params, by_hand, cell.project(params, x_t))
      by_hand, y_t = step(params, by_hand, x_t)
      for a, b in zip(jax.tree.leaves((by_hand, y_t)), jax.tree.leaves(split)):
        assert_close(a, b, 1e-12)
      assert_close(y_t, ys_expected[:, t], 1e-10)


def test_gradients_match_finite_differences(x64):
  lstm = conv_lstm(2, (3, 3))
  gru = conv_gru(2, (2,))
  p_lstm = jax.tree.map(jnp.asarray, random_params(lstm, (3, 3, 1), seed=5))
  p_gru = jax.tree.map(jnp.asarray, random_params(gru, 1, seed=6))
  x_lstm = jnp.asarray(inputs((1, 2, 3, 3, 1), seed=7))
  x_gru = jnp.asarray(inputs((1, 3, 4, 1), seed=8))
  check_grads(lambda p, x: unroll(lstm, p, x), (p_lstm, x_lstm), order=1, modes=["rev"])
  check_grads(lambda p, x: unroll(gru, p, x), (p_gru, x_gru), order=1, modes=["rev"])


def test_patch_kernel_gradient_matches_lax_gradient(monkeypatch):
  """The CPU fast path (kernel gradient through im2col patches) against lax's own
  derivatives of the same cell, in reverse and forward mode, through a scan."""
  cell = conv_lstm(F, (3, 2), padding="CIRCULAR")
  params = jax.tree.map(jnp.float32, random_params(cell, S + (C,), seed=16))
  xs = jnp.asarray(inputs((B, 3) + S + (C,), seed=17), jnp.float32)
  loss = lambda p, x: jnp.sum(unroll(cell, p, x)[0] ** 2)
  tangent = jax.tree.map(jnp.ones_like, params)
  results = {}
  for patches in (True, False):
    monkeypatch.setattr(conv_module, "PATCH_KERNEL_GRAD", patches)
    results[patches] = (jax.grad(loss, (0, 1))(params, xs),
                        jax.jvp(lambda p: loss(p, xs), (params,), (tangent,))[1])
  for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---- Flax --------------------------------------------------------------------------------

def flax_run(module, params, xs, carry):
  """Flax's cell stepped over time by hand: outputs (B, T, ...) and the final (c, h)."""
  apply = jax.jit(lambda carry, x: module.apply({"params": params}, carry, x))
  ys = []
  for t in range(xs.shape[1]):
    carry, y = apply(carry, xs[:, t])
    ys.append(y)
  return jnp.stack(ys, 1), carry


def random_flax_params(variables, seed, dtype=jnp.float32):
  """Every leaf of Flax's params redrawn (Flax initialises biases to zero)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), dtype),
                      variables["params"])


@pytest.mark.parametrize("kernel_size, spatial, use_bias, padding",
                         [((3, 3), S, True, "SAME"), ((2,), (6,), False, "CIRCULAR")])
def test_from_flax_conv_lstm_matches_flax(kernel_size, spatial, use_bias, padding):
  module = flax_nn.ConvLSTMCell(features=F, kernel_size=kernel_size, use_bias=use_bias,
                                padding=padding)
  xs = jnp.asarray(inputs((B, T) + spatial + (C,), seed=9), jnp.float32)
  carry0 = module.initialize_carry(KEY, xs[:, 0].shape)
  flax_params = random_flax_params(jax.eval_shape(module.init, KEY, carry0, xs[:, 0]), 10)
  ys_flax, (c_flax, h_flax) = flax_run(module, flax_params, xs, carry0)

  cell, params = from_flax_conv_lstm(module, {"params": flax_params})
  assert not cell.spec.peephole and set(params) == ({"w_ih", "w_hh", "b"} if use_bias
                                                    else {"w_ih", "w_hh"})
  ys, carry = unroll(cell, params, xs)
  assert_close(ys, ys_flax, 1e-5)
  assert_close(carry.h, h_flax, 1e-5)
  assert_close(carry.c, c_flax, 1e-5)
  # The inner params dict is accepted too, and converts to the same arrays.
  _, same = from_flax_conv_lstm(module, flax_params)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), same, params))


def test_from_flax_dispatch_steps_like_flax():
  """``jaxseq.interop.from_flax`` knows no frame size: one step from Flax's carry is
  Flax's step, and ``unroll`` of that one step (from its own zero carry) agrees."""
  module = flax_nn.ConvLSTMCell(features=F, kernel_size=(3, 3))
  x = jnp.asarray(inputs((B, 4, 6, C), seed=11), jnp.float32)
  carry0 = module.initialize_carry(KEY, x.shape)
  flax_params = random_flax_params(jax.eval_shape(module.init, KEY, carry0, x), 19)
  (c_flax, h_flax), y_flax = module.apply({"params": flax_params}, carry0, x)
  cell, params = jaxseq.interop.from_flax(module, {"params": flax_params})
  carry, y = cell.step(params, LSTMState(h=carry0[1], c=carry0[0]), x)
  assert_close(y, y_flax, 1e-5)
  assert_close(carry.h, h_flax, 1e-5)
  assert_close(carry.c, c_flax, 1e-5)
  ys, carry = unroll(cell, params, x[:, None])
  assert_close(ys[:, 0], y_flax, 1e-5)
  assert_close(carry.c, c_flax, 1e-5)


@pytest.mark.parametrize("kernel_size, sizes, padding",
                         [((3, 3), ((8, 8), (16, 16)), "SAME"),
                          ((2,), ((6,), (11,)), "CIRCULAR")])
def test_from_flax_unrolls_like_flax_rnn_on_two_frame_sizes(kernel_size, sizes, padding, x64):
  """``from_flax(ConvLSTMCell)`` without a frame size, ``unroll`` on two frame sizes with
  the same params, against ``flax.linen.RNN(ConvLSTMCell)`` in float64."""
  module = flax_nn.ConvLSTMCell(features=F, kernel_size=kernel_size, padding=padding,
                                param_dtype=jnp.float64)
  rnn = flax_nn.RNN(module)
  shapes = jax.eval_shape(rnn.init, KEY, jnp.zeros((B, T) + sizes[0] + (C,)))
  variables = {"params": random_flax_params(shapes, 23, jnp.float64)}
  cell, params = jaxseq.interop.from_flax(rnn.cell, variables["params"]["cell"])
  assert "p_o" not in params
  run = jax.jit(lambda x: unroll(cell, params, x))
  flax_apply = jax.jit(lambda x: rnn.apply(variables, x, return_carry=True))
  for size in sizes:
    xs = jnp.asarray(inputs((B, T) + size + (C,), seed=sum(size)))
    (c_flax, h_flax), ys_flax = flax_apply(xs)
    ys, carry = run(xs)
    assert ys.dtype == ys_flax.dtype == jnp.float64
    assert ys.shape == ys_flax.shape == (B, T) + size + (F,)
    # Equal in exact arithmetic; only the order of the bias sums differs.
    assert_close(ys, ys_flax, 1e-12)
    assert_close(carry.h, h_flax, 1e-12)
    assert_close(carry.c, c_flax, 1e-12)


def test_from_flax_conv_lstm_rejects_unsupported_options():
  module = flax_nn.ConvLSTMCell(features=F, kernel_size=(3,), strides=(2,))
  params = {"ih": {"kernel": jnp.zeros((3, C, 4 * F)), "bias": jnp.zeros(4 * F)},
            "hh": {"kernel": jnp.zeros((3, F, 4 * F)), "bias": jnp.zeros(4 * F)}}
  with pytest.raises(ValueError, match="module: expected a ConvLSTMCell with strides"):
    from_flax_conv_lstm(module, params)
  with pytest.raises(ValueError, match="module: expected a ConvLSTMCell with padding"):
    from_flax_conv_lstm(flax_nn.ConvLSTMCell(F, (3,), padding="VALID"), params)
  with pytest.raises(ValueError, match=r"params: expected 'ih' kernel of shape \(3, 2, 16\)"):
    from_flax_conv_lstm(flax_nn.ConvLSTMCell(F + 1, (3,)), params)
  with pytest.raises(ValueError, match="variables: expected ConvLSTMCell params"):
    from_flax_conv_lstm(flax_nn.ConvLSTMCell(F, (3,)), {"ih": params["ih"]})
  with pytest.raises(TypeError, match="module: expected a flax.linen.ConvLSTMCell"):
    from_flax_conv_lstm(flax_nn.LSTMCell(F), params)


# ---- sequences and layers -----------------------------------------------------------------

@pytest.mark.parametrize("make_cell, init_shape", [
    (lambda: conv_lstm(F, (3, 3)), S + (C,)),
    (lambda: conv_gru(F, (3, 3)), C)], ids=["conv_lstm", "conv_gru"])
def test_unroll_lengths_and_reverse_match_per_sequence_runs(make_cell, init_shape):
  cell = make_cell()
  params = jax.tree.map(jnp.float32, random_params(cell, init_shape, seed=12))
  xs = jnp.asarray(inputs((3, T) + S + (C,), seed=13), jnp.float32)
  xs = xs.at[2, 2:].set(jnp.nan)    # padding must not leak
  lengths = np.array([T, 0, 2])
  run = jax.jit(lambda x, n, reverse: unroll(cell, params, x, lengths=n, reverse=reverse),
                static_argnums=2)
  single = jax.jit(lambda x, reverse: unroll(cell, params, x, reverse=reverse),
                   static_argnums=1)
  zero = cell.initialize_carry(params, S + (C,))   # one unbatched step's input shape
  for reverse in (False, True):
    ys, carry = run(xs, lengths, reverse)
    for b, n in enumerate(lengths):
      if n:
        ys_b, carry_b = single(xs[b, :n], reverse)
        assert_close(ys[b, :n], ys_b, 1e-6)
      else:
        carry_b = zero
      assert not np.asarray(ys[b, n:]).any()
      for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(carry_b)):
        assert_close(got[b], want, 1e-6)


def test_bidirectional_stack_and_dropout_with_conv_cells():
  lstm = conv_lstm(F, (3, 3))
  gru = conv_gru(2 * F, (1, 1))
  layer = stack(bidirectional(lstm),
                recurrent(gru, recurrent_dropout=0.3),
                recurrent(conv_gru(2 * F, (3, 3))),
                residual=True)
  params = jax.tree.map(jnp.float32, random_params(layer, S + (C,), seed=18))
  assert params[0]["forward"]["w_ih"].shape == (3, 3, C, 4 * F)
  assert params[0]["backward"]["p_o"].shape == S + (F,)
  assert params[1]["w_ih"].shape == (1, 1, 2 * F, 6 * F)
  xs = jnp.asarray(inputs((B, T) + S + (C,), seed=14), jnp.float32)
  lengths = jnp.array([T, 2])
  apply = jax.jit(lambda p, x, key: layer.apply(p, x, lengths=lengths, key=key))
  ys, carry = apply(params, xs, None)
  assert ys.shape == (B, T) + S + (2 * F,)
  assert carry[0]["forward"].h.shape == carry[0]["backward"].c.shape == (B,) + S + (F,)
  assert carry[1].shape == carry[2].shape == (B,) + S + (2 * F,)
  ys_drop, _ = apply(params, xs, jax.random.PRNGKey(1))
  assert ys_drop.shape == ys.shape and np.isfinite(np.asarray(ys_drop)).all()
  assert not np.allclose(ys_drop, ys)
  # Without a key the stack is its layers run one after another.
  last = layer.spec.layers[2].spec.cell
  @jax.jit
  def by_hand(params, xs):
    h0, _ = unroll(lstm, params[0]["forward"], xs, lengths=lengths)
    h1, _ = unroll(lstm, params[0]["backward"], xs, lengths=lengths, reverse=True)
    h = jnp.concatenate([h0, h1], -1)
    h = h + unroll(gru, params[1], h, lengths=lengths)[0]
    return h + unroll(last, params[2], h, lengths=lengths)[0]
  assert_close(ys, by_hand(params, xs), 1e-5)


def test_serial_model_with_per_step_conv_readout(x64):
  """``nn.serial(recurrent(conv_lstm), over_time(nn.Conv))``: one model, one set of params,
  on 8x8 and 16x16 frames, against the NumPy ConvLSTM followed by the 1x1 readout."""
  model = nn.serial(jaxseq.recurrent(conv_lstm(F, (3, 3), peephole=False)),
                    jaxseq.over_time(nn.Conv(1, (1, 1))))
  shapes, state = model.init(KEY, (T, 8, 8, C))
  assert shapes[0]["w_ih"].shape == (3, 3, C, 4 * F)
  assert shapes[1]["kernel"].shape == (1, 1, F, 1) and shapes[1]["bias"].shape == (1,)
  assert model.output_shape((T, 16, 16, C)) == (T, 16, 16, 1)
  rng = np.random.default_rng(24)
  params_np = jax.tree.map(lambda a: 0.5 * rng.standard_normal(a.shape), shapes)
  params = jax.tree.map(jnp.asarray, params_np)
  apply = jax.jit(lambda p, s, x: model.apply(p, s, x))
  for size in (8, 16):
    xs = inputs((B, T, size, size, C), seed=25 + size)
    y, new_state = apply(params, state, jnp.asarray(xs))
    hs, _ = np_conv_lstm(params_np[0], xs, peephole=False)
    expected = hs @ params_np[1]["kernel"][0, 0] + params_np[1]["bias"]
    assert y.shape == (B, T, size, size, 1)
    assert_close(y, expected, 1e-10)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_default_init_time_major_and_unbatched_inputs():
  cell = conv_gru(F, (3,))
  params = cell.init(KEY, C)
  # PyTorch's conv default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = k * in; zero biases.
  for name, fan_in in (("w_ih", 3 * C), ("w_hh", 3 * F)):
    bound = np.abs(np.asarray(params[name])).max()
    assert 0.7 / np.sqrt(fan_in) < bound <= 1 / np.sqrt(fan_in)
  assert not np.asarray(params["b"]).any()
  xs = jnp.asarray(inputs((B, T, 6, C), seed=15), jnp.float32)
  ys, _ = unroll(cell, params, xs)
  ys_tm, _ = unroll(cell, params, jnp.swapaxes(xs, 0, 1), time_major=True)
  ys_one, _ = unroll(cell, params, xs[1])
  assert_close(jnp.swapaxes(ys_tm, 0, 1), ys, 1e-6)
  assert_close(ys_one, ys[1], 1e-6)


# ---- frame sizes and bad input -------------------------------------------------------------

def test_peephole_params_fix_the_frame_size():
  """Peephole weights are one per position: params from ``init(key, (8, 8, C))`` run on
  8x8 frames and a step on 16x16 frames fails naming ``x_t``, whatever the carry."""
  cell = conv_lstm(F, (3, 3))
  params = jax.tree.map(jnp.float32, random_params(cell, (8, 8, C), seed=22))
  assert params["p_i"].shape == params["p_o"].shape == (8, 8, F)
  x8, x16 = jnp.ones((B, 8, 8, C)), jnp.ones((B, 16, 16, C))
  carry, y = cell.step(params, cell.initialize_carry(params, x8.shape), x8)
  assert y.shape == (B, 8, 8, F) and np.isfinite(np.asarray(y)).all()
  message = (r"^x_t: expected frames of spatial shape \(8, 8\) .*peephole.*"
             r"got shape \(2, 16, 16, 2\)$")
  with pytest.raises(ValueError, match=message):
    cell.step(params, cell.initialize_carry(params, x16.shape), x16)
  with pytest.raises(ValueError, match=message):
    cell.step(params, carry, x16)
  assert unroll(cell, params, x8[:, None])[0].shape == (B, 1, 8, 8, F)


def test_unroll_of_peephole_params_on_other_frames_names_the_input():
  cell = conv_lstm(F, (3, 3))
  params = jax.tree.map(jnp.float32, random_params(cell, (8, 8, C), seed=22))
  with pytest.raises(ValueError, match=r"^(x_t|xs): .*\(8, 8\)"):
    unroll(cell, params, jnp.ones((B, T, 16, 16, C)))


def test_peephole_init_needs_the_frame_size():
  cell = conv_lstm(F, (3, 3))
  with pytest.raises(ValueError, match=r"^input_shape: expected one step's input shape "
                     r"\(\*spatial \(2 axes\), channels\) \(conv_lstm with peephole=True "
                     r"has one peephole weight per position and channel of the state\), "
                     r"got 2$"):
    cell.init(KEY, C)
  with pytest.raises(ValueError, match=r"^input_shape: .*peephole.*got \(5, 2\)$"):
    cell.init(KEY, (5, C))     # a frame axis short
  # Without peepholes the channels are enough.
  plain = conv_lstm(F, (3, 3), peephole=False)
  assert jax.eval_shape(lambda: plain.init(KEY, C))["w_ih"].shape == (3, 3, C, 4 * F)


def test_bad_input_fails_early_with_clear_errors():
  cell = conv_lstm(F, (3, 3))
  params = jax.tree.map(jnp.float32, random_params(cell, S + (C,), seed=20))
  good = jnp.zeros((B, T) + S + (C,))
  with pytest.raises(ValueError, match=r"xs: expected feature size 2 .* got feature size 5"):
    unroll(cell, params, jnp.zeros((B, T) + S + (5,)))
  with pytest.raises(ValueError, match=r"xs: expected an array of rank >= 4"):
    unroll(cell, params, jnp.zeros(S + (C,)))
  with pytest.raises(ValueError, match=r"x_t: expected 2 channels"):
    cell.step(params, cell.initialize_carry(params, (B,) + S + (C,)),
              jnp.zeros((B,) + S + (5,)))
  with pytest.raises(ValueError, match=r"^carry: expected a carry shaped .* for inputs of "
                     r"shape \(2, 5, 5, 2\)"):
    unroll(cell, params, good, carry=cell.initialize_carry(params, (B + 1,) + S + (C,)))
  with pytest.raises(ValueError, match=r"^carry: expected the conv_lstm carry for x_t of "
                     r"shape \(2, 5, 5, 2\), shaped \{\.h: \(2, 5, 5, 3\)"):
    cell.step(params, cell.initialize_carry(params, (1,) + S + (C,)), good[:, 0])
  with pytest.raises(TypeError, match="xs: expected a floating-point array"):
    unroll(cell, params, good.astype(jnp.int32))
  # The batch-shape carry of dense cells has no frame size: conv cells refuse it.
  with pytest.warns(DeprecationWarning), pytest.raises(
      TypeError, match=r"^batch_shape: expected initialize_carry\(params, input_shape\)"):
    cell.initial_carry(params, (B,))
  gru = conv_gru(F, (3, 3))
  with pytest.raises(ValueError, match=r"^input_shape: expected one step's input shape "
                     r"\(\*batch, \*spatial \(2 axes\), channels\) for conv_gru, got \(2, 2\)"):
    gru.initialize_carry(gru.init(KEY, C), (B, C))
  with pytest.raises(TypeError, match="kernel_size: expected a tuple of positive ints"):
    conv_gru(F, 3)
  with pytest.raises(ValueError, match="kernel_size: expected a positive int, got 0"):
    conv_gru(F, (3, 0))
  with pytest.raises(ValueError, match="padding: expected one of 'SAME', 'CIRCULAR'"):
    conv_gru(F, (3, 3), padding="VALID")
  with pytest.raises(ValueError, match="features: expected a positive int"):
    conv_gru(0, (3, 3))
