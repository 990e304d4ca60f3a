"""The model language: split cells, the kernel plug-in rule, one Layer type, and the models
that need them (CRNN, text-CNN -> bidirectional GRU, bidirectional stacks).

Oracles: a per-step Python loop over ``cell.step`` written here (masking by hand, not
``jaxseq.unroll``), manual compositions of the layers, and a trained model's test accuracy.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq
from jaxseq import nn
from jaxseq.cells.base import Kernel
from jaxseq.sequence import scan_recur

KEY = jax.random.PRNGKey(0)
B, T, D, H = 3, 5, 4, 6


def _with_biases(params, key):
  """Non-zero biases and peepholes (zeros by default for conv cells), so parity cannot
  hide a dropped term. Nested params (layers) are handled leaf by leaf."""
  def shift(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if any(f"'{prefix}" in name for prefix in ("b", "p_")):
      k = jax.random.fold_in(key, hash(jax.tree_util.keystr(path)) % (2 ** 31))
      return leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(shift, params)


DENSE_CELLS = {
    "simple_rnn": lambda: jaxseq.simple_rnn(H),
    "simple_rnn_relu": lambda: jaxseq.simple_rnn(H, jax.nn.relu),
    "lstm": lambda: jaxseq.lstm(H),
    "lstm_peephole": lambda: jaxseq.lstm(H, peephole=True),
    "lstm_coupled_peephole": lambda: jaxseq.lstm(H, coupled=True, peephole=True),
    "lstm_proj": lambda: jaxseq.lstm(H, proj_size=3),
    "lstm_activations": lambda: jaxseq.lstm(H, gate_fn=jax.nn.hard_sigmoid,
                                            cell_fn=jax.nn.soft_sign, hidden_fn=jnp.sin),
    "gru": lambda: jaxseq.gru(H),
    "gru_reset_before": lambda: jaxseq.gru(H, reset_after=False),
    "mgu": lambda: jaxseq.mgu(H),
    "mgu_reset_after": lambda: jaxseq.mgu(H, reset_after=True),
}
CONV_CELLS = {
    "conv_lstm": lambda: jaxseq.conv_lstm(2, (3, 3)),
    "conv_lstm_no_peephole": lambda: jaxseq.conv_lstm(2, (3, 2), peephole=False),
    "conv_gru": lambda: jaxseq.conv_gru(2, (3,)),
    "conv_gru_reset_after": lambda: jaxseq.conv_gru(2, (2, 2), reset_after=True),
}
FRAMES = {"conv_lstm": (4, 4), "conv_lstm_no_peephole": (3, 4), "conv_gru": (5,),
          "conv_gru_reset_after": (3, 3)}


def _setup(name):
  if name in DENSE_CELLS:
    cell = DENSE_CELLS[name]()
    step_shape = (D,)
  else:
    cell = CONV_CELLS[name]()
    step_shape = FRAMES[name] + (2,)
  k_init, k_bias, k_x = jax.random.split(KEY, 3)
  params = cell.init(k_init, step_shape if len(step_shape) > 1 else D)
  params = _with_biases(params, k_bias)
  xs = jax.random.normal(k_x, (B, T) + step_shape)
  return cell, params, xs


def _per_step_reference(cell, params, xs, lengths=None, reverse=False):
  """``cell.step`` in a Python loop, masking by hand: the semantics ``unroll`` documents."""
  carry = cell.initialize_carry(params, xs[:, 0].shape)
  order = range(T - 1, -1, -1) if reverse else range(T)
  ys = [None] * T
  for t in order:
    x_t = xs[:, t]
    if lengths is None:
      carry, ys[t] = cell.step(params, carry, x_t)
      continue
    valid = (t < lengths).reshape((-1,) + (1,) * (x_t.ndim - 1))
    new_carry, y = cell.step(params, carry, jnp.where(valid, x_t, 0))
    carry = jax.tree.map(
        lambda n, o: jnp.where(valid.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
        new_carry, carry)
    ys[t] = jnp.where(valid.reshape((-1,) + (1,) * (y.ndim - 1)), y, 0)
  return jnp.stack(ys, axis=1), carry


def _loss(run):
  def loss(params, xs):
    ys, carry = run(params, xs)
    weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))
  return loss


@pytest.mark.parametrize("name", list(DENSE_CELLS) + list(CONV_CELLS))
def test_hoisted_unroll_equals_per_step_reference(name, x64):
  """The input half over all steps then the scanned recurrent half equals stepping
  ``cell.step``, values and gradients, float64 to 1e-12, with lengths, reverse and remat."""
  cell, params, xs = _setup(name)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  xs = xs.astype(jnp.float64)
  lengths = jnp.array([T, 2, 0])
  # One run through every option at once (masking, reversed order, chunked checkpointing
  # with a padded last chunk); the plain path is the same code with fewer branches.
  for options in (dict(lengths=lengths, reverse=True, remat=2),):
    ref = dict(lengths=options.get("lengths"), reverse=options.get("reverse", False))
    run = lambda p, x: jaxseq.unroll(cell, p, x, **options)
    reference = lambda p, x: _per_step_reference(cell, p, x, **ref)
    got, want = jax.jit(run)(params, xs), jax.jit(reference)(params, xs)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=str(options))
    grad_got = jax.jit(jax.grad(_loss(run), argnums=(0, 1)))(params, xs)
    grad_want = jax.jit(jax.grad(_loss(reference), argnums=(0, 1)))(params, xs)
    for a, b in zip(jax.tree.leaves(grad_got), jax.tree.leaves(grad_want)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=str(options))


def test_hand_written_step_only_cell_unrolls():
  """A cell that only gives ``step`` (no halves) still runs through ``unroll`` and layers."""
  def init(key, input_size):
    return {"w": jax.random.normal(key, (input_size, H)) * 0.3}

  def initialize_carry(params, input_shape):
    return jnp.zeros(tuple(input_shape[:-1]) + (H,))

  def step(params, h, x_t):
    h = jnp.tanh(x_t @ params["w"] + 0.5 * h)
    return h, 2 * h

  cell = jaxseq.Cell(init, initialize_carry, step)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (B, T, D))
  h, want = jnp.zeros((B, H)), []
  for t in range(T):
    h, y = step(params, h, xs[:, t])
    want.append(y)
  ys, h_T = jaxseq.unroll(cell, params, xs)
  np.testing.assert_allclose(ys, jnp.stack(want, 1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(h_T, h, rtol=1e-6, atol=1e-6)
  ys_layer, _ = jaxseq.bidirectional(cell).apply(
      jaxseq.bidirectional(cell).init(KEY, D), xs)
  assert ys_layer.shape == (B, T, 2 * H)


# ----------------------------------------------------------------------------- kernels


def _counting_kernel(cell, calls, wrong=False):
  """A kernel bound to ``cell.recur`` that counts its uses; ``wrong`` returns zeros, so any
  result it touched is visibly different from the scan's."""
  def run(params, carry, gxs, lengths, reverse, unroll):
    calls.append(1)
    carry_out, ys = scan_recur(cell.recur, params, carry, gxs, lengths, reverse, unroll)
    if wrong:
      ys = jax.tree.map(jnp.zeros_like, ys)
    return carry_out, ys
  return cell._replace(kernel=Kernel(cell.recur, run))


