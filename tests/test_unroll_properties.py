"""Properties of ``jaxseq.unroll`` with variable lengths, its options and transformations.

Oracle: a Python loop of ``cell.step`` over each sequence alone, truncated to its length
(reversed by hand for ``reverse=True``), which shares nothing with ``unroll``'s scan,
masking or padding logic. Option tests (remat, unroll, time_major, batch axes) compare
against the plain scan, which the property tests pin to that oracle.

Shapes are fixed inside each test (B=3, T=6, D=3, H=4) so that each jitted function
compiles once; hypothesis varies only values, lengths and the padding garbage.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jaxseq
from jaxseq.sequence import unroll

B, T, D, H = 3, 6, 3, 4
CELLS = {
    "simple_rnn": lambda: jaxseq.simple_rnn(H),
    "lstm": lambda: jaxseq.lstm(H),
    "gru": lambda: jaxseq.gru(H),
}
GARBAGE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e30, "max": -3e38}

seeds = st.integers(0, 2**31 - 1)
lengths_st = st.lists(st.integers(0, T), min_size=B, max_size=B)
garbage_st = st.sampled_from(sorted(GARBAGE) + ["random-large"])


@functools.cache
def setup(name):
  """The cell, params with non-zero biases (PyTorch's uniform init), a jitted step."""
  cell = CELLS[name]()
  params = cell.init(jax.random.PRNGKey(42), D)
  assert np.all(np.abs(np.asarray(params["b"])) > 0)
  return cell, params, jax.jit(cell.step)


def weighted_sum(ys, carry):
  """A scalar that reads every output and carry entry with distinct fixed weights."""
  total = jnp.sum(ys * np.cos(np.arange(ys.size)).reshape(ys.shape))
  for leaf in jax.tree.leaves(carry):
    total = total + jnp.sum(leaf * np.sin(1.0 + np.arange(leaf.size)).reshape(leaf.shape))
  return total


@functools.cache
def value_and_grads(name, reverse):
  """jit((params, xs, lengths) -> ((loss, (ys, carry)), (d params, d xs))), one compile."""
  cell, _, _ = setup(name)

  def loss(params, xs, lengths):
    ys, carry = unroll(cell, params, xs, lengths=lengths, reverse=reverse)
    return weighted_sum(ys, carry), (ys, carry)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def run_alone(name, params, x):
  """Oracle: a Python loop of cell.step over one unbatched sequence x (L, D), L >= 0."""
  cell, _, step = setup(name)
  carry = cell.initial_carry(params, ())
  ys = []
  for t in range(x.shape[0]):
    carry, y = step(params, carry, x[t])
    ys.append(np.asarray(y))
  return np.asarray(ys).reshape(x.shape[0], H), carry


def oracle(name, params, xs, lengths, reverse=False):
  """Each sequence alone, truncated to its length; reverse runs the flipped valid part and
  flips the outputs back. Padded outputs are zero. Returns batched (ys, carry)."""
  ys = np.zeros(xs.shape[:2] + (H,), np.float32)
  carries = []
  for b, length in enumerate(lengths):
    x = xs[b, :length]
    y, carry = run_alone(name, params, x[::-1] if reverse else x)
    ys[b, :length] = y[::-1] if reverse else y
    carries.append(carry)
  carry = jax.tree.map(lambda *leaves: np.stack(leaves), *carries)
  return ys, carry


def make_inputs(seed, lengths, garbage):
  rng = np.random.default_rng(seed)
  xs = rng.normal(size=(B, T, D)).astype(np.float32)
  valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  fill = (1e6 * rng.normal(size=xs.shape) if garbage == "random-large"
          else np.full(xs.shape, GARBAGE[garbage]))
  dirty = np.where(valid[..., None], xs, fill).astype(np.float32)
  return xs, dirty, valid, np.asarray(lengths, np.int32)


def assert_tree_close(actual, expected, **tol):
  tol = {"rtol": 1e-5, "atol": 1e-5, **tol}
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), **tol)


def assert_tree_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


# --- Property tests: variable lengths, garbage in the padding, reverse ------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", sorted(CELLS))
@given(seed=seeds, lengths=lengths_st, garbage=garbage_st)
def test_lengths_match_each_sequence_alone_and_ignore_padding(name, reverse, seed, lengths,
                                                              garbage):
  cell, params, _ = setup(name)
  fn = value_and_grads(name, reverse)
  xs, dirty, valid, lengths = make_inputs(seed, lengths, garbage)
  (_, (ys, carry)), (g_params, g_xs) = fn(params, xs, lengths)
  (_, (ys_d, carry_d)), (g_params_d, g_xs_d) = fn(params, dirty, lengths)

  # Padded outputs are exactly zero.
  assert np.all(np.asarray(ys)[~valid] == 0)
  assert np.all(np.asarray(ys_d)[~valid] == 0)
  # Garbage in the padding changes nothing: outputs, carry, gradients (params and xs).
  assert_tree_equal(ys_d, ys)
  assert_tree_equal(carry_d, carry)
  assert_tree_equal(g_params_d, g_params)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(g_params_d))
  assert_tree_equal(g_xs_d, g_xs)
  assert np.all(np.asarray(g_xs_d)[~valid] == 0)  # inputs past a length are never read

  # Outputs and final carry equal each sequence run alone (flipped for reverse).
  ys_ref, carry_ref = oracle(name, params, xs, lengths, reverse)
  assert_tree_close(ys, ys_ref)
  assert_tree_close(carry, carry_ref)
  assert type(carry) is type(cell.initial_carry(params, (B,)))


