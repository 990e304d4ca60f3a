"""Layers: ``recurrent`` (dropout), ``bidirectional`` (merges, carry), ``stack`` (residual,
dropout, carry), and their composition with jit, vmap and grad.

Oracles: layers run by hand one after another (each one a plain ``unroll``, itself pinned
to a Python loop of ``cell.step`` in test_unroll_properties.py), NumPy merges, central
finite differences in float64, per-example sums of gradients, and for dropout structural
and statistical facts about linear cells whose outputs expose the masks.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq
from jaxseq.cells.base import LSTMState
from jaxseq.layers import bidirectional, recurrent, stack
from jaxseq.sequence import unroll

B, T, D = 3, 5, 3
LENGTHS = np.array([5, 0, 3], np.int32)
KEY = jax.random.PRNGKey(0)


def inputs(shape=(B, T, D), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def assert_tree_close(actual, expected, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def assert_tree_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def run(fn):
  """Runs a test's computations in one jit: one compile instead of one per eager scan."""
  return jax.jit(fn)()


def identity_rnn(size, recurrent_weight=0.0):
  """A linear Elman cell with w_ih = I, w_hh = recurrent_weight * I, b = 0, so that
  h_t = x_t + recurrent_weight * h_{t-1}: the outputs show exactly what dropout did."""
  cell = jaxseq.simple_rnn(size, activation=lambda z: z)
  params = {"w_ih": jnp.eye(size), "w_hh": recurrent_weight * jnp.eye(size),
            "b": jnp.zeros(size)}
  return cell, params


# --- Dropout ------------------------------------------------------------------------------

def test_dropout_without_key_is_deterministic_and_equals_no_dropout():
  cell = jaxseq.lstm(4)
  params = cell.init(KEY, D)
  xs = inputs()
  dropped = recurrent(cell, dropout=0.5, recurrent_dropout=0.5)
  layers = stack(dropped, recurrent(jaxseq.gru(2), dropout=0.3), dropout=0.5)
  p = layers.init(KEY, D)
  def both():
    plain = recurrent(cell).apply(params, xs, lengths=LENGTHS)
    manual = recurrent(jaxseq.gru(2)).apply(p[1], recurrent(cell).apply(p[0], xs)[0])[0]
    return (plain, dropped.apply(params, xs, lengths=LENGTHS), manual, layers.apply(p, xs)[0])
  plain, no_key, manual, stacked = run(both)
  assert_tree_equal(no_key, plain)
  assert_tree_close(stacked, manual)


@pytest.mark.parametrize("time_major", [False, True])
def test_input_dropout_mask_is_one_per_sequence_and_feature(time_major):
  """dropout=0.5 on h_t = x_t (w_ih = I, w_hh = 0): y_t = x_t * m / (1 - p) with the same
  m in {0, 1} at every step of a sequence; about half of the features dropped."""
  size, batch, steps = 64, 8, 4
  cell, params = identity_rnn(size)
  xs = 1.0 + np.random.default_rng(1).uniform(size=(batch, steps, size)).astype(np.float32)
  layer = recurrent(cell, dropout=0.5, time_major=time_major)
  xs_in = xs.swapaxes(0, 1) if time_major else xs
  ys, _ = layer.apply(params, xs_in, key=jax.random.PRNGKey(11))
  ys = np.asarray(ys.swapaxes(0, 1) if time_major else ys)
  ratio = ys / xs
  assert np.all(np.isclose(ratio, 0.0) | np.isclose(ratio, 2.0))  # inverted dropout scale
  dropped = np.isclose(ratio, 0.0)
  assert np.all(dropped == dropped[:, :1, :])          # the same mask at every time step
  assert abs(dropped.mean() - 0.5) < 0.1               # 512 Bernoulli(0.5): sd 0.022
  assert not np.all(dropped == dropped[:1])            # sequences have their own masks