def test_kernel_runs_only_for_the_recurrence_it_implements():
  """The plug-in point: ``unroll`` runs a kernel bound to the cell's own ``recur``; a
  wrapper that changes the recurrence (recurrent dropout, gradient-flow perturbations)
  replaces ``recur`` and so falls back to the scan, with its change."""
  cell = jaxseq.lstm(H)
  params = _with_biases(cell.init(KEY, D), KEY)
  xs = jax.random.normal(KEY, (B, T, D))
  calls = []
  fast = _counting_kernel(cell, calls, wrong=True)

  ys, _ = jaxseq.unroll(fast, params, xs)             # the kernel runs (and is "wrong")
  assert calls and float(jnp.abs(ys).max()) == 0.0
  calls.clear()

  # Recurrent dropout changes the recurrence: same result as the plain cell, kernel unused.
  key = jax.random.PRNGKey(3)
  layer_fast = jaxseq.recurrent(fast, recurrent_dropout=0.5)
  layer_ref = jaxseq.recurrent(cell, recurrent_dropout=0.5)
  ys_fast, c_fast = layer_fast.apply(params, xs, key=key)
  ys_ref, c_ref = layer_ref.apply(params, xs, key=key)
  assert not calls
  np.testing.assert_allclose(ys_fast, ys_ref, rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(ys_ref - jaxseq.unroll(cell, params, xs)[0]).max()) > 1e-3

  # gradflow's perturbations change it too.
  loss = lambda ys: jnp.sum(ys[:, -1] ** 2)
  norms_fast = jaxseq.gradflow.grad_norms(fast, params, xs, loss)
  norms_ref = jaxseq.gradflow.grad_norms(cell, params, xs, loss)
  assert not calls
  np.testing.assert_allclose(norms_fast, norms_ref, rtol=1e-6)
  assert float(norms_ref.min()) > 0

  # remat runs the kernel chunk by chunk (it is the cell's own recurrence).
  assert float(jnp.abs(jaxseq.unroll(fast, params, xs, remat=True)[0]).max()) == 0.0
  assert calls


