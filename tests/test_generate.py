"""Decoding: ``decoder``, ``generate``, ``beam_search``, and the char-RNN example.

Oracles: a Python loop of ``cell.step`` calls with the readout and ``argmax`` written out in
NumPy; exhaustive enumeration of every token sequence of a hand-made bigram model (exact
log-probabilities in NumPy) for beam search; empirical frequencies against
``softmax(logits / T)`` for sampling.
"""
import importlib.util
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq
from jaxseq.decoding import as_cell, decoder, sample_logits

V = 7
KEY = jax.random.PRNGKey(0)
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ----------------------------------------------------------------------------- oracle loops


def step_layers(cells, params, carries, x):
  """One step through stacked cells, written out (the stack's own step is not used)."""
  out = []
  for cell, p, c in zip(cells, params, carries):
    c, x = cell.step(p, c, x)
    out.append(c)
  return out, x


def greedy_loop(cells, params, start, num_steps, embed):
  """Greedy decoding as a Python loop of step calls, a NumPy readout and argmax."""
  table = None if not embed else np.asarray(params["embed"]["embedding"])
  kernel = np.asarray(params["readout"]["kernel"])
  bias = np.asarray(params["readout"]["bias"])
  core = params["core"] if isinstance(params["core"], list) else [params["core"]]
  tokens, log_prob = np.asarray(start), np.zeros(np.shape(start))
  carries, shape = [], np.shape(start) + ((table.shape[1],) if embed else (V,))
  for cell, p in zip(cells, core):
    carries.append(cell.initialize_carry(p, shape))
    shape = np.shape(start) + (cell.step(p, carries[-1], jnp.zeros(shape))[1].shape[-1],)
  out = []
  for _ in range(num_steps):
    x = table[tokens] if embed else np.eye(V, dtype=np.float32)[tokens]
    carries, h = step_layers(cells, core, carries, jnp.asarray(x))
    logits = np.asarray(h) @ kernel + bias
    tokens = np.argmax(logits, axis=-1)
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    log_prob = log_prob + np.take_along_axis(log_softmax, tokens[..., None], -1)[..., 0]
    out.append(tokens)
  return np.stack(out, -1), log_prob, carries


CORES = {
    "lstm": lambda: [jaxseq.lstm(6)],
    "gru": lambda: [jaxseq.gru(5)],
    "simple_rnn": lambda: [jaxseq.simple_rnn(4)],
    "mgu": lambda: [jaxseq.mgu(5)],
    "lstm_proj": lambda: [jaxseq.lstm(6, proj_size=3)],
    "stack": lambda: [jaxseq.lstm(6), jaxseq.gru(4), jaxseq.simple_rnn(5)],
}


@pytest.mark.parametrize("name", sorted(CORES))
@pytest.mark.parametrize("embed", [None, 3])
def test_greedy_generate_equals_python_loop_of_steps(name, embed):
  cells = CORES[name]()
  core = cells[0] if len(cells) == 1 else jaxseq.stack(*cells)
  dec = decoder(core, V, embed=embed)
  params = dec.init(KEY)
  start = jnp.array([0, 3, 6, 2], jnp.int32)
  out = jaxseq.generate(dec, params, start, 9)
  tokens, log_prob, carries = greedy_loop(cells, params, np.asarray(start), 9, embed)
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_array_equal(out.lengths, 9)
  np.testing.assert_allclose(out.log_prob, log_prob, rtol=1e-5, atol=1e-5)
  expected_carry = carries if len(cells) > 1 else carries[0]
  for a, e in zip(jax.tree.leaves(out.carry), jax.tree.leaves(expected_carry)):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_list_of_cells_is_their_stack():
  cells = [jaxseq.gru(5), jaxseq.lstm(4)]
  as_list, as_stack = decoder(cells, V, embed=3), decoder(jaxseq.stack(*cells), V, embed=3)
  params = as_list.init(KEY)
  a = jaxseq.generate(as_list, params, jnp.arange(3), 6)
  b = jaxseq.generate(as_stack, params, jnp.arange(3), 6)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.tokens, greedy_loop(cells, params, np.arange(3), 6, 3)[0])