def test_recurrent_dropout_mask_is_one_per_sequence():
  """recurrent_dropout=0.5 on h_t = x_t + h_{t-1} with x_0 = 1 and x_t = 0 afterwards:
  h_t = (m / (1 - p))^t, i.e. 0 from t = 1 on for a dropped unit and 2^t for a kept one,
  which holds only if the mask is the same at every step."""
  size, batch, steps = 64, 8, 4
  cell, params = identity_rnn(size, recurrent_weight=1.0)
  xs = np.zeros((batch, steps, size), np.float32)
  xs[:, 0] = 1.0
  ys, carry = recurrent(cell, recurrent_dropout=0.5).apply(params, xs,
                                                           key=jax.random.PRNGKey(5))
  ys = np.asarray(ys)
  np.testing.assert_array_equal(ys[:, 0], 1.0)
  kept = ys[:, 1] > 0
  for t in range(1, steps):
    np.testing.assert_array_equal(ys[:, t], np.where(kept, 2.0 ** t, 0.0))
  np.testing.assert_array_equal(np.asarray(carry), ys[:, -1])
  assert abs(1.0 - kept.mean() - 0.5) < 0.1


@pytest.mark.parametrize("options", [dict(dropout=0.3), dict(recurrent_dropout=0.3)],
                         ids=["dropout", "recurrent_dropout"])
def test_dropout_keys(options):
  cell = jaxseq.lstm(8)
  params = cell.init(KEY, D)
  xs = inputs()
  layer = recurrent(cell, **options)
  apply = jax.jit(lambda k: layer.apply(params, xs, lengths=LENGTHS, key=k)[0])
  plain = np.asarray(recurrent(cell).apply(params, xs, lengths=LENGTHS)[0])
  a, b, a_again = (np.asarray(apply(jax.random.PRNGKey(i))) for i in (1, 2, 1))
  np.testing.assert_array_equal(a, a_again)     # same key, same outputs
  assert not np.allclose(a, b)                  # different keys, different outputs
  assert not np.allclose(a, plain)              # dropout changes the outputs
  valid = np.arange(T)[None, :] < LENGTHS[:, None]
  assert np.all(a[~valid] == 0) and np.all(b[~valid] == 0)  # padding stays zero


def test_dropout_accepts_new_style_keys():
  cell, params = identity_rnn(4)
  layer = recurrent(cell, dropout=0.5)
  ys, _ = layer.apply(params, inputs((2, 3, 4)), key=jax.random.key(3))
  assert np.isfinite(np.asarray(ys)).all()


def test_stack_dropout_is_not_applied_after_the_last_layer():
  cell, params = identity_rnn(D)
  xs = inputs()
  one = stack(cell, dropout=0.5)
  ys, _ = one.apply([params], xs, key=jax.random.PRNGKey(4))
  np.testing.assert_array_equal(np.asarray(ys), xs)  # a single layer: no dropout at all


def test_stack_dropout_between_layers_is_fresh_per_element():
  """Two identity layers: y = x * m / (1 - p) with one fresh m per (b, t, feature); applied
  once (ratios 0 or 2, never 4), about half dropped, and not constant over time."""
  size = 64
  cell, params = identity_rnn(size)
  xs = 1.0 + np.random.default_rng(2).uniform(size=(4, 6, size)).astype(np.float32)
  ys, _ = stack(cell, cell, dropout=0.5).apply([params, params], xs,
                                               key=jax.random.PRNGKey(6))
  ratio = np.asarray(ys) / xs
  assert np.all(np.isclose(ratio, 0.0) | np.isclose(ratio, 2.0))
  dropped = np.isclose(ratio, 0.0)
  assert abs(dropped.mean() - 0.5) < 0.08   # 1536 Bernoulli(0.5): sd 0.013
  assert not np.all(dropped == dropped[:, :1])


# --- Bidirectional merges and carry ---------------------------------------------------------

@functools.cache
def bidirectional_parts():
  """Params of bidirectional(gru(4)) and the two directions run by hand with unroll."""
  cell = jaxseq.gru(4)
  params = bidirectional(cell).init(KEY, D)
  xs = inputs()
  fw, bw = run(lambda: (unroll(cell, params["forward"], xs, lengths=LENGTHS),
                        unroll(cell, params["backward"], xs, lengths=LENGTHS, reverse=True)))
  return cell, params, xs, fw, bw


