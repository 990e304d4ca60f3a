r"""Long-range benchmark tasks for recurrent networks, and the chance level of each.

Every synthetic generator is a pure function of a PRNG key, ``task(key, batch_size, length,
...) -> (x, y)`` with float32 inputs ``x`` of shape ``(B, T, D)``; it traces under
``jax.jit`` (``batch_size`` and ``length`` static), so a training step can draw its batch
on the device. Each task comes with its *baseline*: the loss of the best predictor that
ignores the long-range dependency, the level a network that learned nothing sits at.

The registry ``TASKS`` (``Task`` records for ``jaxseq.train``):

* ``"adding"``: ``adding``, regression at the last step, baseline MSE ``1/6``;
* ``"copy"``: ``copy_memory`` (``length`` is the delay ``T``), classification at every
  step, baseline ``10 ln 8 / (T + 20)`` nats per step;
* ``"temporal_order"``: ``temporal_order`` (2bit), classification at the last step,
  baseline ``ln 4``;
* ``"sequential_digits"``, ``"permuted_digits"``: ``sequential_digits``, classification
  at the last of 64 steps, baseline ``ln 10``.

References:
  * Hochreiter & Schmidhuber 1997, *Long short-term memory*, Neural Computation 9(8),
    Sec. 5: experiment 4 (adding problem), experiments 6a/6b (temporal order).
  * Pascanu, Mikolov & Bengio 2013, *On the difficulty of training recurrent neural
    networks*: the temporal-order windows scaled with the length.
  * Le, Jaitly & Hinton 2015 (IRNN): adding problem with values in [0, 1], pixel-by-pixel
    MNIST and its permuted variant.
  * Arjovsky, Shah & Bengio 2016, *Unitary evolution recurrent neural networks*: the
    adding problem and the copy-memory task with their baselines.
  * Henaff, Szlam & LeCun 2016: the variable-delay copy task.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq.layers import _check_key

ADDING_VARIANTS = ("arjovsky", "hochreiter1997")
TEMPORAL_ORDER_VARIANTS = ("2bit", "3bit")
KINDS = ("regression_last", "classification_last", "classification_per_step")
METRICS = ("mse", "xent")

ADDING_BASELINE = 1.0 / 6.0
r"""MSE of the best constant prediction (1) on the Arjovsky adding problem:
``Var(U_1 + U_2) = 2 \cdot 1/12 = 1/6`` for two independent ``U[0, 1]`` values."""

COPY_SYMBOLS = 10     # the 10 symbols to remember
COPY_ALPHABET = 8     # drawn from {1, ..., 8}
COPY_BLANK, COPY_MARKER = 0, 9
COPY_CLASSES = 10     # one-hot size of inputs and number of output classes
TEMPORAL_ORDER_SYMBOLS = 6   # X, Y and the distractors a, b, c, d
DIGITS_TEST_SIZE = 360       # of sklearn's 1797 digits; stratified, fixed
DIGITS_SPLIT_SEED = 0
EVAL_SIZE = 512              # sequences in a synthetic task's evaluation set


def _bits(key: jax.Array, batch_size: int, count: int) -> jax.Array:
  """``(batch_size, count)`` random uint32 words from ONE call to the PRNG.

  Every generator draws all its randomness here and derives values from the words:
  threefry is costly to compile on CPU (about half a second per call site), and a
  training step compiles its sampler.
  """
  return jax.random.bits(key, (batch_size, count), jnp.uint32)


def _uniform(bits: jax.Array, low: float = 0.0, high: float = 1.0) -> jax.Array:
  """Floats uniform in ``[low, high)`` from the top 23 bits of each word (as
  ``jax.random.uniform`` does)."""
  mantissa = (bits >> 9) | jnp.uint32(0x3F800000)      # 1.m in [1, 2)
  unit = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0
  return low + (high - low) * unit


def _integers(bits: jax.Array, low: int, high: int) -> jax.Array:
  """Integers uniform in ``[low, high)``, up to a modulo bias below ``(high - low) / 2^32``."""
  return low + (bits % jnp.uint32(high - low)).astype(jnp.int32)


def _batch_and_length(batch_size, length, minimum: int, what: str = "length"):
  batch_size = _checks.positive_int("batch_size", batch_size)
  length = _checks.positive_int(what, length)
  if length < minimum:
    _checks.fail(what, f"an int >= {minimum}", repr(length))
  return batch_size, length


# ----------------------------------------------------------------------------- adding


def adding(key: jax.Array, batch_size: int, length: int,
           variant: str = "arjovsky") -> tuple[jax.Array, jax.Array]:
  r"""The adding problem: output the sum of the two marked values of a sequence.

  Each step is a pair ``(value, marker)``; ``y`` is a function of the two values whose
  marker is 1, read only at the end, so the network must store them across the lag.

  ``variant="arjovsky"`` (Le et al. 2015; Arjovsky et al. 2016): values ``U[0, 1)``;
  exactly one marker 1 at a uniform position in the first half ``[0, T//2)`` and one in
  the second half ``[T//2, T)``; every other marker 0; ``y = X_1 + X_2``. The best
  constant prediction is ``E[y] = 1`` with MSE ``Var(y) = 1/6`` (``ADDING_BASELINE``).

  ``variant="hochreiter1997"`` (Hochreiter & Schmidhuber 1997, experiment 4), with
  ``T = length`` fixed (the paper draws each length from ``[T, T + T/10]``):

  * values ``U[-1, 1)``;
  * the first marked position ``p_1`` is uniform over the first ten steps ``{0..9}``; the
    second ``p_2`` is uniform over the first ``T//2 - 1`` still unmarked steps, i.e.
    ``{0, ..., T//2 - 1} \setminus \{p_1\}``;
  * markers: 1 at ``p_1, p_2``; -1 at the first and the last step unless marked there; 0
    elsewhere;
  * the value at step 0 is set to 0 when step 0 is marked (the paper: "X_1 is set to zero
    in the rare case where the first pair of the sequence got marked"; read here as
    whichever marked value sits at step 0);
  * target ``y = 0.5 + (X_1 + X_2) / 4``, the sum scaled into ``[0, 1]``.

  Its baseline (``adding_baseline(T, "hochreiter1997")``) is ``Var(y)``, in closed form
  ``(2 - P(p_1 = 0) - P(p_2 = 0)) / 48`` with ``P(p_1 = 0) = 1/10`` and
  ``P(p_2 = 0) = (9/10) / (T//2 - 1)``, since a marked value has variance ``1/3`` unless
  zeroed. Requires ``T >= 20`` so that the first ten steps lie in the first half.

  Args:
    key: a PRNG key.
    batch_size: ``B``.
    length: ``T``, the number of steps (>= 2; >= 20 for ``"hochreiter1997"``).
    variant: ``"arjovsky"`` or ``"hochreiter1997"``.

  Returns:
    ``(x, y)``: ``x (B, T, 2)`` float32 (channel 0 values, channel 1 markers),
    ``y (B, 1)`` float32.
  """
  _check_key(key)
  _checks.choice("variant", variant, ADDING_VARIANTS)
  minimum = 2 if variant == "arjovsky" else 20
  batch_size, length = _batch_and_length(batch_size, length, minimum)
  bits = _bits(key, batch_size, length + 2)
  steps = jnp.arange(length)
  half = length // 2
  if variant == "arjovsky":
    values = _uniform(bits[:, :length])
    p1 = _integers(bits[:, length:length + 1], 0, half)
    p2 = _integers(bits[:, length + 1:], half, length)
    marked = (steps == p1) | (steps == p2)
    markers = marked.astype(jnp.float32)
    y = jnp.sum(jnp.where(marked, values, 0.0), axis=1, keepdims=True)
  else:
    values = _uniform(bits[:, :length], -1.0, 1.0)
    p1 = _integers(bits[:, length:length + 1], 0, 10)
    r = _integers(bits[:, length + 1:], 0, half - 1)
    p2 = r + (r >= p1)   # the r-th unmarked step of {0, ..., T//2 - 1}
    marked = (steps == p1) | (steps == p2)
    ends = (steps == 0) | (steps == length - 1)
    markers = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0))
    values = jnp.where(marked & (steps == 0), 0.0, values)
    y = 0.5 + jnp.sum(jnp.where(marked, values, 0.0), axis=1, keepdims=True) / 4.0
  x = jnp.stack([values, markers], axis=-1).astype(jnp.float32)
  return x, y.astype(jnp.float32)


def adding_baseline(length: int, variant: str = "arjovsky") -> float:
  """MSE of the best constant predictor on ``adding(..., length, variant)`` (see there)."""
  _checks.choice("variant", variant, ADDING_VARIANTS)
  if variant == "arjovsky":
    return ADDING_BASELINE
  length = _batch_and_length(1, length, 20)[1]
  p_first_zero = 1.0 / 10.0
  p_second_zero = (9.0 / 10.0) / (length // 2 - 1)
  return (2.0 - p_first_zero - p_second_zero) / 48.0


# ----------------------------------------------------------------------------- copy memory


def copy_memory(key: jax.Array, batch_size: int, delay: int,
                variable: bool = False) -> tuple[jax.Array, jax.Array]:
  r"""The copy-memory task (Arjovsky et al. 2016): recall 10 symbols after a delay.

  Each sequence has ``T + 20`` steps (``T = delay``). Inputs: 10 symbols uniform over
  ``{1, ..., 8}``, then ``T - 1`` blanks (0), the marker (9) and 10 blanks. Targets: blank
  at every step except the last 10, which hold the 10 symbols in order::

      x: s_1 .. s_10  0 ... 0  9  0 ... 0        y: 0 ... 0 ... 0  s_1 .. s_10
         10 steps     T-1      1  10 steps           T+10 steps    10 steps

  ``variable=True`` (the variable-delay task of Henaff et al. 2016): each sequence gets
  its own delay ``d`` uniform over ``{1, ..., T}``: the marker sits at step ``9 + d``, the
  symbols are due at steps ``10 + d, ..., 19 + d``, and every other step is blank in
  ``x`` and ``y``; the length stays ``T + 20`` (``d = T`` is the fixed task).

  The baseline ``copy_memory_baseline(T)`` is the per-step cross-entropy of the strategy
  that knows *when* the symbols are due but not *which*: blank with certainty elsewhere,
  uniform over the 8 symbols at the 10 recall steps.

  Args:
    key: a PRNG key.
    batch_size: ``B``.
    delay: ``T >= 1``.
    variable: per-example delays (see above).

  Returns:
    ``(x, y)``: one-hot ``x (B, T + 20, 10)`` float32 and integer labels
    ``y (B, T + 20)`` int32 in ``{0, ..., 8}``.
  """
  _check_key(key)
  batch_size, delay = _batch_and_length(batch_size, delay, 1, "delay")
  if not isinstance(variable, bool):
    _checks.fail("variable", "a bool", repr(variable), TypeError)
  num_steps = delay + 2 * COPY_SYMBOLS
  bits = _bits(key, batch_size, COPY_SYMBOLS + 1)
  symbols = _integers(bits[:, :COPY_SYMBOLS], 1, COPY_ALPHABET + 1)
  if variable:
    d = _integers(bits[:, COPY_SYMBOLS:], 1, delay + 1)
  else:
    d = jnp.full((batch_size, 1), delay)
  steps = jnp.arange(num_steps)
  marker = COPY_SYMBOLS - 1 + d        # step of the marker
  recall = steps - (marker + 1)        # index into the symbols at the recall steps
  recalling = (recall >= 0) & (recall < COPY_SYMBOLS)
  padded = jnp.pad(symbols, ((0, 0), (0, num_steps - COPY_SYMBOLS)))
  x_ids = jnp.where(steps == marker, COPY_MARKER, padded)
  y = jnp.where(recalling, jnp.take_along_axis(padded, jnp.clip(recall, 0), axis=1),
                COPY_BLANK)
  x = jax.nn.one_hot(x_ids, COPY_CLASSES, dtype=jnp.float32)
  return x, y.astype(jnp.int32)


def copy_memory_baseline(delay: int) -> float:
  r"""``10 \ln 8 / (T + 20)``: cross-entropy per step of the memoryless strategy."""
  delay = _batch_and_length(1, delay, 1, "delay")[1]
  return COPY_SYMBOLS * math.log(COPY_ALPHABET) / (delay + 2 * COPY_SYMBOLS)


# ----------------------------------------------------------------------------- temporal order

_ORDER_WINDOWS = {"2bit": (1, 5), "3bit": (1, 3, 6)}   # window starts, in units of T // 10


def temporal_order(key: jax.Array, batch_size: int, length: int,
                   variant: str = "2bit") -> tuple[jax.Array, jax.Array]:
  r"""The temporal-order problem: classify the order of two (three) relevant symbols.

  Hochreiter & Schmidhuber 1997, experiments 6a (``"2bit"``) and 6b (``"3bit"``), in the
  fixed-length form of Pascanu et al. 2013: every step is a distractor uniform over
  ``{a, b, c, d}`` except at two (three) positions, which hold ``X`` or ``Y`` with
  probability 1/2 each. With ``w = floor(T / 10)`` the positions are uniform in the
  windows ``[w, 2w)`` and ``[5w, 6w)`` (2bit), or ``[w, 2w)``, ``[3w, 4w)``,
  ``[6w, 7w)`` (3bit). (The 1997 paper adds start/end symbols and draws ``T`` in
  ``[100, 110]`` with windows ``[10, 20]``, ``[50, 60]``; ``[10, 20]``, ``[33, 43]``,
  ``[66, 76]``.)

  Symbols are one-hot: ``X = 0``, ``Y = 1``, ``a, b, c, d = 2, 3, 4, 5``. The class is
  the sequence of relevant symbols read as a binary number, first symbol most
  significant, ``X = 0``, ``Y = 1``: 2bit ``XX, XY, YX, YY -> 0, 1, 2, 3`` (the paper's
  ``Q, R, S, U``), 3bit ``XXX -> 0, ..., YYY -> 7``. All classes are equally likely, so
  the baseline cross-entropy is ``ln 4`` (``ln 8``).

  Args:
    key: a PRNG key.
    batch_size: ``B``.
    length: ``T >= 10``.
    variant: ``"2bit"`` or ``"3bit"``.

  Returns:
    ``(x, y)``: one-hot ``x (B, T, 6)`` float32, labels ``y (B,)`` int32.
  """
  _check_key(key)
  _checks.choice("variant", variant, TEMPORAL_ORDER_VARIANTS)
  batch_size, length = _batch_and_length(batch_size, length, 10)
  starts = _ORDER_WINDOWS[variant]
  width = length // 10
  k = len(starts)
  bits = _bits(key, batch_size, length + 2 * k)
  ids = _integers(bits[:, :length], 2, TEMPORAL_ORDER_SYMBOLS)
  offsets = _integers(bits[:, length:length + k], 0, width)
  positions = offsets + width * jnp.array(starts)
  symbols = (bits[:, length + k:] >> 31).astype(jnp.int32)   # X = 0 or Y = 1, the top bit
  steps = jnp.arange(length)
  for i in range(len(starts)):
    ids = jnp.where(steps == positions[:, i:i + 1], symbols[:, i:i + 1], ids)
  weights = 2 ** jnp.arange(k - 1, -1, -1)
  y = jnp.sum(symbols * weights, axis=1)
  x = jax.nn.one_hot(ids, TEMPORAL_ORDER_SYMBOLS, dtype=jnp.float32)
  return x, y.astype(jnp.int32)


# ----------------------------------------------------------------------------- digits


@functools.cache
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  # The digits ship inside scikit-learn's wheel: no download.
  datasets = _checks.require("sklearn.datasets", "scikit-learn", "sequential_digits")
  model_selection = _checks.require("sklearn.model_selection", "scikit-learn",
                                    "sequential_digits")
  train_test_split = model_selection.train_test_split
  data = datasets.load_digits()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=y)
  return x_train, y_train, x_test, y_test


def digits_permutation(seed: int = 0) -> np.ndarray:
  """The fixed pixel order of the permuted task: a permutation of ``range(64)``."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    _checks.fail("seed", "an int >= 0", repr(seed), TypeError)
  if seed < 0:
    _checks.fail("seed", "an int >= 0", repr(seed))
  return np.random.default_rng(int(seed)).permutation(64)


def sequential_digits(split: str = "train", permute: bool = False,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits read pixel by pixel: a small pixel-MNIST (Le et al. 2015).

  The 1797 images of ``sklearn.datasets.load_digits`` (UCI optical digits, bundled with
  scikit-learn) are scaled from ``{0..16}`` to ``[0, 1]`` and flattened row by row into
  sequences of 64 one-pixel steps. The split is fixed: 360 test images (stratified by
  class, ``random_state=0``), 1437 training images.

  Args:
    split: ``"train"`` or ``"test"``.
    permute: read the pixels in a fixed random order (the permuted task), the same
      for every image and both splits.
    seed: seed of that order (``digits_permutation(seed)``); unused without ``permute``.

  Returns:
    ``(x, y)``: ``x (N, 64, 1)`` float32 in ``[0, 1]``, ``y (N,)`` int32 labels. NumPy
    arrays (a fresh copy).
  """
  _checks.choice("split", split, ("train", "test"))
  if not isinstance(permute, bool):
    _checks.fail("permute", "a bool", repr(permute), TypeError)
  order = digits_permutation(seed) if permute else np.arange(64)
  x_train, y_train, x_test, y_test = _digits_split()
  x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
  return x[:, order, None].copy(), y.copy()


# ----------------------------------------------------------------------------- registry


class Task(NamedTuple):
  """A benchmark task as the training loop sees it.

  Attributes:
    name: the registry name.
    sample: ``sample(key, batch_size, length) -> (x, y)``, a random training batch;
      traceable under ``jax.jit`` with static ``batch_size`` and ``length``.
    input_size: the feature size of ``x``.
    output_size: regression outputs, or number of classes.
    kind: ``"regression_last"`` (``y (B, output_size)`` from the last step),
      ``"classification_last"`` (labels ``y (B,)`` from the last step) or
      ``"classification_per_step"`` (labels ``y (B, T')`` at every step).
    baseline: ``baseline(length) -> float``, the metric of the best predictor that does
      not use the long-range dependency.
    metric: ``"mse"`` (mean squared error, no 1/2 factor) or ``"xent"`` (mean softmax
      cross-entropy per prediction, nats).
    evaluation: ``evaluation(key, length) -> (x, y)``, a fixed evaluation set (for the
      digits the test split; the key is unused).
    fixed_length: the sequence length when the task fixes it (64 for the digits, whose
      ``length`` argument is ignored), else ``None``.
  """
  name: str
  sample: Callable[[jax.Array, int, int], tuple[jax.Array, jax.Array]]
  input_size: int
  output_size: int
  kind: str
  baseline: Callable[[int], float]
  metric: str
  evaluation: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]
  fixed_length: int | None = None


def _synthetic_evaluation(sample):
  def evaluation(key: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    return sample(key, EVAL_SIZE, length)
  return evaluation


def _digits_task(name: str, permute: bool) -> Task:
  def sample(key: jax.Array, batch_size: int, length: int = 64):
    _check_key(key)
    batch_size = _checks.positive_int("batch_size", batch_size)
    x, y = sequential_digits("train", permute)
    if batch_size > x.shape[0]:
      _checks.fail("batch_size", f"at most {x.shape[0]} (the training images)", batch_size)
    # Without replacement within a batch; a jnp constant, so it traces under jit.
    index = jax.random.choice(key, x.shape[0], (batch_size,), replace=False)
    return jnp.asarray(x)[index], jnp.asarray(y)[index]

  def evaluation(key: jax.Array, length: int = 64):
    x, y = sequential_digits("test", permute)
    return jnp.asarray(x), jnp.asarray(y)

  return Task(name, sample, 1, 10, "classification_last", lambda length: math.log(10),
              "xent", evaluation, fixed_length=64)


def _make_tasks() -> dict[str, Task]:
  def adding_sample(key, batch_size, length):
    return adding(key, batch_size, length)

  def copy_sample(key, batch_size, length):
    return copy_memory(key, batch_size, length)

  def order_sample(key, batch_size, length):
    return temporal_order(key, batch_size, length)

  return {
      "adding": Task("adding", adding_sample, 2, 1, "regression_last",
                     lambda length: ADDING_BASELINE, "mse",
                     _synthetic_evaluation(adding_sample)),
      "copy": Task("copy", copy_sample, COPY_CLASSES, COPY_CLASSES,
                   "classification_per_step", copy_memory_baseline, "xent",
                   _synthetic_evaluation(copy_sample)),
      "temporal_order": Task("temporal_order", order_sample, TEMPORAL_ORDER_SYMBOLS, 4,
                             "classification_last", lambda length: math.log(4), "xent",
                             _synthetic_evaluation(order_sample)),
      "sequential_digits": _digits_task("sequential_digits", permute=False),
      "permuted_digits": _digits_task("permuted_digits", permute=True),
  }


TASKS: dict[str, Task] = _make_tasks()
"""The registry: ``"adding"`` (Arjovsky variant), ``"copy"`` (``length`` is the delay, so
sequences have ``length + 20`` steps), ``"temporal_order"`` (2bit),
``"sequential_digits"`` and ``"permuted_digits"`` (permutation seed 0)."""