def test_correct_kernel_gives_the_scans_result():
  cell = jaxseq.gru(H)
  params = _with_biases(cell.init(KEY, D), KEY)
  xs = jax.random.normal(KEY, (B, T, D))
  calls = []
  fast = _counting_kernel(cell, calls)
  lengths = jnp.array([5, 1, 3])
  got = jaxseq.unroll(fast, params, xs, lengths=lengths, reverse=True)
  want = jaxseq.unroll(cell, params, xs, lengths=lengths, reverse=True)
  assert calls
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- carries


def test_initialize_carry_and_deprecated_initial_carry():
  cell = jaxseq.lstm(H, proj_size=2)
  params = cell.init(KEY, D)
  carry = cell.initialize_carry(params, (7, 2, D))
  assert carry.h.shape == (7, 2, 2) and carry.c.shape == (7, 2, H)
  with pytest.warns(DeprecationWarning, match="initialize_carry"):
    old = cell.initial_carry(params, (7, 2))
  assert jax.tree.map(jnp.shape, old) == jax.tree.map(jnp.shape, carry)
  conv = jaxseq.conv_gru(2, (3, 3))
  conv_params = conv.init(KEY, 1)
  assert conv.initialize_carry(conv_params, (5, 8, 9, 1)).shape == (5, 8, 9, 2)
  with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="initialize_carry"):
    conv.initial_carry(conv_params, (5,))


