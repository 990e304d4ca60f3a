"""A bidirectional LSTM in Flax NNX reads scikit-learn's digits row by row.

Each 8x8 digit (values 0..16, scaled to [0, 1]) is a sequence of 8 steps of 8 pixels, its
rows top to bottom. ``jaxseq.nnx.LSTM(8, 64, bidirectional=True)`` reads it both ways;
an ``nnx.Linear`` head classifies the concatenation of the forward direction's last output
and the backward direction's last (its output at the first row: outputs stay aligned with
the inputs). The 1,797 digits are split 80/20 (stratified); training is Adam with cosine
decay through ``nnx.Optimizer`` (``jaxseq.nnx.optimizer`` / ``jaxseq.nnx.update`` hide the
Flax-version differences of its ``wrt`` and ``update``), one ``nnx.jit`` step per batch.

At the end the model's ``nnx.state`` is saved with orbax (``StandardCheckpointer``) to
``OUT/nnx_digits_bilstm_checkpoint``, restored into a freshly initialised model (at chance
before the restore), and that model's test accuracy is checked to equal the trained one's.
The training curve goes to ``OUT/nnx_digits_bilstm.png``.

    python examples/nnx_digits_bilstm.py     # ~98% test accuracy, ~1 min on CPU

Measured at the default settings (30 epochs, seed 0) on a shared 2-core CPU: test accuracy
0.9833 (354 of 360), the restored model 0.9833 as well (the fresh one 0.1111 before the
restore); 56 s wall under a load average of ~10. Tiny settings for a smoke test:
``--epochs 1 --hidden 8``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

try:   # the optional dependencies: one line saying how to install them, not a traceback
  import orbax.checkpoint as ocp
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
except ImportError as error:
  missing = {"sklearn": "scikit-learn", "orbax": "orbax-checkpoint"}.get(
      (error.name or "sklearn").split(".")[0], error.name)
  sys.exit(f"nnx_digits_bilstm.py needs {missing}: pip install {missing} "
           "(or pip install 'jaxseq[examples]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

import jaxseq.nnx  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
ROWS, PIXELS, CLASSES = 8, 8, 10


class BiLSTMClassifier(nnx.Module):
  """Digit logits from a bidirectional LSTM over the image rows."""

  def __init__(self, hidden: int, *, rngs: nnx.Rngs):
    self.hidden = hidden
    self.rnn = jaxseq.nnx.LSTM(PIXELS, hidden, bidirectional=True, rngs=rngs)
    self.head = nnx.Linear(2 * hidden, CLASSES, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    """``images (B, ROWS, PIXELS)`` -> logits ``(B, CLASSES)``."""
    ys = self.rnn(images)                               # (B, ROWS, 2H), aligned with rows
    forward_last, backward_last = ys[:, -1, :self.hidden], ys[:, 0, self.hidden:]
    return self.head(jnp.concatenate([forward_last, backward_last], axis=-1))


def load(seed: int):
  """Train/test images ``(N, 8, 8)`` in [0, 1] and labels, split 80/20 (stratified)."""
  digits = load_digits()
  images = digits.images.astype(np.float32) / 16.0
  x_train, x_test, y_train, y_test = train_test_split(
      images, digits.target, test_size=0.2, stratify=digits.target, random_state=seed)
  return (jnp.asarray(x_train), jnp.asarray(x_test), jnp.asarray(y_train, jnp.int32),
          jnp.asarray(y_test, jnp.int32))


@nnx.jit
def train_step(model, optimizer, images, labels):
  def loss_fn(model):
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  jaxseq.nnx.update(optimizer, model, grads)
  return loss


@nnx.jit
def accuracy(model, images, labels):
  return jnp.mean(jnp.argmax(model(images), axis=-1) == labels)


def save_and_restore(model: nnx.Module, fresh: nnx.Module, path: str) -> None:
  """Saves ``model``'s state with orbax at ``path`` and loads it into ``fresh``."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(path, nnx.state(model), force=True)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(path, nnx.state(fresh))   # the fresh state: the target
  finally:
    checkpointer.close()
  nnx.update(fresh, restored)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=64, help="LSTM size per direction")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=OUT, help="folder for the plot and the checkpoint")
  args = parser.parse_args(argv)
  begin = time.perf_counter()

  x_train, x_test, y_train, y_test = load(args.seed)
  model = BiLSTMClassifier(args.hidden, rngs=nnx.Rngs(args.seed))
  steps_per_epoch = len(x_train) // args.batch_size
  schedule = optax.cosine_decay_schedule(args.lr, args.epochs * steps_per_epoch)
  optimizer = jaxseq.nnx.optimizer(model, optax.adam(schedule))   # nnx.Optimizer, wrt=Param

  rng = np.random.default_rng(args.seed)
  history = {"loss": [], "test": []}
  bar = tqdm(range(1, args.epochs + 1), desc="NNX BiLSTM on digits", unit="epoch",
             disable=None)   # None: no bar when stderr is not a terminal
  for _ in bar:
    order = rng.permutation(len(x_train))[:steps_per_epoch * args.batch_size]
    losses = [train_step(model, optimizer, x_train[batch], y_train[batch])
              for batch in order.reshape(steps_per_epoch, args.batch_size)]
    history["loss"].append(float(np.mean(jax.device_get(losses))))
    history["test"].append(float(accuracy(model, x_test, y_test)))
    bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", test_acc=f"{history['test'][-1]:.4f}")
  test_accuracy = history["test"][-1]
  print(f"test accuracy {test_accuracy:.4f} on {len(x_test)} digits "
        f"(final training loss {history['loss'][-1]:.4f})")

  # Checkpoint: save the trained state, restore it into a model initialised afresh.
  os.makedirs(args.out, exist_ok=True)
  path = os.path.abspath(os.path.join(args.out, "nnx_digits_bilstm_checkpoint"))
  fresh = BiLSTMClassifier(args.hidden, rngs=nnx.Rngs(args.seed + 1))
  fresh_accuracy = float(accuracy(fresh, x_test, y_test))
  save_and_restore(model, fresh, path)
  restored_accuracy = float(accuracy(fresh, x_test, y_test))
  print(f"orbax checkpoint {path}: a fresh model scores {fresh_accuracy:.4f}, "
        f"restored {restored_accuracy:.4f} (trained {test_accuracy:.4f})")
  if restored_accuracy != test_accuracy:
    raise RuntimeError(f"the restored model scores {restored_accuracy}, the trained model "
                       f"{test_accuracy}: the checkpoint did not round-trip")

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  epochs = np.arange(1, args.epochs + 1)
  ax_loss.plot(epochs, history["loss"], marker=".")
  ax_loss.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log",
              title="Training loss")
  ax_acc.plot(epochs, history["test"], marker=".")
  ax_acc.set(xlabel="epoch", ylabel="test accuracy",
             title=f"BiLSTM({args.hidden}) on 8x8 digits, row by row")
  fig.tight_layout()
  plot = os.path.join(args.out, "nnx_digits_bilstm.png")
  fig.savefig(plot, dpi=110)
  plt.close(fig)
  seconds = time.perf_counter() - begin
  print(f"saved {plot}; {seconds:.1f} s")
  return {"accuracy": test_accuracy, "restored_accuracy": restored_accuracy,
          "fresh_accuracy": fresh_accuracy, "loss": history["loss"][-1], "seconds": seconds,
          "checkpoint": path}


if __name__ == "__main__":
  main()