@pytest.mark.parametrize("merge", ["concat", "sum", "mean", "mul", None, "callable"])
def test_bidirectional_merges(merge):
  cell, params, xs, (ys_fw, c_fw), (ys_bw, c_bw) = bidirectional_parts()
  a, b = np.asarray(ys_fw), np.asarray(ys_bw)
  expected = {"concat": np.concatenate([a, b], -1), "sum": a + b, "mean": (a + b) / 2,
              "mul": a * b, None: (a, b), "callable": a - 2 * b}[merge]
  merge_fn = (lambda u, v: u - 2 * v) if merge == "callable" else merge
  layer = bidirectional(cell, merge=merge_fn)
  ys, carry = run(lambda: layer.apply(params, xs, lengths=LENGTHS))
  assert_tree_close(ys, expected)
  assert_tree_close(carry, {"forward": c_fw, "backward": c_bw})


def test_bidirectional_with_two_cells_and_a_recurrent_backward_layer():
  """bw is always run in reverse, even when given as a forward recurrent layer."""
  fw_cell, bw_cell = jaxseq.lstm(3), jaxseq.gru(2)
  layer = bidirectional(recurrent(fw_cell), recurrent(bw_cell))
  params = layer.init(KEY, D)
  assert params["forward"]["w_ih"].shape == (D, 12) and params["backward"]["w_ih"].shape == (D, 6)
  xs = inputs()
  (ys, carry), (ys_fw, c_fw), (ys_bw, c_bw) = run(lambda: (
      layer.apply(params, xs, lengths=LENGTHS),
      unroll(fw_cell, params["forward"], xs, lengths=LENGTHS),
      unroll(bw_cell, params["backward"], xs, lengths=LENGTHS, reverse=True)))
  assert ys.shape == (B, T, 5)
  assert_tree_close((ys, carry), (jnp.concatenate([ys_fw, ys_bw], -1),
                                  {"forward": c_fw, "backward": c_bw}))
  assert isinstance(carry["forward"], LSTMState)


def test_bidirectional_copy_is_initialised_independently():
  params = bidirectional(jaxseq.gru(4)).init(KEY, D)
  assert not np.allclose(params["forward"]["w_ih"], params["backward"]["w_ih"])


def test_bidirectional_carry_in_and_out():
  cell, params, xs, _, _ = bidirectional_parts()
  rng = np.random.default_rng(3)
  carry = {"forward": rng.normal(size=(B, 4)).astype(np.float32),
           "backward": rng.normal(size=(B, 4)).astype(np.float32)}
  (ys, out), (ys_fw, c_fw), (ys_bw, c_bw) = run(lambda: (
      bidirectional(cell).apply(params, xs, lengths=LENGTHS, carry=carry),
      unroll(cell, params["forward"], xs, carry["forward"], lengths=LENGTHS),
      unroll(cell, params["backward"], xs, carry["backward"], lengths=LENGTHS,
             reverse=True)))
  assert_tree_close((ys, out), (jnp.concatenate([ys_fw, ys_bw], -1),
                                {"forward": c_fw, "backward": c_bw}))
  # An empty sequence returns the carry it was given.
  assert_tree_close(jax.tree.map(lambda c: c[1], out), jax.tree.map(lambda c: c[1], carry))


# --- Stack: residual, stack of bidirectional, carry -----------------------------------------

def test_stack_residual_adds_each_layers_input_from_the_second_layer_on():
  cells = [jaxseq.lstm(4), jaxseq.gru(4), jaxseq.simple_rnn(4)]
  layer = stack(*cells, residual=True)
  params = layer.init(KEY, D)
  xs = inputs()
  def manual():
    h, carries = xs, []
    for i, (cell, p) in enumerate(zip(cells, params)):
      out, c = unroll(cell, p, h, lengths=LENGTHS)
      h = out + h if i > 0 else out
      carries.append(c)
    return h, carries
  (ys, carry), expected = run(lambda: (layer.apply(params, xs, lengths=LENGTHS), manual()))
  assert_tree_close((ys, carry), expected)
  valid = np.arange(T)[None, :] < LENGTHS[:, None]
  assert np.all(np.asarray(ys)[~valid] == 0)