def test_conv_lstm_without_peepholes_runs_on_two_frame_sizes():
  cell = jaxseq.conv_lstm(3, (3, 3), peephole=False)
  params = _with_biases(cell.init(KEY, 2), KEY)
  for frame in ((8, 8), (16, 16)):
    xs = jax.random.normal(KEY, (2, 3) + frame + (2,))
    ys, carry = jaxseq.unroll(cell, params, xs)
    assert ys.shape == (2, 3) + frame + (3,) and carry.c.shape == (2,) + frame + (3,)
    # The same params step by hand on this frame size (the oracle for unroll is above).
    h = cell.initialize_carry(params, xs[:, 0].shape)
    for t in range(3):
      h, y = cell.step(params, h, xs[:, t])
      np.testing.assert_allclose(ys[:, t], y, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- layers


def test_one_layer_type():
  assert jaxseq.Layer is nn.Layer
  layers = [jaxseq.recurrent(jaxseq.lstm(H)), jaxseq.bidirectional(jaxseq.gru(H)),
            jaxseq.stack(jaxseq.lstm(H), jaxseq.gru(H)), nn.Dense(3), nn.Conv(4, 3),
            nn.serial(nn.Dense(3), nn.Relu), jaxseq.over_time(nn.Dense(2))]
  assert all(isinstance(layer, jaxseq.Layer) for layer in layers)
  assert [layer.is_sequence for layer in layers] == [True] * 3 + [False] * 4


def test_bidirectional_stack_equals_manual_composition():
  """``bidirectional(stack(...))``: the stack forward, and a stack of reversed layers
  backward (each sequence's valid part), concatenated."""
  body = jaxseq.stack(jaxseq.lstm(H), jaxseq.gru(H + 1))
  layer = jaxseq.bidirectional(body)
  params = _with_biases(layer.init(KEY, D), KEY)
  xs = jax.random.normal(KEY, (B, T, D))
  lengths = jnp.array([5, 2, 4])
  ys, carry = layer.apply(params, xs, lengths=lengths)
  ys_fw, c_fw = body.apply(params["forward"], xs, lengths=lengths)
  backward = jaxseq.stack(jaxseq.recurrent(jaxseq.lstm(H), reverse=True),
                          jaxseq.recurrent(jaxseq.gru(H + 1), reverse=True))
  ys_bw, c_bw = backward.apply(params["backward"], xs, lengths=lengths)
  np.testing.assert_allclose(ys, jnp.concatenate([ys_fw, ys_bw], -1), rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves({"forward": c_fw,
                                                            "backward": c_bw})):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # Reversing each sequence's valid part by hand and running the stack forward agrees.
  flipped = jaxseq.flip_sequences(xs, lengths, 1)
  ys_manual, _ = body.apply(params["backward"], flipped, lengths=lengths)
  np.testing.assert_allclose(ys_bw, jaxseq.flip_sequences(ys_manual, lengths, 1),
                             rtol=1e-5, atol=1e-6)


def test_flip_sequences_keeps_padding_in_place():
  xs = jnp.arange(10.0).reshape(2, 5)
  got = jaxseq.flip_sequences(xs, jnp.array([3, 5]), 1)
  np.testing.assert_array_equal(got, [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]])


def test_map_cells_rebuilds_layers_with_new_cells():
  layer = jaxseq.bidirectional(jaxseq.stack(jaxseq.lstm(H), jaxseq.gru(H)), merge="sum")
  seen = []

  def swap(cell):
    seen.append(cell.spec.name)
    return cell
  same = jaxseq.map_cells(layer, swap)
  assert seen == ["lstm", "gru", "lstm", "gru"]
  params = layer.init(KEY, D)
  xs = jax.random.normal(KEY, (B, T, D))
  np.testing.assert_array_equal(layer.apply(params, xs)[0], same.apply(params, xs)[0])
  relu = jaxseq.map_cells(jaxseq.recurrent(jaxseq.simple_rnn(H)),
                          lambda c: jaxseq.simple_rnn(H, jax.nn.relu))
  p = relu.init(KEY, D)
  assert float(relu.apply(p, xs)[0].min()) >= 0