@pytest.mark.parametrize("residual", [False, True])
def test_teacher_forcing_apply_equals_steps(residual):
  core = jaxseq.stack(jaxseq.lstm(5), jaxseq.gru(5), residual=residual)
  dec = decoder(core, V, embed=4)
  params = dec.init(KEY)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (3, 6)), jnp.int32)
  logits, carry = dec.apply(params, tokens)
  step_carry = dec.initialize_carry(params, (3,))
  for t in range(6):
    step_carry, logits_t = dec.step(params, step_carry, tokens[:, t])
    np.testing.assert_allclose(logits_t, logits[:, t], rtol=1e-5, atol=1e-5)
  for a, e in zip(jax.tree.leaves(step_carry), jax.tree.leaves(carry)):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_as_cell_of_a_stack_steps_like_the_layer():
  layer = jaxseq.stack(jaxseq.lstm(4), jaxseq.lstm(3, proj_size=2), residual=False)
  params = layer.init(KEY, 3)
  xs = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 3)), jnp.float32)
  ys, carry = layer.apply(params, xs)
  cell = as_cell(layer)
  c = cell.initialize_carry(params, (2, 3))
  for t in range(5):
    c, y = cell.step(params, c, xs[:, t])
    np.testing.assert_allclose(y, ys[:, t], rtol=1e-5, atol=1e-6)


def test_one_sequence_and_several_batch_axes():
  dec = decoder(jaxseq.gru(5), V, embed=3)
  params = dec.init(KEY)
  start = jnp.array([[0, 1, 2], [3, 4, 5]])
  many = jaxseq.generate(dec, params, start, 4)
  assert many.tokens.shape == (2, 3, 4) and many.lengths.shape == (2, 3)
  one = jaxseq.generate(dec, params, 4, 4)
  assert one.tokens.shape == (4,) and one.lengths.shape == ()
  np.testing.assert_array_equal(one.tokens, many.tokens[1, 1])
  beams = jaxseq.beam_search(dec, params, start, 4, beam_size=2)
  assert beams.tokens.shape == (2, 3, 2, 4) and beams.score.shape == (2, 3, 2)


def test_generate_under_jit_and_primed_carry():
  dec = decoder(jaxseq.lstm(6), V, embed=3)
  params = dec.init(KEY)
  prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
  _, carry = dec.apply(params, prompt[:, :-1])        # prime on all but the last token
  run = jax.jit(lambda p, c, k: jaxseq.generate(dec, p, prompt[:, -1], 5, carry=c, key=k,
                                                temperature=0.7, top_k=3))
  a, b = run(params, carry, KEY), jaxseq.generate(dec, params, prompt[:, -1], 5, carry=carry,
                                                  key=KEY, temperature=0.7, top_k=3)
  np.testing.assert_array_equal(a.tokens, b.tokens)


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_given_a_key_and_differs_across_keys():
  dec = decoder(jaxseq.lstm(8), V, embed=4)
  params = dec.init(KEY)
  start = jnp.zeros((8,), jnp.int32)
  sample = jax.jit(lambda key: jaxseq.generate(dec, params, start, 20, key=key,
                                               temperature=2.0))
  a, b, c = sample(jax.random.PRNGKey(1)), sample(jax.random.PRNGKey(1)), sample(
      jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.log_prob, b.log_prob)
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()
  typed = sample(jax.random.key(1))           # new-style typed keys work too
  assert typed.tokens.shape == (8, 20)


