"""LeNet-5 on scikit-learn's handwritten digits.

The 1,797 digits are 8x8 images with values 0..16; they are upsampled (bilinear) to the
32x32 inputs LeNet-5 expects, then split 80/20 (stratified). The model is
``jaxseq.models.lenet5()`` (61,706 parameters), trained with Adam (cosine decay) on
randomly shifted (up to 2 pixels) training images; a tqdm bar shows the
epochs and the training curve is saved to ``OUT/lenet_digits.png`` (``--out``, default
``examples/out``).

    python examples/lenet_digits.py            # about 99% test accuracy, ~1 min on CPU
    python examples/lenet_digits.py --epochs 1 --batch-size 256 --out /tmp/lenet   # smoke test
"""
import argparse
import os
import sys
import time

try:   # the optional dependencies: one line saying how to install them, not a traceback
  import matplotlib
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
except ImportError as error:
  missing = {"sklearn": "scikit-learn"}.get((error.name or "sklearn").split(".")[0],
                                            error.name)
  sys.exit(f"lenet_digits.py needs {missing}: pip install {missing} "
           "(or pip install 'jaxseq[examples]')")

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm import tqdm  # noqa: E402

from jaxseq import models, nn  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def load(seed: int):
  digits = load_digits()
  images = digits.images.astype(np.float32)[..., None] / 16.0             # (N, 8, 8, 1)
  images = np.asarray(jax.image.resize(images, (len(images), 32, 32, 1), "bilinear"))
  x_train, x_test, y_train, y_test = train_test_split(
      images, digits.target, test_size=0.2, stratify=digits.target, random_state=seed)
  mean, std = x_train.mean(), x_train.std()
  return (jnp.asarray((x_train - mean) / std), jnp.asarray((x_test - mean) / std),
          jnp.asarray(y_train), jnp.asarray(y_test))


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=OUT, help="folder for the training curve")
  args = parser.parse_args(argv)
  start = time.perf_counter()

  x_train, x_test, y_train, y_test = load(args.seed)
  model = models.lenet5()
  print(nn.summary(model, (32, 32, 1)))
  key, k_init = jax.random.split(jax.random.PRNGKey(args.seed))
  params, state = model.init(k_init, (32, 32, 1))
  schedule = optax.cosine_decay_schedule(
      args.lr, args.epochs * (len(x_train) // args.batch_size))
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)

  def shift(key, x):
    """Random translations by up to 2 pixels (data augmentation)."""
    padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=x.min())
    starts = jax.random.randint(key, (len(x), 2), 0, 5)
    crop = lambda image, start: jax.lax.dynamic_slice(image, (start[0], start[1], 0),
                                                      (32, 32, 1))
    return jax.vmap(crop)(padded, starts)

  def loss_fn(params, state, x, y):
    logits, state = model.apply(params, state, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

  @jax.jit
  def train_epoch(params, state, opt_state, key):
    """One pass over the shuffled training set, as a scan over mini-batches."""
    steps = len(x_train) // args.batch_size
    k_order, k_shift = jax.random.split(key)
    order = jax.random.permutation(k_order, len(x_train))[:steps * args.batch_size]
    batches = order.reshape(steps, args.batch_size)

    def step(carry, inputs):
      params, state, opt_state = carry
      index, k_shift = inputs
      (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, state, shift(k_shift, x_train[index]), y_train[index])
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), state, opt_state), loss

    inputs = (batches, jax.random.split(k_shift, steps))
    (params, state, opt_state), losses = jax.lax.scan(step, (params, state, opt_state),
                                                      inputs)
    return params, state, opt_state, losses.mean()

  @jax.jit
  def accuracy(params, state, x, y):
    logits, _ = model.apply(params, state, x)
    return jnp.mean(jnp.argmax(logits, -1) == y)

  history = {"loss": [], "train": [], "test": []}
  bar = tqdm(range(1, args.epochs + 1), desc="LeNet-5 on digits", unit="epoch",
             disable=None)   # None: no bar when stderr is not a terminal
  for _ in bar:
    key, k_epoch = jax.random.split(key)
    params, state, opt_state, loss = train_epoch(params, state, opt_state, k_epoch)
    history["loss"].append(float(loss))
    history["train"].append(float(accuracy(params, state, x_train, y_train)))
    history["test"].append(float(accuracy(params, state, x_test, y_test)))
    bar.set_postfix(loss=f"{loss:.4f}", test_acc=f"{history['test'][-1]:.4f}")

  os.makedirs(args.out, exist_ok=True)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  epochs = np.arange(1, args.epochs + 1)
  ax_loss.plot(epochs, history["loss"])
  ax_loss.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log",
              title="Training loss")
  ax_acc.plot(epochs, history["train"], label="train")
  ax_acc.plot(epochs, history["test"], label="test")
  ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0.8, 1.0))
  ax_acc.legend()
  fig.tight_layout()
  path = os.path.join(args.out, "lenet_digits.png")
  fig.savefig(path, dpi=120)
  plt.close(fig)
  seconds = time.perf_counter() - start
  print(f"test accuracy {history['test'][-1]:.4f} on {len(x_test)} digits; "
        f"{seconds:.1f} s; curve saved to {path}")
  return {"accuracy": history["test"][-1], "loss": history["loss"][-1], "seconds": seconds}


if __name__ == "__main__":
  main()