def test_stack_of_bidirectional_layers_with_carry():
  first, second = bidirectional(jaxseq.gru(4)), bidirectional(jaxseq.lstm(3), merge="sum")
  layer = stack(first, second)
  params = layer.init(KEY, D)
  assert isinstance(params, list) and len(params) == 2
  assert params[1]["forward"]["w_ih"].shape == (8, 12)  # input: 2 * 4 concatenated
  xs = inputs()
  rng = np.random.default_rng(4)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  carry = [{"forward": normal(B, 4), "backward": normal(B, 4)},
           {"forward": LSTMState(normal(B, 3), normal(B, 3)),
            "backward": LSTMState(normal(B, 3), normal(B, 3))}]
  def manual():
    h1, c1 = first.apply(params[0], xs, lengths=LENGTHS, carry=carry[0])
    h2, c2 = second.apply(params[1], h1, lengths=LENGTHS, carry=carry[1])
    return h2, [c1, c2]
  (ys, out), (h2, c12) = run(lambda: (layer.apply(params, xs, lengths=LENGTHS, carry=carry),
                                      manual()))
  assert isinstance(out, list) and len(out) == 2
  assert set(out[0]) == set(out[1]) == {"forward", "backward"}
  assert isinstance(out[1]["backward"], LSTMState)
  assert ys.shape == (B, T, 3)
  assert_tree_close((ys, out), (h2, c12))


# --- jit, vmap and grad through layers ------------------------------------------------------

@functools.cache
def deep_layer():
  return stack(bidirectional(jaxseq.lstm(3)), recurrent(jaxseq.gru(2)), residual=False)


def test_vmap_over_batch_axis_equals_batched_call():
  layer = deep_layer()
  params = layer.init(KEY, D)
  xs = inputs()
  apply = lambda x, l: layer.apply(params, x, lengths=l)
  batched = jax.jit(apply)(xs, LENGTHS)
  mapped = jax.jit(jax.vmap(apply))(xs, LENGTHS)
  assert_tree_close(mapped, batched)


def loss_fn(layer):
  def loss(params, xs, lengths=None):
    ys, carry = layer.apply(params, xs, lengths=lengths)
    return (jnp.sum(jnp.sin(ys) * np.linspace(-1, 1, ys.shape[-1]))
            + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(carry)))
  return loss


def test_grad_through_stack_of_bidirectional_matches_finite_differences(x64):
  layer = deep_layer()
  params = jax.tree.map(lambda a: a.astype(jnp.float64), layer.init(KEY, D))
  xs = inputs().astype(np.float64)
  valid = np.arange(T)[None, :] < LENGTHS[:, None]
  xs[~valid] = np.inf  # garbage in the padding must not reach the gradient
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn(layer)))
  loss = lambda p, x, l: value_and_grad(p, x, l)[0]
  grads = value_and_grad(params, xs, LENGTHS)[1]
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  rng = np.random.default_rng(5)
  eps = 1e-6
  for _ in range(3):
    direction = jax.tree.map(lambda a: rng.normal(size=a.shape), params)
    shifted = lambda s: jax.tree.map(lambda p, v: p + s * eps * v, params, direction)
    numeric = (loss(shifted(1.0), xs, LENGTHS) - loss(shifted(-1.0), xs, LENGTHS)) / (2 * eps)
    analytic = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads),
                                                  jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_grad_with_lengths_is_sum_of_per_example_grads():
  """A batch with lengths = a sum of single sequences truncated to their lengths."""
  layer = deep_layer()
  params = layer.init(KEY, D)
  xs = inputs()
  lengths = np.array([3, 0, 3], np.int32)
  grad = jax.jit(jax.grad(loss_fn(layer)))
  batched = grad(params, xs, lengths)
  expected = jax.tree.map(lambda a, b: a + b, grad(params, xs[0:1, :3]),
                          grad(params, xs[2:3, :3]))
  assert_tree_close(batched, expected, rtol=1e-5, atol=1e-6)
