"""Encoder–decoder models: ``seq2seq``, Luong and Bahdanau attention, bridges, and the
reversal example.

Oracles: Luong et al.'s (2015) attention equations written out in NumPy; Bahdanau et al.'s
(2015) decoder (attention from s_{t-1}, context fed into a GRU or LSTM step, readout of
[h_t; c_t]) as a float64 NumPy loop; the encoder run on its own (``layer.apply``) for the
identity and dense bridges; a Python loop of the decoder's ``step`` against teacher forcing
and greedy generation; the reversal task learnt to >= 99% exact match.
"""
import importlib.util
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax

import jaxseq
from jaxseq.seq2seq import attend

KEY = jax.random.PRNGKey(0)
SRC_V, TGT_V, B, S, T = 6, 8, 3, 5, 4
SOURCE_LENGTHS = np.array([5, 2, 0], np.int32)
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def ids(shape, vocab, seed):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# ----------------------------------------------------------------------------- attention


def numpy_attention(kind, params, h, memory, mask):
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  h, memory = np.asarray(h, np.float64), np.asarray(memory, np.float64)
  out = np.zeros(h.shape[:-1] + (p["w_c"].shape[1],))
  weights = np.zeros(h.shape[:-1] + (memory.shape[-2],))
  for b in range(h.shape[0]):
    for t in range(h.shape[1]):
      scores = []
      for s in range(memory.shape[1]):
        q, k = h[b, t], memory[b, s]
        if kind == "dot":
          scores.append(q @ k)
        elif kind == "general":
          scores.append(q @ p["w_a"] @ k)
        else:
          scores.append(p["v"] @ np.tanh(q @ p["w_q"] + k @ p["w_k"]))
      scores = np.array(scores)
      valid = mask[b]
      a = np.zeros_like(scores)
      if valid.any():
        e = np.exp(scores[valid] - scores[valid].max())
        a[valid] = e / e.sum()
      context = a @ memory[b]
      weights[b, t] = a
      out[b, t] = np.tanh(np.concatenate([context, q]) @ p["w_c"])
  return out, weights


@pytest.mark.parametrize("kind", ["dot", "general", "concat"])
def test_luong_attention_equals_the_equations(kind):
  from jaxseq.seq2seq import _attention_params
  rng = np.random.default_rng(0)
  h_size, m_size = 4, (4 if kind == "dot" else 3)
  params = _attention_params(kind, KEY, h_size, m_size, jnp.float32)
  h = rng.normal(size=(B, T, h_size)).astype(np.float32)
  memory = rng.normal(size=(B, S, m_size)).astype(np.float32)
  mask = np.arange(S) < SOURCE_LENGTHS[:, None]
  out, weights = attend(kind, params, h, memory, mask)
  expected_out, expected_weights = numpy_attention(kind, params, h, memory, mask)
  np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(weights)[2] == 0)       # a source with no valid step: context 0


# ----------------------------------------------------------------------------- models


CONFIGS = {
    "plain": dict(encoder=lambda: jaxseq.lstm(6), decoder=lambda: jaxseq.lstm(6),
                  embed_size=4, bridge="identity", attention=None),
    "bi_dense_general": dict(encoder=lambda: jaxseq.bidirectional(jaxseq.gru(5)),
                             decoder=lambda: jaxseq.lstm(6), embed_size=4, bridge="auto",
                             attention="general"),
    "stacks_dot": dict(encoder=lambda: jaxseq.stack(jaxseq.lstm(5), jaxseq.gru(4)),
                       decoder=lambda: jaxseq.stack(jaxseq.lstm(5), jaxseq.gru(4)),
                       embed_size=3, bridge="auto", attention="dot"),
    "one_hot_zeros_concat": dict(encoder=lambda: jaxseq.gru(5), decoder=lambda: [
        jaxseq.gru(4), jaxseq.simple_rnn(3)], embed_size=None, bridge="zeros",
        attention="concat"),
    "bi_dense_bahdanau": dict(encoder=lambda: jaxseq.bidirectional(jaxseq.gru(5)),
                              decoder=lambda: jaxseq.stack(jaxseq.gru(4), jaxseq.lstm(6)),
                              embed_size=4, bridge="auto", attention="bahdanau"),
    "one_hot_zeros_bahdanau": dict(encoder=lambda: jaxseq.lstm(5),
                                   decoder=lambda: jaxseq.gru(4), embed_size=None,
                                   bridge="zeros", attention="bahdanau"),
}


