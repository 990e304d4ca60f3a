"""Quick start: a bidirectional LSTM classifier on variable-length sequences.

Shows the pure-function API end to end: a cell, a layer built from combinators, a loss
over valid steps only, and optax for the optimiser and gradient clipping (jaxseq does not
re-implement clipping: ``optax.clip_by_global_norm`` is the tool).

Task: is the sum of a sequence's valid values positive? (many-to-one, lengths 5..30)

    python examples/quickstart.py
    python examples/quickstart.py --steps 5 --hidden 4     # tiny settings, a smoke test
"""
import argparse
import functools

import jax
import jax.numpy as jnp
import optax

import jaxseq

MIN_LEN, MAX_LEN = 5, 30


def batch(key, batch_size: int = 64, max_len: int = MAX_LEN):
  k_x, k_len = jax.random.split(key)
  xs = jax.random.normal(k_x, (batch_size, max_len, 1))
  lengths = jax.random.randint(k_len, (batch_size,), min(MIN_LEN, max_len), max_len + 1)
  valid = jaxseq.losses.sequence_mask(lengths, max_len)[..., None]
  labels = (jnp.sum(jnp.where(valid, xs, 0.0), axis=(1, 2)) > 0).astype(jnp.int32)
  return xs, lengths, labels


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300, help="training steps")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--max-length", type=int, default=MAX_LEN, help="longest sequence")
  parser.add_argument("--hidden", type=int, default=32, help="LSTM size per direction")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  batch_of = functools.partial(batch, batch_size=args.batch_size, max_len=args.max_length)

  layer = jaxseq.bidirectional(jaxseq.lstm(args.hidden, forget_bias=1.0))
  readout = jaxseq.nn.Dense(2)   # logits from the last valid output of both directions
  key = jax.random.PRNGKey(args.seed)
  k_rnn, k_out, key = jax.random.split(key, 3)
  readout_params, _ = readout.init(k_out, (2 * args.hidden,))
  params = {"rnn": layer.init(k_rnn, 1), "out": readout_params}

  def loss_fn(params, xs, lengths, labels):
    ys, _ = layer.apply(params["rnn"], xs, lengths=lengths)
    logits, _ = readout.apply(params["out"], {}, jaxseq.losses.last_valid(ys, lengths))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, key):
    xs, lengths, labels = batch_of(key)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xs, lengths, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  for step in range(1, args.steps + 1):
    key, k = jax.random.split(key)
    params, opt_state, loss, acc = train_step(params, opt_state, k)
    if step % 50 == 0 or step == args.steps:
      print(f"step {step:4d}  loss {loss:.3f}  accuracy {acc:.2f}")
  evaluate = jax.jit(lambda params, key: loss_fn(params, *batch_of(key)))   # one program
  _, acc = evaluate(params, jax.random.PRNGKey(123))
  print(f"held-out accuracy {acc:.3f} (chance 0.5)")
  return {"accuracy": float(acc), "loss": float(loss)}


if __name__ == "__main__":
  main()