def test_text_cnn_front_end_feeds_bidirectional_gru_with_lengths():
  """Embedding -> 1-D convolution over time -> bidirectional GRU -> Dense, one ``serial``;
  ``lengths`` reach the GRU. Equal to composing the pieces by hand."""
  vocab, T_text = 11, 7
  embed, conv = nn.Embedding(vocab, 5), nn.Conv(8, 3, padding="SAME")
  rnn = jaxseq.bidirectional(jaxseq.gru(H))
  head = nn.Dense(2)
  model = nn.serial(embed, conv, nn.Relu, rnn, head)
  params, state = model.init(KEY, (T_text,))
  assert model.output_shape((T_text,)) == (T_text, 2)
  ids = jax.random.randint(KEY, (B, T_text), 0, vocab)
  lengths = jnp.array([7, 3, 5])
  logits, _ = model.apply(params, state, ids, lengths=lengths)
  e, _ = embed.apply(params[0], state[0], ids)
  c, _ = conv.apply(params[1], state[1], e)
  hs, _ = rnn.apply(params[3], jax.nn.relu(c), lengths=lengths)
  want, _ = head.apply(params[4], state[4], hs)
  np.testing.assert_allclose(logits, want, rtol=1e-6, atol=1e-6)
  unmasked, _ = model.apply(params, state, ids)
  assert float(jnp.abs(unmasked - logits).max()) > 1e-4     # lengths did reach the GRU
  # Gradients flow through every layer.
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, state, ids, lengths=lengths)[0]))(params)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_serial_accepts_cells_and_layers_both_ways():
  """A recurrent layer (or a bare cell) between network layers, and network layers after
  a recurrent one; ``nn.serial(nn.Embedding, nn.Conv, recurrent(lstm))`` used to raise."""
  model = nn.serial(nn.Embedding(9, 4), nn.Conv(6, 3, padding="SAME"),
                    jaxseq.recurrent(jaxseq.lstm(8)), jaxseq.gru(5), nn.Dense(3))
  params, state = model.init(KEY, (None, 6))          # a leading batch axis of None is fine
  y, _ = model.apply(params, state, jnp.zeros((2, 6), jnp.int32))
  assert y.shape == (2, 6, 3)


def test_dropout_means_the_same_in_serial():
  """In a ``serial``, recurrent dropout is on with ``train=True`` and a key, like
  ``nn.Dropout``; without ``train`` the key changes nothing."""
  model = nn.serial(jaxseq.recurrent(jaxseq.lstm(H), dropout=0.5, recurrent_dropout=0.5),
                    nn.Dropout(0.5), nn.Dense(2))
  params, state = model.init(KEY, (T, D))
  xs = jax.random.normal(KEY, (B, T, D))
  key = jax.random.PRNGKey(1)
  evaluated = model.apply(params, state, xs)[0]
  np.testing.assert_array_equal(model.apply(params, state, xs, key=key)[0], evaluated)
  trained = model.apply(params, state, xs, train=True, key=key)[0]
  assert float(jnp.abs(trained - evaluated).max()) > 1e-3


def _digits_frames():
  sklearn_datasets = pytest.importorskip("sklearn.datasets")
  digits = sklearn_datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)      # (N, 8, 8)
  # 8 frames (rows) of 8 pixels, one channel: (N, T=8, 8, 1).
  return images[..., None], digits.target.astype(np.int32)


def test_crnn_learns_digits_read_as_frames():
  """CRNN: a per-frame 1-D conv stack (``over_time``) -> LSTM -> Dense readout of the
  last step, one ``serial``, trained with optax on scikit-learn's digits read as 8 frames of
  8 pixels; held-out accuracy well above chance (10%)."""
  frames, labels = _digits_frames()
  rng = np.random.default_rng(0)
  order = rng.permutation(len(labels))
  train_idx, test_idx = order[:1400], order[1400:]
  frame_cnn = nn.serial(nn.Conv(8, 3, padding="SAME"), nn.Relu, nn.MaxPool(2), nn.Flatten)
  model = nn.serial(jaxseq.over_time(frame_cnn), jaxseq.lstm(32), nn.Dense(10))
  params, state = model.init(KEY, (8, 8, 1))
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  def loss_fn(params, x, y):
    logits, _ = model.apply(params, state, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, -1], y).mean()

  @jax.jit
  def update(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  for step in range(250):
    batch = rng.choice(train_idx, 64)
    params, opt_state, loss = update(params, opt_state, frames[batch], labels[batch])
  logits, _ = jax.jit(lambda p, x: model.apply(p, state, x))(params, frames[test_idx])
  accuracy = float(jnp.mean(jnp.argmax(logits[:, -1], -1) == labels[test_idx]))
  assert accuracy > 0.85, accuracy