@functools.cache
def bidirectional_fn(name):
  cell, _, _ = setup(name)
  layer = jaxseq.bidirectional(cell)
  params = layer.init(jax.random.PRNGKey(7), D)

  def loss(params, xs, lengths):
    ys, carry = layer.apply(params, xs, lengths=lengths)
    return weighted_sum(ys, carry), (ys, carry)
  return params, jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("name", sorted(CELLS))
@given(seed=seeds, lengths=lengths_st, garbage=garbage_st)
def test_bidirectional_lengths_match_each_sequence_alone(name, seed, lengths, garbage):
  params, fn = bidirectional_fn(name)
  xs, dirty, valid, lengths = make_inputs(seed, lengths, garbage)
  (_, (ys, carry)), grads = fn(params, xs, lengths)
  (_, (ys_d, carry_d)), grads_d = fn(params, dirty, lengths)
  assert_tree_equal((ys_d, carry_d, grads_d), (ys, carry, grads))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads_d))

  ys_fw, carry_fw = oracle(name, params["forward"], xs, lengths)
  ys_bw, carry_bw = oracle(name, params["backward"], xs, lengths, reverse=True)
  assert_tree_close(ys, np.concatenate([ys_fw, ys_bw], axis=-1))
  assert np.all(np.asarray(ys)[~valid] == 0)
  assert set(carry) == {"forward", "backward"}
  assert_tree_close(carry["forward"], carry_fw)
  assert_tree_close(carry["backward"], carry_bw)


# --- Options give the plain scan's outputs, carry and gradients --------------------------

def lstm_setup():
  cell, params, _ = setup("lstm")
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(B, T, D)).astype(np.float32)
  return cell, params, xs, np.array([6, 0, 4], np.int32)


def both_directions(cell, params, xs, lengths, **options):
  """Forward and reverse runs in one jitted value-and-grad (one compile per option set)."""
  def loss(params, xs):
    fw = unroll(cell, params, xs, lengths=lengths, **options)
    bw = unroll(cell, params, xs, lengths=lengths, reverse=True, **options)
    return weighted_sum(*fw) + 0.5 * weighted_sum(*bw), (fw, bw)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)


@functools.cache
def plain_reference():
  cell, params, xs, lengths = lstm_setup()
  return both_directions(cell, params, xs, lengths)


@pytest.mark.parametrize("options", [
    dict(remat=True), dict(remat=4), dict(unroll=2),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_remat_and_unroll_match_plain_scan(options):
  cell, params, xs, lengths = lstm_setup()
  actual = both_directions(cell, params, xs, lengths, **options)
  assert_tree_close(actual, plain_reference(), rtol=1e-5, atol=1e-6)


def test_time_major_matches_batch_first():
  cell, params, xs, lengths = lstm_setup()
  (value, (fw, bw)), (g_params, g_xs) = plain_reference()
  def loss(params, xs_tm):
    fw = unroll(cell, params, xs_tm, lengths=lengths, time_major=True)
    bw = unroll(cell, params, xs_tm, lengths=lengths, time_major=True, reverse=True)
    swap = lambda ys_c: (jnp.swapaxes(ys_c[0], 0, 1), ys_c[1])
    return weighted_sum(*swap(fw)) + 0.5 * weighted_sum(*swap(bw)), (fw, bw)
  (value_tm, (fw_tm, bw_tm)), (g_params_tm, g_xs_tm) = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs.swapaxes(0, 1))
  assert fw_tm[0].shape == (T, B, H)
  assert_tree_close(fw_tm[0].swapaxes(0, 1), fw[0])
  assert_tree_close(bw_tm[0].swapaxes(0, 1), bw[0])
  assert_tree_close((fw_tm[1], bw_tm[1], g_params_tm), (fw[1], bw[1], g_params))
  assert_tree_close(g_xs_tm.swapaxes(0, 1), g_xs)
  np.testing.assert_allclose(value_tm, value, rtol=1e-6)


@functools.cache
def squares_value_and_grads():
  cell, _, _ = setup("lstm")
  def loss(params, xs, lengths, time_major):
    ys, carry = unroll(cell, params, xs, lengths=lengths, time_major=time_major)
    return jnp.sum(ys ** 2) + sum(jnp.sum(c) for c in carry), (ys, carry)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=3)