def test_top_k_1_equals_greedy_whatever_the_key_and_temperature():
  dec = decoder(jaxseq.gru(6), V, embed=3)
  params = dec.init(KEY)
  start = jnp.arange(V)
  greedy = jaxseq.generate(dec, params, start, 10)
  for key in jax.random.split(KEY, 3):
    top1 = jaxseq.generate(dec, params, start, 10, key=key, top_k=1, temperature=5.0)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    np.testing.assert_allclose(top1.log_prob, greedy.log_prob, rtol=1e-6)


def test_sampled_frequencies_follow_tempered_top_k_softmax():
  logits = jnp.array([2.0, 1.0, 0.5, 0.0, -1.0])
  n = 40000
  for temperature, top_k in [(1.0, None), (0.5, None), (2.0, 3)]:
    draws = sample_logits(jnp.broadcast_to(logits, (n, 5)), KEY, temperature=temperature,
                          top_k=top_k)
    freq = np.bincount(np.asarray(draws), minlength=5) / n
    z = np.asarray(logits) / temperature
    if top_k is not None:
      z = np.where(np.arange(5) < top_k, z, -np.inf)      # logits are sorted
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(freq, expected, atol=0.01)
    if top_k is not None:
      assert freq[top_k:].sum() == 0


# ----------------------------------------------------------------------------- a bigram model


def bigram_decoder(probabilities):
  """A hand-made decoder whose next-token distribution is ``probabilities[previous]``: the
  cell passes its one-hot input through and the readout's kernel is ``log P``."""
  vocab = probabilities.shape[0]
  passthrough = jaxseq.Cell(init=lambda key, input_size: {},
                            initialize_carry=lambda params, shape: jnp.zeros(shape),
                            step=lambda params, carry, x: (x, x))
  dec = decoder(passthrough, vocab)
  params = dec.init(KEY)
  params["readout"] = {"kernel": jnp.log(jnp.asarray(probabilities, jnp.float32)),
                       "bias": jnp.zeros((vocab,))}
  return dec, params


def exhaustive(probabilities, start, num_steps, stop=None, pad=0, alpha=0.0):
  """Every distinct output of ``num_steps`` tokens (padding after a stop token) with its
  exact log-probability and length, best score first."""
  logp = np.log(probabilities)
  found = {}
  for seq in itertools.product(range(len(logp)), repeat=num_steps):
    total, prev, length, out = 0.0, start, 0, []
    for token in seq:
      if length and out[-1] == stop:
        out.append(pad)
        continue
      total += logp[prev, token]
      prev, length = token, length + 1
      out.append(token)
    found[tuple(out)] = (total, length)
  ranked = sorted(found.items(), key=lambda kv: -kv[1][0] / kv[1][1] ** alpha)
  return ranked


def make_probabilities(seed, vocab):
  weights = np.random.default_rng(seed).gamma(0.6, size=(vocab, vocab)) + 1e-3
  return weights / weights.sum(-1, keepdims=True)


