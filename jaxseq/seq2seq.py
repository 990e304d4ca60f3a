r"""Encoder–decoder (sequence to sequence) models: unaligned many-to-many.

The encoder reads the source ``x_1 .. x_S`` into outputs ``\bar h_1 .. \bar h_S`` and a final
carry; a bridge turns that carry into the decoder's initial carry, and the decoder models
the target one token at a time (Sutskever et al. 2014; Cho et al. 2014)::

    \bar h_{1:S}, c_enc = encoder(x_{1:S})
    s_0 = bridge(c_enc)
    (s_t, h_t) = decoder_core(s_{t-1}, E[y_{t-1}])
    p(y_t | y_{<t}, x) = softmax(W_s \tilde h_t),    \tilde h_t = h_t without attention

Training uses teacher forcing: the decoder reads the true previous target token, so the
whole target runs through ``jaxseq.unroll`` at once (with Bahdanau's attention, below, one
``lax.scan`` of the steps). Inference feeds the model's own tokens
back (``jaxseq.generate`` / ``beam_search`` on ``model.decoder``).

With Luong et al.'s (2015) global attention the decoder output attends over the encoder
outputs after each step::

    score(h_t, \bar h_s) = h_t^T \bar h_s                      "dot"
                         = h_t^T W_a \bar h_s                  "general"
                         = v_a^T tanh(W_q h_t + W_k \bar h_s)  "concat" (Bahdanau's score)
    a_t(s) = softmax_s score(h_t, \bar h_s)     (over each source's valid steps only)
    c_t = \sum_s a_t(s) \bar h_s
    \tilde h_t = tanh(W_c [c_t; h_t])

Without Luong's input feeding (``\tilde h_{t-1}`` is not fed back into the core), so
teacher forcing keeps the fast whole-sequence unroll and the attention over all target
steps is one batched product.

With Bahdanau et al.'s (2015) additive attention (``attention="bahdanau"``) the decoder
attends *before* each step, from its previous state, and the context is fed into the step
together with the embedded input (input feeding)::

    e_{tj} = v^T tanh(W s_{t-1} + U \bar h_j)     (U \bar h_j computed once, in ``encode``)
    a_{tj} = softmax_j e_{tj}                    (over each source's valid steps only)
    c_t = \sum_j a_{tj} \bar h_j
    (s_t, h_t) = decoder_core(s_{t-1}, [E y_{t-1}; c_t])
    p(y_t | y_{<t}, x) = softmax(W_s [h_t; c_t] + b_s)

``s_{t-1}`` is the hidden state of the core's (top) layer, taken from its carry: the state
of a GRU or simple RNN, the ``h`` of an LSTM (``s_0`` comes from the bridge). The output
layer reads ``h_t`` and ``c_t``, as the paper's does (``s_i``, ``c_i``; without its maxout
and without ``y_{i-1}``). Step ``t`` needs ``s_{t-1}``, so teacher forcing runs the core step
by step in a ``lax.scan`` (``as_cell``, no layer dropout there) instead of one unroll.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq import specs
from jaxseq.cells.base import LSTMState
# The decoding module (jaxseq.decoding) behind jaxseq.generate and jaxseq.beam_search.
from jaxseq.decoding import (Beams, Decoder, Generation, _as_layer, _dtype_of, _time_major,
                             as_cell, beam_search, generate, per_row, token_ids)
from jaxseq.layers import output_size

Params = Any
Carry = Any

BRIDGES = ("auto", "identity", "dense", "zeros")
ATTENTIONS = (None, "dot", "general", "concat", "bahdanau")
LUONG = ("dot", "general", "concat")

__all__ = ["Seq2Seq", "seq2seq", "attend", "bahdanau_attend"]


class Seq2Seq(NamedTuple):
  """An encoder–decoder model as pure functions.

  Attributes:
    init: ``init(key) -> params``, a plain dict: ``"encoder"`` and ``"decoder"`` (the
      cores' params exactly as their ``init`` makes them), ``"source_embed"`` and
      ``"target_embed"`` (absent with one-hot inputs), ``"bridge"`` (a dense bridge: one
      ``{"kernel", "bias"}`` per leaf of the decoder's carry), ``"attention"`` and
      ``"readout"``.
    apply: teacher forcing, ``apply(params, source, target_in, *, source_lengths=None,
      target_lengths=None, key=None) -> logits (*batch, T, target_vocab)``: ``target_in``
      is the target shifted right (a start token first), the logits predict the target.
    encode: ``encode(params, source, source_lengths=None, *, key=None) -> carry``: the
      decoder's initial carry, ``{"core": s_0}`` plus the encoder outputs ``"memory"`` and
      their ``"mask"`` with attention, and their projection ``"keys"`` (``U h_j``)
      with Bahdanau's (a ``key`` turns the encoder's dropout on).
    decoder: a ``Decoder`` over the whole model's params whose carry comes from
      ``encode``: ``generate(model.decoder, params, start, n, carry=model.encode(...))``.
  """
  init: Callable[[jax.Array], Params]
  apply: Callable[..., jax.Array]
  encode: Callable[..., Carry]
  decoder: Decoder

  def generate(self, params: Params, source: Any, num_steps: int, *, start: Any,
               source_lengths: Any = None, **options) -> Generation:
    """Decodes each source: ``jaxseq.generate`` from ``encode``'s carry; greedy unless a
    ``key`` is among ``options`` (``temperature``, ``top_k``, ``stop_tokens``,
    ``pad_token`` pass through too). ``start`` is the start token (an int or ids shaped
    like the batch axes)."""
    carry = self.encode(params, source, source_lengths)
    batch_shape = jnp.shape(source)[:-1]
    start = jnp.broadcast_to(token_ids("start", start, self.decoder.vocab_size), batch_shape)
    return generate(self.decoder, params, start, num_steps, carry=carry, **options)

  def beam_search(self, params: Params, source: Any, num_steps: int, *, start: Any,
                  beam_size: int, source_lengths: Any = None, **options) -> Beams:
    """``jaxseq.beam_search`` from ``encode``'s carry (``options`` pass through)."""
    carry = self.encode(params, source, source_lengths)
    batch_shape = jnp.shape(source)[:-1]
    start = jnp.broadcast_to(token_ids("start", start, self.decoder.vocab_size), batch_shape)
    return beam_search(self.decoder, params, start, num_steps, beam_size=beam_size,
                            carry=carry, **options)


def attend(kind: str, params: Params, h: jax.Array, memory: jax.Array,
           mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  r"""Luong et al.'s (2015) global attention of queries ``h (*batch, T, H)`` over
  ``memory (*batch, S, H_enc)`` (see the module docstring for the equations).

  Args:
    kind: the score, ``"dot"``, ``"general"`` or ``"concat"``.
    params: ``{"w_c" (H_enc + H, H)}`` and the score's ``"w_a" (H, H_enc)`` (general) or
      ``"w_q" (H, A), "w_k" (H_enc, A), "v" (A,)`` (concat).
    mask: ``(*batch, S)`` bool, ``True`` at valid source steps (``None``: all valid). A
      source with no valid step gets the context ``0``.

  Returns:
    ``(\tilde h, a)``: the attentional outputs ``(*batch, T, H)`` and the weights
    ``(*batch, T, S)``.
  """
  if kind == "dot":
    scores = jnp.einsum("...th,...sh->...ts", h, memory)
  elif kind == "general":
    scores = jnp.einsum("...tk,...sk->...ts", h @ params["w_a"], memory)
  elif kind == "concat":
    q, k = h @ params["w_q"], memory @ params["w_k"]
    scores = jnp.tanh(q[..., :, None, :] + k[..., None, :, :]) @ params["v"]
  else:
    _checks.choice("attention", kind, LUONG)
  if mask is not None:
    valid = mask[..., None, :]
    scores = jnp.where(valid, scores, jnp.finfo(scores.dtype).min)
    weights = jnp.where(valid, jax.nn.softmax(scores, axis=-1), 0)
  else:
    weights = jax.nn.softmax(scores, axis=-1)
  context = jnp.einsum("...ts,...sh->...th", weights, memory)
  return jnp.tanh(jnp.concatenate([context, h], axis=-1) @ params["w_c"]), weights


def _attention_params(kind: str, key: jax.Array, query_size: int, memory_size: int,
                      dtype) -> Params:
  from jaxseq.nn import variance_scaling
  init = variance_scaling(1.0)          # LeCun normal, as jaxseq.nn.Dense
  k_c, k_a, k_q, k_v = jax.random.split(key, 4)
  if kind == "bahdanau":                # W = w_q, U = w_k; the attention size is the query's
    return {"w_q": init(k_q, (query_size, query_size), dtype),
            "w_k": init(k_a, (memory_size, query_size), dtype),
            "v": jax.random.normal(k_v, (query_size,), dtype) / np.sqrt(query_size)}
  params = {"w_c": init(k_c, (memory_size + query_size, query_size), dtype)}
  if kind == "general":
    params["w_a"] = init(k_a, (query_size, memory_size), dtype)
  elif kind == "concat":
    params["w_q"] = init(k_q, (query_size, query_size), dtype)
    params["w_k"] = init(k_a, (memory_size, query_size), dtype)
    params["v"] = jax.random.normal(k_v, (query_size,), dtype) / np.sqrt(query_size)
  return params


def _shapes(tree: Any) -> Any:
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def _hidden_state(carry: Carry) -> Any:
  """``s``, the hidden state of a decoder core's (top) layer in its carry: the carry of a
  GRU-like cell, an LSTM's ``h``, a stack's last entry's; ``None`` for another carry."""
  if isinstance(carry, LSTMState):
    return carry.h
  if isinstance(carry, (list, tuple)) and carry:
    return _hidden_state(carry[-1])
  return carry if hasattr(carry, "shape") else None


def bahdanau_attend(params: Params, s_prev: jax.Array, keys: jax.Array, memory: jax.Array,
                    mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  r"""Bahdanau et al.'s (2015) additive attention of one decoder state over the memory.

  Args:
    params: ``{"w_q" (H_s, A), "w_k" (H_enc, A), "v" (A,)}``, the paper's ``W``, ``U``, ``v``.
    s_prev: the previous decoder state ``s_{t-1}``, ``(*batch, H_s)``.
    keys: ``U \bar h_j = memory @ w_k``, ``(*batch, S, A)``, computed once per source.
    memory: the encoder outputs ``\bar h_j``, ``(*batch, S, H_enc)``.
    mask: ``(*batch, S)`` bool, ``True`` at valid source steps (``None``: all valid); a
      source with no valid step gets the context ``0``.

  Returns:
    ``(c_t, a_t)``: the context ``(*batch, H_enc)`` and the weights ``(*batch, S)``.
  """
  query = s_prev @ params["w_q"]
  scores = jnp.tanh(query[..., None, :] + keys) @ params["v"]            # (*batch, S)
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    weights = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0)
  else:
    weights = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("...s,...sh->...h", weights, memory), weights


def _dropout_inside(layer: Any) -> bool:
  """Whether a sequence layer has dropout anywhere inside (a training-time option that
  ``as_cell``'s step does not apply)."""
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return bool(spec.dropout or spec.recurrent_dropout)
  if isinstance(spec, specs.StackSpec):
    return bool(spec.dropout) or any(_dropout_inside(sub) for sub in spec.layers)
  return False


def seq2seq(encoder: Any, decoder: Any, *, source_vocab: int, target_vocab: int,
            embed_size: int | None = None, bridge: str = "auto",
            attention: Optional[str] = None) -> Seq2Seq:
  r"""An encoder–decoder model (see the module docstring for the equations).

  Args:
    encoder: a ``Cell`` or any sequence layer (``recurrent``, ``stack``, ``bidirectional``).
    decoder: the decoder's core: a ``Cell``, a ``recurrent`` or ``stack`` layer, or a list
      of cells (it must run forward one step at a time: ``as_cell`` of the
      ``jaxseq.decoding`` module).
    source_vocab, target_vocab: the vocabulary sizes (target ids include the start token
      and any stop token).
    embed_size: ``E`` for ``jaxseq.nn.Embedding`` tables on both sides; ``None``: one-hot.
    bridge: how the encoder's final carry becomes the decoder's initial carry:
      ``"identity"`` (the same carry; the two must have the same structure and shapes,
      e.g. two stacks of the same depth and sizes), ``"dense"`` (each leaf of the
      decoder's carry is ``tanh(W [c_enc leaves] + b)``, as Bahdanau et al. initialise
      their decoder from the encoder), ``"zeros"`` (no bridge: the decoder starts from
      zeros, attention carries the source), or ``"auto"``: identity when the shapes
      match, else dense.
    attention: ``None``, or Luong's score ``"dot"`` (encoder outputs and decoder outputs
      of one size), ``"general"`` or ``"concat"``, applied after the decoder's step; or
      ``"bahdanau"``: Bahdanau et al.'s additive attention from the previous decoder state,
      its context fed into the step (the core then takes ``E + H_enc`` input features and
      runs step by step in training; a core with dropout is refused).

  Returns:
    a ``Seq2Seq`` record of pure functions.
  """
  from jaxseq import nn
  enc_layer = _as_layer(encoder)
  dec_layer = _as_layer(decoder)
  dec_cell = as_cell(decoder)
  source_vocab = _checks.positive_int("source_vocab", source_vocab)
  target_vocab = _checks.positive_int("target_vocab", target_vocab)
  embed_size = _checks.optional_positive_int("embed_size", embed_size)
  bridge = _checks.choice("bridge", bridge, BRIDGES)
  attention = _checks.choice("attention", attention, ATTENTIONS)
  bahdanau = attention == "bahdanau"
  if bahdanau and _dropout_inside(dec_layer):
    _checks.fail("decoder", "a core without dropout for attention='bahdanau' (its steps run "
                 "one at a time, as in generation, where layer dropout does not apply)",
                 "a core with dropout")
  src_embed = None if embed_size is None else nn.Embedding(source_vocab, embed_size)
  tgt_embed = None if embed_size is None else nn.Embedding(target_vocab, embed_size)
  readout = nn.Dense(target_vocab)
  dec_time_major = _time_major(dec_layer)
  enc_time_major = _time_major(enc_layer)

  def embedded(layer, table_params, tokens, vocab, dtype):
    if layer is None:
      return jax.nn.one_hot(tokens, vocab, dtype=dtype)
    return per_row(layer, table_params, tokens, 0)

  def dtype_of(params):
    return _dtype_of(params)

  def run(layer, params, xs, lengths, carry, key, time_major):
    if time_major:
      xs = jnp.moveaxis(xs, -2, 0)
    ys, carry = layer.apply(params, xs, lengths=lengths, carry=carry, key=key)
    return (jnp.moveaxis(ys, 0, -2) if time_major else ys), carry

  enc_in = source_vocab if embed_size is None else embed_size
  dec_in = target_vocab if embed_size is None else embed_size

  def encoder_plan(encoder_params):
    """The encoder's output size and carry shapes, one example."""
    dtype = dtype_of(encoder_params)
    ys, enc_carry = jax.eval_shape(
        lambda p: run(enc_layer, p, jnp.zeros((1, 1, enc_in), dtype), None, None, None,
                      enc_time_major), encoder_params)
    return ys.shape[-1], enc_carry

  def plan(params):
    """Shapes of the encoder's outputs and carry and of the decoder's carry, one example,
    and the core's input size (the embedding, and Bahdanau's context)."""
    memory_size, enc_carry = encoder_plan(params["encoder"])
    core_in = dec_in + (memory_size if bahdanau else 0)
    dec_carry = jax.eval_shape(lambda p: dec_cell.initialize_carry(p, (1, core_in)),
                               params["decoder"])
    return memory_size, enc_carry, dec_carry, core_in

  def init(key: jax.Array) -> Params:
    _checks.init_key(key)
    keys = jax.random.split(key, 7)
    params = {}
    if embed_size is not None:
      params["source_embed"], _ = src_embed.init(keys[0], ())
      params["target_embed"], _ = tgt_embed.init(keys[1], ())
    params["encoder"] = enc_layer.init(keys[2], enc_in)
    context_size = encoder_plan(params["encoder"])[0] if bahdanau else 0
    params["decoder"] = dec_layer.init(keys[3], dec_in + context_size)
    memory_size, enc_carry, dec_carry, core_in = plan(params)
    hidden = output_size(dec_layer, params["decoder"], core_in)
    kind = _bridge_kind(enc_carry, dec_carry)
    if kind == "dense":
      enc_leaves = jax.tree.leaves(enc_carry)
      for leaf in enc_leaves + jax.tree.leaves(dec_carry):
        if leaf.ndim != 2:
          _checks.fail("bridge", "'dense' between carries of (batch, features) arrays "
                       "(dense cells)", f"a carry leaf of shape {leaf.shape}")
      fan_in = sum(leaf.shape[-1] for leaf in enc_leaves)
      dense_keys = jax.random.split(keys[4], len(jax.tree.leaves(dec_carry)))
      params["bridge"] = [
          nn.Dense(leaf.shape[-1]).init(k, (fan_in,))[0]
          for k, leaf in zip(dense_keys, jax.tree.leaves(dec_carry))]
    if bahdanau:
      state = _hidden_state(dec_carry)
      if state is None:
        _checks.fail("decoder", "a core whose carry holds its hidden state s_t (an array, an "
                     "LSTMState, a stack's list of them) for attention='bahdanau'",
                     _checks.describe(dec_carry), TypeError)
      params["attention"] = _attention_params(attention, keys[5], state.shape[-1],
                                              memory_size, dtype_of(params["decoder"]))
      hidden += memory_size             # the readout reads [h_t; c_t]
    elif attention is not None:
      if attention == "dot" and memory_size != hidden:
        _checks.fail("attention", f"'general' or 'concat' for encoder outputs of size "
                     f"{memory_size} and decoder outputs of size {hidden} ('dot' needs one "
                     "size)", repr(attention))
      params["attention"] = _attention_params(attention, keys[5], hidden, memory_size,
                                              dtype_of(params["decoder"]))
    params["readout"], _ = readout.init(keys[6], (hidden,))
    return params

  def _bridge_kind(enc_carry, dec_carry) -> str:
    same = (jax.tree.structure(enc_carry) == jax.tree.structure(dec_carry)
            and _shapes(enc_carry) == _shapes(dec_carry))
    if bridge == "identity" and not same:
      _checks.fail("bridge", "'identity' between an encoder carry and a decoder carry of one "
                   "structure and shape (or bridge='dense')",
                   f"encoder carry {_checks.describe(enc_carry)} and decoder carry "
                   f"{_checks.describe(dec_carry)}")
    if bridge == "auto":
      return "identity" if same else "dense"
    return bridge

  def check_params(params):
    required = ["encoder", "decoder", "readout"] + (["attention"] if attention else []) + (
        ["source_embed", "target_embed"] if embed_size is not None else [])
    _checks.param_dict(params, required, "a seq2seq model")

  def encode(params: Params, source: Any, source_lengths: Any = None, *,
             key: jax.Array | None = None) -> Carry:
    check_params(params)
    _checks.prng_key(key)
    source = token_ids("source", source, source_vocab)
    if source.ndim < 2:
      _checks.fail("source", "token ids of shape (*batch, S) with a batch axis",
                   f"shape {tuple(source.shape)}")
    xs = embedded(src_embed, params.get("source_embed"), source, source_vocab,
                  dtype_of(params["encoder"]))
    memory, enc_carry = run(enc_layer, params["encoder"], xs, source_lengths, None, key,
                            enc_time_major)
    batch_shape = tuple(source.shape[:-1])
    _, enc_shape, dec_shape, core_in = plan(params)
    kind = _bridge_kind(enc_shape, dec_shape)
    if kind == "identity":
      core = enc_carry
    else:
      zeros = dec_cell.initialize_carry(params["decoder"], batch_shape + (core_in,))
      if kind == "zeros":
        core = zeros
      else:
        if "bridge" not in params:
          _checks.fail("params", "a 'bridge' entry (the dense bridge's params)",
                       sorted(params))
        features = jnp.concatenate(jax.tree.leaves(enc_carry), axis=-1)
        leaves = [jnp.tanh(features @ p["kernel"] + p["bias"]).astype(z.dtype)
                  for p, z in zip(params["bridge"], jax.tree.leaves(zeros))]
        core = jax.tree.unflatten(jax.tree.structure(zeros), leaves)
    carry = {"core": core}
    if attention is not None:
      mask = (jnp.ones(source.shape, bool) if source_lengths is None else
              jnp.arange(source.shape[-1]) < jnp.asarray(source_lengths)[..., None])
      carry.update(memory=memory, mask=mask)
    if bahdanau:                        # U h_j, once per source
      carry["keys"] = memory @ params["attention"]["w_k"]
    return carry

  def read(params, hs, carry):
    """Logits from decoder outputs ``(*batch, T, H)`` (attention over the memory first)."""
    if attention is not None:
      hs, _ = attend(attention, params["attention"], hs, carry["memory"], carry["mask"])
    return per_row(readout, params["readout"], hs, 1)

  carry_entries = {"core"} | ({"memory", "mask"} if attention else set()) | (
      {"keys"} if bahdanau else set())

  def bahdanau_step(params, carry, x_t):
    """Attend from ``s_{t-1}``, step the core on ``[x_t; c_t]``: ``(core, [h_t; c_t])``."""
    context, _ = bahdanau_attend(params["attention"], _hidden_state(carry["core"]),
                                 carry["keys"], carry["memory"], carry["mask"])
    core, h_t = dec_cell.step(params["decoder"], carry["core"],
                              jnp.concatenate([x_t, context], axis=-1))
    return core, jnp.concatenate([h_t, context], axis=-1)

  def check_carry(carry):
    if not isinstance(carry, dict) or not carry_entries <= set(carry):
      _checks.fail("carry", "the carry from model.encode(params, source, source_lengths)",
                   type(carry).__name__ if not isinstance(carry, dict) else sorted(carry))

  def step(params: Params, carry: Carry, tokens: jax.Array):
    check_params(params)
    check_carry(carry)
    x_t = embedded(tgt_embed, params.get("target_embed"), tokens, target_vocab,
                   dtype_of(params["decoder"]))
    if bahdanau:
      core, features = bahdanau_step(params, carry, x_t)
      return {**carry, "core": core}, per_row(readout, params["readout"], features, 1)
    core, h_t = dec_cell.step(params["decoder"], carry["core"], x_t)
    logits = read(params, h_t[..., None, :], carry)[..., 0, :]
    return {**carry, "core": core}, logits

  def decoder_apply(params: Params, tokens: Any, *, lengths=None, carry=None, key=None):
    check_params(params)
    check_carry(carry)
    tokens = token_ids("target_in", tokens, target_vocab)
    if tokens.ndim < 2:
      _checks.fail("target_in", "token ids of shape (*batch, T) with a batch axis",
                   f"shape {tuple(tokens.shape)}")
    xs = embedded(tgt_embed, params.get("target_embed"), tokens, target_vocab,
                  dtype_of(params["decoder"]))
    if bahdanau:
      _checks.prng_key(key)             # the core has no dropout (refused at build)
      return bahdanau_teacher_forcing(params, xs, lengths, carry)
    hs, core = run(dec_layer, params["decoder"], xs, lengths, carry["core"], key,
                   dec_time_major)
    return read(params, hs, carry), {**carry, "core": core}

  def bahdanau_teacher_forcing(params, xs, lengths, carry):
    """The steps of ``step`` in one ``lax.scan`` over the target (``s_{t-1}`` feeds step
    ``t``, so no whole-sequence unroll); past ``lengths`` the carry is kept."""
    num_steps, batch_shape = xs.shape[-2], tuple(xs.shape[:-2])
    lengths = _checks.lengths(lengths, batch_shape, num_steps)

    def body(core, inputs):
      t, x_t = inputs
      new_core, features = bahdanau_step(params, {**carry, "core": core}, x_t)
      if lengths is not None:
        valid = t < lengths
        new_core = jax.tree.map(
            lambda n, o: jnp.where(valid.reshape(valid.shape + (1,) * (n.ndim - valid.ndim)),
                                   n, o), new_core, core)
      return new_core, features

    core, features = jax.lax.scan(body, carry["core"],
                                  (jnp.arange(num_steps), jnp.moveaxis(xs, -2, 0)))
    logits = per_row(readout, params["readout"], jnp.moveaxis(features, 0, -2), 1)
    return logits, {**carry, "core": core}

  def apply(params: Params, source: Any, target_in: Any, *, source_lengths: Any = None,
            target_lengths: Any = None, key: jax.Array | None = None) -> jax.Array:
    _checks.prng_key(key)
    source = token_ids("source", source, source_vocab)
    target_in = token_ids("target_in", target_in, target_vocab)
    if tuple(source.shape[:-1]) != tuple(target_in.shape[:-1]):
      _checks.fail("target_in", f"the batch axes of source {tuple(source.shape[:-1])}",
                   f"shape {tuple(target_in.shape)}")
    key_enc, key_dec = (None, None) if key is None else jax.random.split(key)
    carry = encode(params, source, source_lengths, key=key_enc)
    logits, _ = decoder_apply(params, target_in, lengths=target_lengths, carry=carry,
                              key=key_dec)
    return logits

  def initialize_carry(params, tokens_shape):
    _checks.fail("carry", "the carry from model.encode(params, source) (a seq2seq "
                 "decoder starts from the encoded source, not from zeros)",
                 "carry=None", ValueError)

  dec = Decoder(init, initialize_carry, step, decoder_apply, target_vocab)
  return Seq2Seq(init, apply, encode, dec)
