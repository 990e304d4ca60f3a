"""The lectures' toy character RNN: learn "hello" from input "hell" and targets "ello".

The vocabulary is the four characters h, e, l, o, fed to a simple (Elman) RNN as one-hot
vectors; a dense readout gives the next character's logits (Karpathy 2015, "The
unreasonable effectiveness of recurrent neural networks"). After "l" the next character is
"l" the first time and "o" the second: only the hidden state can tell them apart. Once
trained, ``jaxseq.generate`` feeds each predicted character back as the next input and
writes "hello" from "h"; samples are printed as it trains.

    python examples/char_rnn_hello.py
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import jaxseq
from jaxseq.decoding import decoder

VOCAB = "helo"
WORD = "hello"


def encode(text: str) -> jax.Array:
  return jnp.asarray([VOCAB.index(c) for c in text], jnp.int32)


def decode(ids) -> str:
  return "".join(VOCAB[int(i)] for i in ids)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100, help="training steps")
  parser.add_argument("--hidden", type=int, default=16, help="RNN size")
  parser.add_argument("--lr", type=float, default=0.02)
  parser.add_argument("--sample-every", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  inputs, targets = encode(WORD[:-1]), encode(WORD[1:])        # "hell" -> "ello"
  dec = decoder(jaxseq.simple_rnn(args.hidden), len(VOCAB))     # one-hot inputs, Dense readout
  key, k_init = jax.random.split(jax.random.PRNGKey(args.seed))
  params = dec.init(k_init)
  optimizer = optax.adam(args.lr)
  opt_state = optimizer.init(params)

  def loss_fn(params):
    logits, _ = dec.apply(params, inputs[None])                 # teacher forcing, (1, 4, 4)
    return jaxseq.losses.softmax_cross_entropy(logits, targets[None])

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def write(params, key=None):
    """Characters after "h": greedy without a key, sampled (temperature 1) with one."""
    return jaxseq.generate(dec, params, inputs[0], len(WORD) - 1, key=key).tokens

  for step in range(1, args.steps + 1):
    params, opt_state, loss = train_step(params, opt_state)
    if step % args.sample_every == 0 or step == args.steps:
      print(f"step {step:4d}  loss {float(loss):.4f}  greedy: h{decode(write(params))}")

  greedy = WORD[0] + decode(write(params))
  samples = [WORD[0] + decode(write(params, k)) for k in jax.random.split(key, 3)]
  print(f"greedy: {greedy}   samples: {', '.join(samples)}")
  return {"greedy": greedy, "samples": samples, "loss": float(loss)}


if __name__ == "__main__":
  main()