def test_beam_search_finds_the_best_sequence_where_greedy_does_not():
  # 0: start; from it A (1) is likelier than B (2), but every continuation of A is poor
  # while B is nearly always followed by C (3): greedy takes A, the best sequence is B C.
  p = np.full((6, 6), 1e-4)
  p[0, 1], p[0, 2] = 0.6, 0.4
  p[1, 3:6] = [0.35, 0.35, 0.3]
  p[2, 3], p[2, 4] = 0.9, 0.1
  p[3:6, 0] = 1.0
  p /= p.sum(-1, keepdims=True)
  dec, params = bigram_decoder(p)
  start = jnp.array([0])
  greedy = jaxseq.generate(dec, params, start, 2)
  beams = jaxseq.beam_search(dec, params, start, 2, beam_size=2)
  best, (best_logp, _) = exhaustive(p, 0, 2)[0]
  assert best == (2, 3)
  assert tuple(np.asarray(greedy.tokens[0])) == (1, 3)
  assert greedy.log_prob[0] < best_logp - 0.5
  assert tuple(np.asarray(beams.tokens[0, 0])) == best
  np.testing.assert_allclose(beams.log_prob[0, 0], best_logp, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("stop", [None, 0])
def test_wide_beam_is_exhaustive_search(alpha, stop):
  # With beam_size >= V ** (num_steps - 1) no prefix is ever pruned: the beams are the
  # exact top-k of every distinct output, scores included.
  vocab, num_steps = 3, 3
  p = make_probabilities(3, vocab)
  dec, params = bigram_decoder(p)
  k = vocab ** (num_steps - 1)
  beams = jaxseq.beam_search(dec, params, jnp.array([1, 2]), num_steps, beam_size=k,
                             stop_tokens=stop, length_penalty=alpha)
  for b, start in enumerate([1, 2]):
    ranked = exhaustive(p, start, num_steps, stop=stop, alpha=alpha)[:k]
    np.testing.assert_array_equal(beams.tokens[b], [seq for seq, _ in ranked])
    np.testing.assert_allclose(beams.log_prob[b], [lp for _, (lp, _) in ranked], rtol=1e-5)
    np.testing.assert_array_equal(beams.lengths[b], [n for _, (_, n) in ranked])
    np.testing.assert_allclose(beams.score[b], beams.log_prob[b] / beams.lengths[b] ** alpha,
                               rtol=1e-6)


def test_length_penalty_prefers_the_longer_likelier_per_token_hypothesis():
  # From start: stop (0) with 0.5, else A (1); A repeats itself with 0.9.
  p = np.array([[0.5, 0.5, 1e-6], [0.05, 0.9, 0.05], [0.5, 0.25, 0.25]])
  p /= p.sum(-1, keepdims=True)
  dec, params = bigram_decoder(p)
  plain = jaxseq.beam_search(dec, params, jnp.array([0]), 3, beam_size=3, stop_tokens=0)
  normalised = jaxseq.beam_search(dec, params, jnp.array([0]), 3, beam_size=3,
                                  stop_tokens=0, length_penalty=1.0)
  assert tuple(np.asarray(plain.tokens[0, 0])) == (0, 0, 0) and plain.lengths[0, 0] == 1
  assert tuple(np.asarray(normalised.tokens[0, 0])) == (1, 1, 1)
  assert exhaustive(p, 0, 3, stop=0, alpha=1.0)[0][0] == (1, 1, 1)


@pytest.mark.parametrize("alpha, core", [
    (0.0, lambda: jaxseq.lstm(8)),
    (0.6, lambda: jaxseq.stack(jaxseq.gru(6), jaxseq.lstm(5)))], ids=["lstm", "stack"])
def test_beam_width_1_equals_greedy(alpha, core):
  dec = decoder(core(), V, embed=4)
  params = dec.init(KEY)
  start = jnp.arange(V)
  for stop in (None, [2, 5]):
    greedy = jaxseq.generate(dec, params, start, 12, stop_tokens=stop, pad_token=1)
    beam = jaxseq.beam_search(dec, params, start, 12, beam_size=1, stop_tokens=stop,
                              pad_token=1, length_penalty=alpha)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
    np.testing.assert_allclose(beam.log_prob[:, 0], greedy.log_prob, rtol=1e-5)


def test_stop_tokens_lengths_padding_and_frozen_carry():
  # A deterministic chain 1 -> 2 -> 3 -> 4 -> 5 -> 6 -> 1 ...; 4 stops.
  vocab = 7
  p = np.full((vocab, vocab), 1e-3)
  for token in range(vocab):
    p[token, token % 6 + 1] = 1.0
  p /= p.sum(-1, keepdims=True)
  dec, params = bigram_decoder(p)
  out = jaxseq.generate(dec, params, jnp.array([1, 3, 4, 5]), 6, stop_tokens=4, pad_token=0)
  np.testing.assert_array_equal(out.tokens, [[2, 3, 4, 0, 0, 0],
                                             [4, 0, 0, 0, 0, 0],
                                             [5, 6, 1, 2, 3, 4],
                                             [6, 1, 2, 3, 4, 0]])
  np.testing.assert_array_equal(out.lengths, [3, 1, 6, 5])
  # The carry is the one after the step that emitted the stop token: the one-hot of the
  # token read then (the passthrough cell's carry is its input).
  np.testing.assert_array_equal(np.argmax(out.carry, -1), [3, 3, 3, 3])
  expected = []
  for start, row, length in zip([1, 3, 4, 5], np.asarray(out.tokens), [3, 1, 6, 5]):
    path = [start] + list(row[:length])
    expected.append(sum(np.log(p[a, b]) for a, b in zip(path, path[1:])))
  np.testing.assert_allclose(out.log_prob, expected, rtol=1e-4)
  several = jaxseq.generate(dec, params, jnp.array([1]), 6, stop_tokens=[3, 4])
  np.testing.assert_array_equal(several.lengths, [2])
  none = jaxseq.generate(dec, params, jnp.array([1]), 6)
  np.testing.assert_array_equal(none.lengths, [6])


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected_with_the_argument_named():
  dec = decoder(jaxseq.gru(4), V, embed=3)
  params = dec.init(KEY)
  start = jnp.array([1, 2])
  with pytest.raises(ValueError, match="core:"):
    decoder(jaxseq.bidirectional(jaxseq.gru(4)), V)
  with pytest.raises(ValueError, match="core:"):
    decoder(jaxseq.recurrent(jaxseq.gru(4), reverse=True), V)
  with pytest.raises(TypeError, match="core:"):
    decoder(jaxseq.nn.Dense(3), V)
  with pytest.raises(TypeError, match="readout:"):
    decoder(jaxseq.gru(4), V, readout=jaxseq.recurrent(jaxseq.gru(V)))
  with pytest.raises(ValueError, match="readout:"):
    decoder(jaxseq.gru(4), V, readout=jaxseq.nn.Dense(V + 1)).init(KEY)
  with pytest.raises(ValueError, match="start:"):
    jaxseq.generate(dec, params, jnp.array([1, V]), 3)
  with pytest.raises(TypeError, match="start:"):
    jaxseq.generate(dec, params, jnp.array([1.0]), 3)
  with pytest.raises(ValueError, match="temperature:"):
    jaxseq.generate(dec, params, start, 3, key=KEY, temperature=0.0)
  with pytest.raises(ValueError, match="top_k:"):
    jaxseq.generate(dec, params, start, 3, key=KEY, top_k=0)
  with pytest.raises(ValueError, match="num_steps:"):
    jaxseq.generate(dec, params, start, 0)
  with pytest.raises(ValueError, match="stop_tokens:"):
    jaxseq.generate(dec, params, start, 3, stop_tokens=[1, V])
  with pytest.raises(ValueError, match="pad_token:"):
    jaxseq.generate(dec, params, start, 3, pad_token=-1)
  with pytest.raises(TypeError, match="key:"):
    jaxseq.generate(dec, params, start, 3, key=0)
  with pytest.raises(ValueError, match="beam_size:"):
    jaxseq.beam_search(dec, params, start, 3, beam_size=0)
  with pytest.raises(ValueError, match="length_penalty:"):
    jaxseq.beam_search(dec, params, start, 3, beam_size=2, length_penalty=-1.0)
  with pytest.raises(TypeError, match="decoder:"):
    jaxseq.generate(jaxseq.gru(4), params, start, 3)


# ----------------------------------------------------------------------------- the example


def test_char_rnn_hello_example_learns_hello(capsys):
  result = load_example("char_rnn_hello").main(["--steps", "60", "--sample-every", "30"])
  assert result["greedy"] == "hello"
  assert "greedy: hello" in capsys.readouterr().out


def test_char_rnn_hello_example_runs_on_tiny_settings():
  result = load_example("char_rnn_hello").main(["--steps", "1", "--hidden", "2"])
  assert len(result["greedy"]) == 5 and len(result["samples"]) == 3