@pytest.mark.parametrize("time_major", [False, True])
def test_extra_batch_axes_match_flat_batch(time_major):
  _, params, _, _ = lstm_setup()
  rng = np.random.default_rng(1)
  xs = rng.normal(size=(2, 3, T, D)).astype(np.float32)
  lengths = np.array([[0, 1, 6], [3, 5, 2]], np.int32)
  grad = squares_value_and_grads()
  xs_in = np.moveaxis(xs, 2, 0) if time_major else xs
  (_, (ys, carry)), (g_p, g_x) = grad(params, xs_in, lengths, time_major)
  (_, (ys_f, carry_f)), (g_p_f, g_x_f) = grad(params, xs.reshape(6, T, D),
                                              lengths.reshape(6), False)
  if time_major:
    ys, g_x = np.moveaxis(ys, 0, 2), np.moveaxis(g_x, 0, 2)
  assert ys.shape == (2, 3, T, H) and carry.h.shape == (2, 3, H)
  assert_tree_close(np.reshape(ys, (6, T, H)), ys_f)
  assert_tree_close(jax.tree.map(lambda c: c.reshape(6, -1), carry), carry_f)
  assert_tree_close((g_p, np.reshape(g_x, (6, T, D))), (g_p_f, g_x_f))


@functools.cache
def unbatched_vs_batch_of_one():
  """jit: value, outputs, carry and gradients of an unbatched (T, D) sequence and of the
  same sequence as a batch of one, both reversed, in one compile."""
  cell, _, _ = setup("lstm")
  def loss(params, x, lengths):
    ys, carry = unroll(cell, params, x, lengths=lengths, reverse=True)
    return weighted_sum(ys, carry), (ys, carry)
  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  def both(params, x, length):
    return grad(params, x, length), grad(params, x[None], None if length is None else length[None])
  return jax.jit(both)


@pytest.mark.parametrize("length", [None, 0, 4])
def test_unbatched_sequence_matches_batch_of_one(length):
  _, params, xs, _ = lstm_setup()
  x = xs[0]
  lengths = None if length is None else np.int32(length)
  unbatched, batch_of_one = unbatched_vs_batch_of_one()(params, x, lengths)
  (_, (ys, carry)), grads = unbatched
  (_, (ys_1, carry_1)), (g_params_1, g_x_1) = batch_of_one
  assert ys.shape == (T, H) and carry.h.shape == (H,)
  first = lambda tree: jax.tree.map(lambda a: a[0], tree)
  assert_tree_close((ys, carry), (ys_1[0], first(carry_1)))
  assert_tree_close(grads, (g_params_1, g_x_1[0]))
  ys_ref, carry_ref = oracle("lstm", params, xs[:1], [T if length is None else length],
                             reverse=True)
  assert_tree_close((ys, carry), (ys_ref[0], first(carry_ref)))


# --- jit, vmap and grad compose with unroll ----------------------------------------------

def test_vmap_over_batch_axis_equals_batched_call():
  cell, params, xs, lengths = lstm_setup()
  one = lambda x, l: unroll(cell, params, x, lengths=l, reverse=True)
  ys_v, carry_v = jax.jit(jax.vmap(one))(xs, lengths)
  ys, carry = unroll(cell, params, xs, lengths=lengths, reverse=True)
  assert_tree_close((ys_v, carry_v), (ys, carry), rtol=1e-6, atol=1e-6)


def test_jit_equals_eager():
  cell, params, xs, lengths = lstm_setup()
  eager = unroll(cell, params, xs, lengths=lengths, remat=4)
  jitted = jax.jit(lambda p, x, l: unroll(cell, p, x, lengths=l, remat=4))(params, xs, lengths)
  assert_tree_close(jitted, eager, rtol=1e-6, atol=1e-6)


def test_grad_with_lengths_is_sum_of_per_example_grads():
  """d/dparams of a batched loss with lengths = sum over b of d/dparams of the loss of
  sequence b run alone (no lengths, truncated); length 0 contributes nothing. (GRU and
  LSTM layers: the same check in test_layers.py.)"""
  cell, params, _ = setup("lstm")
  rng = np.random.default_rng(2)
  xs = rng.normal(size=(4, T, D)).astype(np.float32)
  lengths = np.array([2, 6, 0, 2], np.int32)

  def loss(params, xs, lengths=None):
    ys, carry = unroll(cell, params, xs, lengths=lengths)
    return jnp.sum(jnp.tanh(ys) * 0.7) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(carry))
  per_example = jax.jit(jax.grad(loss))
  batched = per_example(params, xs, lengths)
  expected = jax.tree.map(jnp.zeros_like, params)
  for b, length in enumerate(lengths):
    if length:
      expected = jax.tree.map(jnp.add, expected, per_example(params, xs[b:b + 1, :length]))
  assert_tree_close(batched, expected, rtol=1e-5, atol=1e-6)
