"""Quick start: a bidirectional LSTM classifier on variable-length sequences.

Shows the pure-function API end to end: a cell, a layer built from combinators, a loss
over valid steps only, and optax for the optimiser and gradient clipping (jaxseq does not
re-implement clipping: ``optax.clip_by_global_norm`` is the tool).

Task: is the sum of a sequence's valid values positive? (many-to-one, lengths 5..30)

    python examples/quickstart.py
"""
import jax
import jax.numpy as jnp
import optax

import jaxseq

BATCH, MAX_LEN, HIDDEN, STEPS = 64, 30, 32, 300


def batch(key):
  k_x, k_len = jax.random.split(key)
  xs = jax.random.normal(k_x, (BATCH, MAX_LEN, 1))
  lengths = jax.random.randint(k_len, (BATCH,), 5, MAX_LEN + 1)
  valid = jaxseq.losses.sequence_mask(lengths, MAX_LEN)[..., None]
  labels = (jnp.sum(jnp.where(valid, xs, 0.0), axis=(1, 2)) > 0).astype(jnp.int32)
  return xs, lengths, labels


def main():
  layer = jaxseq.bidirectional(jaxseq.lstm(HIDDEN, forget_bias=1.0))
  readout = jaxseq.nn.Dense(2)   # logits from the last valid output of both directions
  key = jax.random.PRNGKey(0)
  k_rnn, k_out, key = jax.random.split(key, 3)
  readout_params, _ = readout.init(k_out, (2 * HIDDEN,))
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
    xs, lengths, labels = batch(key)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xs, lengths, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  for step in range(1, STEPS + 1):
    key, k = jax.random.split(key)
    params, opt_state, loss, acc = train_step(params, opt_state, k)
    if step % 50 == 0:
      print(f"step {step:4d}  loss {loss:.3f}  accuracy {acc:.2f}")
  test = batch(jax.random.PRNGKey(123))
  _, acc = loss_fn(params, *test)
  print(f"held-out accuracy {acc:.3f} (chance 0.5)")


if __name__ == "__main__":
  main()
