"""A character-level LSTM language model of CPython's own documentation (``pydoc_data``).

The corpus is every topic of ``pydoc_data.topics`` (the text ``help("if")`` shows, about
465,000 characters of the language reference, ~100 distinct characters) joined in key
order; the first 90% trains the model, the last 10% is held out. The model is
``jaxseq.decoder(jaxseq.lstm(256), V, embed=32)``: an ``nn.Embedding`` of the previous
character, one LSTM, a ``Dense`` readout to the next character's logits (Karpathy 2015,
"The unreasonable effectiveness of recurrent neural networks"). Each step trains on a batch
of random 100-character windows (teacher forcing, Adam with global-norm clipping and cosine
decay, optax). As it trains, it prints samples that ``jaxseq.generate`` writes from a primed
state (the carry after reading the prompt "The "), and the held-out bits per character.

The held-out text is read as 64 parallel streams in one pass, each character predicted from
everything before it in its stream. The baseline is the unigram model: the entropy of the
training set's character frequencies, ``-sum_c p(c) log2 p(c)`` bits, what a model that
ignores context would pay per character (its held-out cross-entropy, add-one smoothed, is
printed next to it). The bpc curve goes to ``OUT/char_lm_pydoc.png`` and the final samples
to ``OUT/char_lm_pydoc_samples.txt``.

    python examples/char_lm_pydoc.py        # held-out 1.84 bpc vs unigram 4.69; a few min

Measured at the default settings (1,000 steps, seed 0) on a shared 2-core CPU: held-out
1.838 bits per character against the unigram baseline's 4.693 bits (the unigram model's
held-out cross-entropy: 4.671), training 1.682; 358 s wall under a load average of ~7
(150 s of CPU time). Tiny settings for a smoke test:
``--steps 5 --hidden 8 --embed 4 --length 16 --batch-size 4 --eval-chars 2000``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

try:   # stdlib, but some distributions package pydoc_data separately
  from pydoc_data.topics import topics
except ImportError:
  sys.exit("char_lm_pydoc.py needs CPython's pydoc_data (part of the standard library; "
           "install your distribution's full python3 package)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm import tqdm  # noqa: E402

import jaxseq  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
PROMPT = "The "
STREAMS = 64    # the held-out text is read as this many parallel streams


def corpus() -> str:
  """Every pydoc topic, in key order, as one string."""
  return "".join(topics[name] for name in sorted(topics))


def unigram_bits(train: np.ndarray, held_out: np.ndarray, vocab_size: int):
  """The unigram baseline: the entropy (bits) of the training character frequencies, and
  the held-out cross-entropy under them, add-one smoothed (unseen characters stay finite)."""
  counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
  p = counts / counts.sum()
  entropy = float(-np.sum(p[p > 0] * np.log2(p[p > 0])))
  smoothed = (counts + 1) / (counts.sum() + vocab_size)
  return entropy, float(-np.mean(np.log2(smoothed[held_out])))


def streams(ids: np.ndarray, count: int) -> jax.Array:
  """``ids`` cut into ``count`` contiguous streams of equal length, ``(count, L)``."""
  count = max(1, min(count, len(ids) // 2))
  length = len(ids) // count
  return jnp.asarray(ids[:count * length].reshape(count, length))


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000, help="training steps")
  parser.add_argument("--batch-size", type=int, default=32, help="windows per step")
  parser.add_argument("--length", type=int, default=100, help="characters per window")
  parser.add_argument("--hidden", type=int, default=256, help="LSTM size")
  parser.add_argument("--embed", type=int, default=32, help="character embedding size")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--eval-every", type=int, default=100,
                      help="steps between held-out evaluations (the bpc curve)")
  parser.add_argument("--sample-every", type=int, default=250,
                      help="steps between printed samples")
  parser.add_argument("--sample-chars", type=int, default=200)
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--eval-chars", type=int, default=None,
                      help="held-out characters to score (default: all of them)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=OUT, help="folder for the plot and the samples")
  args = parser.parse_args(argv)
  begin = time.perf_counter()

  text = corpus()
  vocab = sorted(set(text))
  index = {c: i for i, c in enumerate(vocab)}
  ids = np.fromiter((index[c] for c in text), np.int32, len(text))
  cut = int(0.9 * len(ids))
  train_ids, held_ids = ids[:cut], ids[cut:][:args.eval_chars]
  unigram, unigram_held = unigram_bits(train_ids, held_ids, len(vocab))
  print(f"{len(text):,} characters ({len(vocab)} distinct): {len(train_ids):,} train, "
        f"{len(held_ids):,} held out; unigram baseline {unigram:.3f} bits/char "
        f"(held-out cross-entropy {unigram_held:.3f})")

  model = jaxseq.decoder(jaxseq.lstm(args.hidden), len(vocab), embed=args.embed)
  key, k_init = jax.random.split(jax.random.PRNGKey(args.seed))
  params = jax.jit(model.init)(k_init)
  optimizer = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adam(optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.1)))
  opt_state = optimizer.init(params)
  train_text, held_streams = jnp.asarray(train_ids), streams(held_ids, STREAMS)

  def bits(params, chars):
    """Mean next-character cross-entropy over ``chars (B, T+1)``, in bits."""
    logits, _ = model.apply(params, chars[:, :-1])
    return jaxseq.losses.softmax_cross_entropy(logits, chars[:, 1:]) / math.log(2)

  @jax.jit
  def train_step(params, opt_state, text, key):
    starts = jax.random.randint(key, (args.batch_size, 1), 0,
                                len(text) - args.length - 1)
    windows = text[starts + jnp.arange(args.length + 1)]
    loss, grads = jax.value_and_grad(bits)(params, windows)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  held_out_bits = jax.jit(bits)
  prompt = jnp.asarray([index[c] for c in PROMPT], jnp.int32)

  @jax.jit
  def write(params, key):
    """``--sample-chars`` characters after the prompt, sampled at ``--temperature``."""
    _, carry = model.apply(params, prompt[None, :-1])       # prime the state on "The"
    return jaxseq.generate(model, params, prompt[-1:], args.sample_chars, carry=carry,
                           key=key, temperature=args.temperature).tokens[0]

  def sample(params, key) -> str:
    return PROMPT + "".join(vocab[int(i)] for i in write(params, key))

  curve, losses = [], []
  bar = tqdm(range(1, args.steps + 1), desc="char LM on pydoc", unit="step", disable=None)
  for step in bar:
    key, k_step = jax.random.split(key)
    params, opt_state, loss = train_step(params, opt_state, train_text, k_step)
    losses.append(loss)
    if step % args.eval_every == 0 or step == args.steps:
      train_bpc = float(np.mean(jax.device_get(losses)))
      held_bpc = float(held_out_bits(params, held_streams))
      curve.append((step, train_bpc, held_bpc))
      losses = []
      bar.set_postfix(train=f"{train_bpc:.3f}", held_out=f"{held_bpc:.3f}")
      tqdm.write(f"step {step:5d}  train {train_bpc:.3f} bpc  held-out {held_bpc:.3f} bpc  "
                 f"(unigram {unigram:.3f})")
    if step % args.sample_every == 0 and step != args.steps:
      key, k_sample = jax.random.split(key)
      tqdm.write(f"  sample: {sample(params, k_sample)!r}")
  bar.close()

  samples = [sample(params, k) for k in jax.random.split(key, 3)]
  for text_sample in samples:
    print(f"  sample: {text_sample!r}")
  step, train_bpc, held_bpc = curve[-1]
  seconds = time.perf_counter() - begin
  print(f"held-out {held_bpc:.3f} bits/char against the unigram baseline's {unigram:.3f} "
        f"({unigram - held_bpc:+.3f} bits saved per character); train {train_bpc:.3f}; "
        f"{seconds:.0f} s")

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "char_lm_pydoc_samples.txt"), "w",
            encoding="utf-8") as file:
    file.write(f"# {args.steps} steps, held-out {held_bpc:.3f} bpc, temperature "
               f"{args.temperature}\n\n" + "\n\n".join(samples) + "\n")
  fig, ax = plt.subplots(figsize=(6, 4))
  steps_axis = [s for s, _, _ in curve]
  ax.plot(steps_axis, [t for _, t, _ in curve], marker=".", label="train (recent steps)")
  ax.plot(steps_axis, [h for _, _, h in curve], marker=".", label="held out")
  ax.axhline(unigram, color="gray", linestyle="--", label=f"unigram {unigram:.2f}")
  ax.set(xlabel="step", ylabel="bits per character",
         title=f"LSTM({args.hidden}) character LM on pydoc_data")
  ax.legend()
  fig.tight_layout()
  path = os.path.join(args.out, "char_lm_pydoc.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  print(f"saved {path}")
  return {"bpc": held_bpc, "train_bpc": train_bpc, "unigram_bpc": unigram,
          "unigram_held_out_bpc": unigram_held, "seconds": seconds, "sample": samples[0]}


if __name__ == "__main__":
  main()