def build(name):
  config = dict(CONFIGS[name])
  encoder, decoder = config.pop("encoder")(), config.pop("decoder")()
  model = jaxseq.seq2seq(encoder, decoder, source_vocab=SRC_V, target_vocab=TGT_V, **config)
  return model, model.init(KEY)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_teacher_forcing_equals_stepping_the_decoder(name):
  model, params = build(name)
  source, target_in = ids((B, S), SRC_V, 1), ids((B, T), TGT_V, 2)
  logits = model.apply(params, source, target_in, source_lengths=SOURCE_LENGTHS)
  assert logits.shape == (B, T, TGT_V)
  carry = model.encode(params, source, SOURCE_LENGTHS)
  step = jax.jit(model.decoder.step)      # one compiled step, called T times
  for t in range(T):
    carry, logits_t = step(params, carry, target_in[:, t])
    np.testing.assert_allclose(logits_t, logits[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_generate_is_a_loop_of_decoder_steps_and_beam_1_equals_it(name):
  model, params = build(name)
  source = ids((B, S), SRC_V, 3)
  out = model.generate(params, source, 6, start=TGT_V - 1, source_lengths=SOURCE_LENGTHS)
  carry = model.encode(params, source, SOURCE_LENGTHS)
  token = jnp.full((B,), TGT_V - 1)
  step = jax.jit(model.decoder.step)
  for t in range(6):
    carry, logits = step(params, carry, token)
    token = jnp.argmax(logits, -1)
    np.testing.assert_array_equal(out.tokens[:, t], token)
  beams = model.beam_search(params, source, 6, start=TGT_V - 1, beam_size=1,
                            source_lengths=SOURCE_LENGTHS)
  np.testing.assert_array_equal(beams.tokens[:, 0], out.tokens)
  np.testing.assert_allclose(beams.log_prob[:, 0], out.log_prob, rtol=1e-5)
  wide = model.beam_search(params, source, 6, start=TGT_V - 1, beam_size=3,
                           source_lengths=SOURCE_LENGTHS)
  assert np.all(np.asarray(wide.log_prob[:, 0]) >= np.asarray(out.log_prob) - 1e-5)


def test_identity_bridge_hands_over_the_encoders_last_valid_carry():
  model, params = build("stacks_dot")
  source = ids((B, S), SRC_V, 4)
  carry = model.encode(params, source, SOURCE_LENGTHS)
  encoder = jaxseq.stack(jaxseq.lstm(5), jaxseq.gru(4))
  xs = params["source_embed"]["embedding"][source]
  memory, enc_carry = encoder.apply(params["encoder"], xs, lengths=SOURCE_LENGTHS)
  for a, e in zip(jax.tree.leaves(carry["core"]), jax.tree.leaves(enc_carry)):
    np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(carry["memory"], memory, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(carry["mask"], np.arange(S) < SOURCE_LENGTHS[:, None])
  assert "bridge" not in params


def test_dense_bridge_is_tanh_of_an_affine_map_of_the_encoder_carry():
  model, params = build("bi_dense_general")
  source = ids((B, S), SRC_V, 5)
  carry = model.encode(params, source, SOURCE_LENGTHS)
  encoder = jaxseq.bidirectional(jaxseq.gru(5))
  xs = params["source_embed"]["embedding"][source]
  _, enc_carry = encoder.apply(params["encoder"], xs, lengths=SOURCE_LENGTHS)
  features = np.concatenate([np.asarray(leaf) for leaf in jax.tree.leaves(enc_carry)], -1)
  assert features.shape == (B, 10) and len(params["bridge"]) == 2     # LSTM (h, c)
  for leaf, p in zip(jax.tree.leaves(carry["core"]), params["bridge"]):
    expected = np.tanh(features @ np.asarray(p["kernel"]) + np.asarray(p["bias"]))
    np.testing.assert_allclose(leaf, expected, rtol=1e-5, atol=1e-6)


def test_source_padding_is_never_read():
  model, params = build("bi_dense_general")
  source, target_in = ids((B, S), SRC_V, 6), ids((B, T), TGT_V, 7)
  other = jnp.where(jnp.arange(S) < SOURCE_LENGTHS[:, None], source, (source + 1) % SRC_V)
  a = model.apply(params, source, target_in, source_lengths=SOURCE_LENGTHS)
  b = model.apply(params, other, target_in, source_lengths=SOURCE_LENGTHS)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_gradients_reach_every_parameter():
  model, params = build("bi_dense_general")
  source, target = ids((B, S), SRC_V, 8), ids((B, T), TGT_V, 9)

  def loss(params):
    logits = model.apply(params, source, target, source_lengths=np.array([5, 3, 1]))
    return jaxseq.losses.softmax_cross_entropy(logits, target)

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_bad_configurations_are_rejected_with_the_argument_named():
  with pytest.raises(ValueError, match="attention:"):
    jaxseq.seq2seq(jaxseq.gru(5), jaxseq.gru(4), source_vocab=3, target_vocab=3,
                   attention="dot").init(KEY)
  with pytest.raises(ValueError, match="bridge:"):
    jaxseq.seq2seq(jaxseq.gru(5), jaxseq.gru(4), source_vocab=3, target_vocab=3,
                   bridge="identity").init(KEY)
  with pytest.raises(ValueError, match="bridge:"):
    jaxseq.seq2seq(jaxseq.gru(5), jaxseq.gru(4), source_vocab=3, target_vocab=3,
                   bridge="linear")
  with pytest.raises(ValueError, match="attention:"):
    jaxseq.seq2seq(jaxseq.gru(5), jaxseq.gru(4), source_vocab=3, target_vocab=3,
                   attention="additive")
  with pytest.raises(ValueError, match="^decoder: expected a core without dropout"):
    jaxseq.seq2seq(jaxseq.gru(5), jaxseq.recurrent(jaxseq.gru(4), recurrent_dropout=0.1),
                   source_vocab=3, target_vocab=3, attention="bahdanau")
  with pytest.raises(ValueError, match="core:"):
    jaxseq.seq2seq(jaxseq.gru(5), jaxseq.bidirectional(jaxseq.gru(4)), source_vocab=3,
                   target_vocab=3)
  model, params = build("plain")
  with pytest.raises(ValueError, match="source:"):
    model.encode(params, jnp.array([[0, SRC_V]]))
  with pytest.raises(ValueError, match="carry:"):
    jaxseq.generate(model.decoder, params, jnp.array([0]), 3)


# ----------------------------------------------------------------------------- Bahdanau


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def numpy_cell_step(kind, p, state, x):
  """jaxseq's GRU (reset-after) and LSTM equations, written out."""
  if kind == "gru":
    h = state
    r_x, z_x, n_x = np.split(x @ p["w_ih"] + p["b"], 3)
    r_h, z_h, n_h = np.split(h @ p["w_hh"], 3)
    r, z = sigmoid(r_x + r_h), sigmoid(z_x + z_h)
    n = np.tanh(n_x + r * (n_h + p["b_hn"]))
    h = (1 - z) * n + z * h
    return h, h
  h, c = state
  i, f, g, o = np.split(x @ p["w_ih"] + p["b"] + h @ p["w_hh"], 4)
  c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  h = sigmoid(o) * np.tanh(c)
  return (h, c), h


def numpy_bahdanau_decoder(kind, params, s0, memory, mask, target_in):
  """Bahdanau et al. (2015), one example and one step at a time: e_j = v . tanh(s W + m_j U),
  a = softmax over the valid j, c = sum_j a_j m_j, (s, h) = cell(s, [E y; c]),
  logits = [h; c] W_s + b_s."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  att, cell, table = p["attention"], p["decoder"], p["target_embed"]["embedding"]
  kernel, bias = p["readout"]["kernel"], p["readout"]["bias"]
  logits = np.zeros(target_in.shape + (kernel.shape[1],))
  for b in range(target_in.shape[0]):
    state = jax.tree.map(lambda a: np.asarray(a[b], np.float64), s0)
    for t in range(target_in.shape[1]):
      s_prev = state if kind == "gru" else state[0]
      scores = np.array([att["v"] @ np.tanh(s_prev @ att["w_q"] + m @ att["w_k"])
                         for m in memory[b]])
      weights = np.zeros_like(scores)
      if mask[b].any():
        e = np.exp(scores[mask[b]] - scores[mask[b]].max())
        weights[mask[b]] = e / e.sum()
      context = weights @ memory[b]
      x = np.concatenate([table[target_in[b, t]], context])
      state, h = numpy_cell_step(kind, cell, state, x)
      logits[b, t] = np.concatenate([h, context]) @ kernel + bias
  return logits


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bahdanau_teacher_forcing_equals_the_equations(kind, x64):
  cell = jaxseq.gru(4) if kind == "gru" else jaxseq.lstm(4)
  model = jaxseq.seq2seq(jaxseq.bidirectional(jaxseq.gru(3)), cell, source_vocab=SRC_V,
                         target_vocab=TGT_V, embed_size=3, attention="bahdanau")
  params = model.init(KEY)
  rng = np.random.default_rng(1)
  # float64, every entry non-zero (biases included: the readout's start at 0).
  params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)
                                              + 0.3 * rng.normal(size=a.shape)), params)
  assert params["readout"]["bias"].dtype == jnp.float64
  assert np.all(np.abs(np.asarray(params["decoder"]["b"])) > 0)
  source, target_in = ids((B, S), SRC_V, 10), ids((B, T), TGT_V, 11)
  logits = model.apply(params, source, target_in, source_lengths=SOURCE_LENGTHS)
  assert logits.dtype == jnp.float64
  carry = model.encode(params, source, SOURCE_LENGTHS)
  mask = np.arange(S) < SOURCE_LENGTHS[:, None]
  expected = numpy_bahdanau_decoder(kind, params, carry["core"],
                                    np.asarray(carry["memory"], np.float64), mask,
                                    np.asarray(target_in))
  np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)
  # U h_j is computed once, in encode.
  np.testing.assert_allclose(carry["keys"], carry["memory"] @ params["attention"]["w_k"],
                             rtol=1e-12)


def test_bahdanau_target_lengths_keep_the_carry_after_the_last_valid_step():
  model, params = build("bi_dense_bahdanau")
  source, target_in = ids((B, S), SRC_V, 12), ids((B, T), TGT_V, 13)
  carry = model.encode(params, source, SOURCE_LENGTHS)
  lengths = np.array([4, 1, 2], np.int32)
  logits, last = model.decoder.apply(params, target_in, lengths=lengths, carry=carry)
  full, _ = model.decoder.apply(params, target_in, carry=carry)
  valid = np.arange(T) < lengths[:, None]
  np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(full)[valid], rtol=1e-6)
  for b, n in enumerate(lengths):
    _, want = model.decoder.apply(params, target_in[b:b + 1, :n],
                                  carry=jax.tree.map(lambda a: a[b:b + 1], carry))
    for got_leaf, want_leaf in zip(jax.tree.leaves(last["core"]),
                                   jax.tree.leaves(want["core"])):
      np.testing.assert_allclose(got_leaf[b], want_leaf[0], rtol=1e-5, atol=1e-6)


def test_bahdanau_attention_learns_to_reverse_digit_strings():
  """With bridge='zeros' the decoder starts from nothing: only the attention's contexts
  carry the source. GRU 16, 300 Adam steps of 64 strings of 5 digits."""
  length, start, batch = 5, 10, 64
  model = jaxseq.seq2seq(jaxseq.gru(16), jaxseq.gru(16), source_vocab=10, target_vocab=11,
                         embed_size=8, bridge="zeros", attention="bahdanau")
  params = model.init(KEY)
  optimizer = optax.adam(0.02)

  def loss_fn(params, source):
    target = source[:, ::-1]
    target_in = jnp.concatenate([jnp.full((batch, 1), start), target[:, :-1]], axis=1)
    return jaxseq.losses.softmax_cross_entropy(model.apply(params, source, target_in),
                                               target)

  @jax.jit
  def train_step(params, opt_state, key):
    source = jax.random.randint(key, (batch, length), 0, 10)
    grads = jax.grad(loss_fn)(params, source)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for key in jax.random.split(jax.random.PRNGKey(1), 300):
    params, opt_state = train_step(params, opt_state, key)
  source = jax.random.randint(jax.random.PRNGKey(2), (500, length), 0, 10)
  tokens = jax.jit(lambda p, s: model.generate(p, s, length, start=start).tokens)(params,
                                                                                 source)
  exact = float(jnp.mean(jnp.all(tokens == source[:, ::-1], axis=-1)))
  assert exact >= 0.99, exact


# ----------------------------------------------------------------------------- the example


def test_reversal_example_reaches_99_percent_exact_match():
  # Length-5 digit strings, greedy decoding, 2,000 strings held out of training.
  begin = time.perf_counter()
  result = load_example("seq2seq_reverse").main(["--steps", "300"])
  assert result["accuracy"] >= 0.99, result
  print(f"reversal: exact match {result['accuracy']:.4f} in "
        f"{time.perf_counter() - begin:.1f} s")


def test_reversal_example_runs_on_tiny_settings(capsys):
  result = load_example("seq2seq_reverse").main(
      ["--steps", "2", "--hidden", "8", "--embed", "4", "--test-size", "20",
       "--attention", "general", "--length", "3"])
  assert 0.0 <= result["accuracy"] <= 1.0
  assert "exact-match accuracy" in capsys.readouterr().out
