"""Bad input fails early, in jaxseq's own Python checks, with a ValueError/TypeError whose
message starts with the argument's name ("argument: expected X, got Y"), before tracing
reaches XLA: the exception is exactly ValueError/TypeError (not a jax error type) and it
is raised from a frame inside the jaxseq package."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq
from jaxseq import gradflow, losses
from jaxseq.layers import bidirectional, recurrent, stack
from jaxseq.sequence import unroll

JAXSEQ_DIR = os.path.dirname(jaxseq.__file__)
KEY = jax.random.PRNGKey(0)
B, T, D, H = 2, 5, 3, 4
LSTM = jaxseq.lstm(H)
PARAMS = LSTM.init(KEY, D)
XS = np.ones((B, T, D), np.float32)
GOOD_CARRY = LSTM.initial_carry(PARAMS, (B,))
DROPPY = recurrent(LSTM, dropout=0.5, recurrent_dropout=0.5)
BI = bidirectional(LSTM)
BI_PARAMS = BI.init(KEY, D)
STACK = stack(LSTM, jaxseq.lstm(H))
STACK_PARAMS = STACK.init(KEY, D)
LOGITS = np.zeros((B, T, 3), np.float32)
LABELS = np.zeros((B, T), np.int32)
LENGTHS = np.array([5, 2], np.int32)

run = lambda **kw: unroll(LSTM, PARAMS, kw.pop("xs", XS), **kw)
X_T = XS[:, 0]
GRU = jaxseq.gru(H)
GRU_PARAMS = GRU.init(KEY, D)
# A hand-made cell (no spec): its output size is known only from an input.
HAND_MADE = jaxseq.Cell(jaxseq.gru(H + 1).init, jaxseq.gru(H + 1).initialize_carry,
                        jaxseq.gru(H + 1).step)
HAND_MADE_BI = bidirectional(LSTM, HAND_MADE, merge="sum")


def step_with(dtype, cell=LSTM, params=PARAMS):
  """``cell.step`` from its zero carry cast to ``dtype`` (under x64, so float64 stays)."""
  with jax.enable_x64(True):
    carry = cell.initialize_carry(params, X_T.shape)
    return cell.step(params, jax.tree.map(lambda c: c.astype(dtype), carry), X_T)


CASES = [
    # unroll: xs
    ("xs-feature-size", lambda: run(xs=np.ones((B, T, D + 1), np.float32)), ValueError,
     r"^xs: expected feature size 3 .* got feature size 4"),
    ("xs-rank", lambda: run(xs=np.ones((T,), np.float32)), ValueError,
     r"^xs: expected an array of rank >= 2"),
    ("xs-integer", lambda: run(xs=np.ones((B, T, D), np.int32)), TypeError,
     r"^xs: expected a floating-point array"),
    ("xs-no-steps", lambda: run(xs=np.ones((B, 0, D), np.float32)), ValueError,
     r"^xs: expected at least one time step"),
    # unroll: lengths
    ("lengths-too-long", lambda: run(lengths=np.array([5, 6])), ValueError,
     r"^lengths: expected values in \[0, 5\]"),
    ("lengths-negative", lambda: run(lengths=np.array([-1, 2])), ValueError,
     r"^lengths: expected values in \[0, 5\]"),
    ("lengths-float", lambda: run(lengths=np.array([1.0, 2.0])), TypeError,
     r"^lengths: expected an integer array"),
    ("lengths-bool", lambda: run(lengths=np.array([True, False])), TypeError,
     r"^lengths: expected an integer array"),
    ("lengths-batch-size", lambda: run(lengths=np.array([1, 2, 3])), ValueError,
     r"^lengths: expected shape \(2,\)"),
    ("lengths-batch-axes", lambda: run(xs=np.ones((2, 3, T, D), np.float32),
                                       lengths=np.ones((3, 2), np.int32)), ValueError,
     r"^lengths: expected shape \(2, 3\)"),
    # unroll: params, carry, options
    ("params-other-cell", lambda: unroll(LSTM, jaxseq.gru(H).init(KEY, D), XS), ValueError,
     r"^params: expected params of lstm"),
    ("params-other-hidden-size", lambda: unroll(LSTM, jaxseq.lstm(H + 1).init(KEY, D), XS),
     ValueError, r"^params: expected params of lstm"),
    ("carry-batch", lambda: run(carry=LSTM.initial_carry(PARAMS, (B + 1,))), ValueError,
     r"^carry: expected a carry shaped"),
    ("carry-structure", lambda: run(carry=np.zeros((B, H), np.float32)), ValueError,
     r"^carry: expected a carry shaped"),
    ("carry-hidden-size", lambda: run(carry=jaxseq.LSTMState(np.zeros((B, H + 1)),
                                                             np.zeros((B, H + 1)))),
     ValueError, r"^carry: expected a carry shaped"),
    # cell.step: the carry's dtypes (unroll refuses the same carries)
    ("step-carry-float64", lambda: step_with(jnp.float64), TypeError,
     r"^carry: expected the lstm carry in the dtypes its step returns for x_t of dtype "
     r"float32 \(float32, float32\), got dtypes \(float64, float64\)$"),
    ("step-carry-int", lambda: step_with(jnp.int32), TypeError,
     r"^carry: expected the lstm carry .* got dtypes \(int32, int32\)$"),
    ("step-carry-float16", lambda: step_with(jnp.float16), TypeError,
     r"^carry: expected the lstm carry .* got dtypes \(float16, float16\)$"),
    ("step-carry-float16-gru", lambda: step_with(jnp.float16, GRU, GRU_PARAMS), TypeError,
     r"^carry: expected the gru carry .* \(float32\), got dtypes \(float16\)$"),
    ("step-carry-bfloat16-min-gru", lambda: step_with(
        jnp.bfloat16, jaxseq.min_gru(H), jaxseq.min_gru(H).init(KEY, D)), TypeError,
     r"^carry: expected the min_gru carry .* got dtypes \(bfloat16\)$"),
    ("remat-zero", lambda: run(remat=0), ValueError, r"^remat: expected a positive int"),
    ("remat-float", lambda: run(remat=2.0), TypeError, r"^remat: expected a positive int"),
    ("unroll-zero", lambda: run(unroll=0), ValueError, r"^unroll: expected a positive int"),
    ("reverse-not-bool", lambda: run(reverse="yes"), TypeError, r"^reverse: expected a bool"),
    ("time-major-not-bool", lambda: run(time_major=1), TypeError, r"^time_major: expected"),
    # cell factories
    ("hidden-size-zero-rnn", lambda: jaxseq.simple_rnn(0), ValueError, r"^hidden_size: "),
    ("hidden-size-zero-lstm", lambda: jaxseq.lstm(0), ValueError, r"^hidden_size: "),
    ("hidden-size-negative-gru", lambda: jaxseq.gru(-3), ValueError, r"^hidden_size: "),
    ("hidden-size-float", lambda: jaxseq.gru(2.5), TypeError, r"^hidden_size: "),
    ("proj-size-negative", lambda: jaxseq.lstm(H, proj_size=-1), ValueError,
     r"^proj_size: expected a positive int, got -1"),
    ("input-size-zero", lambda: LSTM.init(KEY, 0), ValueError, r"^input_size: "),
    # layers: options
    ("merge-unknown", lambda: bidirectional(LSTM, merge="cat"), ValueError,
     r"^merge: expected one of 'concat'.*got 'cat'"),
    ("merge-sum-sizes", lambda: bidirectional(LSTM, jaxseq.gru(H + 1), merge="sum"),
     ValueError, r"^merge: expected 'sum' of two directions with outputs of one feature size "
     r".*got forward output size 4 and backward output size 5$"),
    ("merge-mul-projected-lstm", lambda: bidirectional(jaxseq.lstm(H, proj_size=2), LSTM,
                                                        merge="mul"),
     ValueError, r"^merge: .* got forward output size 2 and backward output size 4$"),
    ("merge-mean-stack", lambda: bidirectional(stack(LSTM, jaxseq.gru(H + 2)),
                                               bidirectional(LSTM), merge="mean"),
     ValueError, r"^merge: .* got forward output size 6 and backward output size 8$"),
    ("merge-sum-hand-made-at-apply", lambda: HAND_MADE_BI.apply(HAND_MADE_BI.init(KEY, D), XS),
     ValueError, r"^merge: expected 'sum' .* got forward outputs \(2, 5, 4\) and backward "
     r"outputs \(2, 5, 5\)$"),
    ("dropout-one", lambda: recurrent(LSTM, dropout=1.0), ValueError,
     r"^dropout: expected a float in \[0, 1\), got 1.0"),
    ("dropout-negative", lambda: recurrent(LSTM, dropout=-0.1), ValueError, r"^dropout: "),
    ("dropout-nan", lambda: recurrent(LSTM, dropout=float("nan")), ValueError, r"^dropout: "),
    ("dropout-string", lambda: recurrent(LSTM, dropout="0.5"), TypeError, r"^dropout: "),
    ("recurrent-dropout-big", lambda: recurrent(LSTM, recurrent_dropout=1.5), ValueError,
     r"^recurrent_dropout: "),
    ("stack-dropout", lambda: stack(LSTM, LSTM, dropout=2), ValueError, r"^dropout: "),
    ("stack-residual-not-bool", lambda: stack(LSTM, residual=1), TypeError, r"^residual: "),
    ("stack-empty", lambda: stack(), ValueError, r"^layers: expected at least one layer"),
    ("stack-not-a-layer", lambda: stack(LSTM, "gru"), TypeError, r"^layers\[1\]: "),
    ("recurrent-not-a-cell", lambda: recurrent("lstm"), TypeError, r"^cell: expected"),
    ("bidirectional-bw-dense", lambda: bidirectional(LSTM, jaxseq.nn.Dense(3)), TypeError,
     r"^bw: expected a sequence layer"),
    ("residual-size-change", lambda: stack(LSTM, jaxseq.gru(H + 1), residual=True).init(KEY, D),
     ValueError, r"^residual: expected layer 1 to keep the feature size 4, got output size 5"),
    # layers: keys
    ("key-int", lambda: DROPPY.apply(PARAMS, XS, key=3), TypeError, r"^key: expected"),
    ("key-float-array", lambda: DROPPY.apply(PARAMS, XS, key=jnp.array([1.0, 2.0])),
     TypeError, r"^key: expected .* got an array of dtype float32"),
    ("key-batch", lambda: DROPPY.apply(PARAMS, XS, key=jax.random.split(KEY, 3)), TypeError,
     r"^key: expected a single PRNG key"),
    ("key-without-dropout", lambda: recurrent(LSTM).apply(PARAMS, XS, key=np.zeros(3)),
     TypeError, r"^key: "),
    ("key-bidirectional", lambda: BI.apply(BI_PARAMS, XS, key="seed"), TypeError, r"^key: "),
    ("key-stack", lambda: STACK.apply(STACK_PARAMS, XS, key=1.5), TypeError, r"^key: "),
    # layers: inputs on the dropout path
    ("dropout-xs-rank", lambda: DROPPY.apply(PARAMS, np.ones(T, np.float32), key=KEY),
     ValueError, r"^xs: expected an array of rank >= 2"),
    ("dropout-xs-integer", lambda: DROPPY.apply(PARAMS, np.ones((B, T, D), np.int32), key=KEY),
     TypeError, r"^xs: "),
    ("dropout-params", lambda: DROPPY.apply({"w_ih": PARAMS["w_ih"]}, XS, key=KEY), ValueError,
     r"^params: expected params of lstm"),
    ("dropout-lengths", lambda: DROPPY.apply(PARAMS, XS, key=KEY, lengths=np.array([9, 1])),
     ValueError, r"^lengths: "),
    # layers: params and carry structure
    ("bidirectional-params", lambda: BI.apply(PARAMS, XS), ValueError,
     r"^params: expected a dict with keys \['forward', 'backward'\]"),
    ("bidirectional-carry", lambda: BI.apply(BI_PARAMS, XS, carry={"forward": GOOD_CARRY}),
     ValueError, r"^carry: expected a dict with keys"),
    ("bidirectional-carry-shape", lambda: BI.apply(
        BI_PARAMS, XS, carry={"forward": GOOD_CARRY, "backward": np.zeros((B, H))}),
     ValueError, r"^carry: expected a carry shaped"),
    ("bidirectional-xs", lambda: BI.apply(BI_PARAMS, XS[..., :2]), ValueError, r"^xs: "),
    ("stack-params-length", lambda: STACK.apply(STACK_PARAMS[:1], XS), ValueError,
     r"^params: expected a list of 2"),
    ("stack-params-type", lambda: STACK.apply(PARAMS, XS), ValueError,
     r"^params: expected a list of 2"),
    ("stack-carry-length", lambda: STACK.apply(STACK_PARAMS, XS, carry=[GOOD_CARRY]),
     ValueError, r"^carry: expected a list of 2"),
    ("stack-carry-shape", lambda: STACK.apply(STACK_PARAMS, XS,
                                              carry=[GOOD_CARRY, np.zeros((B, H))]),
     ValueError, r"^carry: expected a carry shaped"),
    # gradflow
    ("norm-ratios-log-norms-without-log", lambda: gradflow.norm_ratios(
        np.log([4.0, 2.0, 0.5])), ValueError,
     r"^norms: expected non-negative norms \(pass log=True .*\), got values down to -0.69"),
    # losses
    ("reduction-ce", lambda: losses.softmax_cross_entropy(LOGITS, LABELS, reduction="avg"),
     ValueError, r"^reduction: expected one of 'mean', 'sum', 'none', got 'avg'"),
    ("reduction-se", lambda: losses.squared_error(LOGITS, LOGITS, reduction="avg"),
     ValueError, r"^reduction: "),
    ("loss-lengths-too-long", lambda: losses.softmax_cross_entropy(
        LOGITS, LABELS, lengths=np.array([6, 1])), ValueError, r"^lengths: expected values"),
    ("loss-lengths-negative", lambda: losses.squared_error(
        LOGITS, LOGITS, lengths=np.array([-1, 1])), ValueError, r"^lengths: expected values"),
    ("loss-lengths-float", lambda: losses.squared_error(
        LOGITS, LOGITS, lengths=np.array([1.0, 1.0])), TypeError, r"^lengths: "),
    ("loss-lengths-shape", lambda: losses.squared_error(
        LOGITS, LOGITS, lengths=np.array([1, 1, 1])), ValueError, r"^lengths: expected shape"),
    ("loss-mask-shape", lambda: losses.squared_error(
        LOGITS, LOGITS, mask=np.ones((B, T + 1), bool)), ValueError, r"^mask: expected shape"),
    ("loss-lengths-and-mask", lambda: losses.squared_error(
        LOGITS, LOGITS, lengths=LENGTHS, mask=np.ones((B, T), bool)), ValueError,
     r"^lengths, mask: expected at most one"),
    ("labels-shape", lambda: losses.softmax_cross_entropy(LOGITS, LABELS[:, :-1]), ValueError,
     r"^labels: expected integer labels of shape \(2, 5\)"),
    ("labels-one-hot-shape", lambda: losses.softmax_cross_entropy(LOGITS, LOGITS[..., :2]),
     ValueError, r"^labels: expected one-hot labels"),
    ("logits-integer", lambda: losses.softmax_cross_entropy(LABELS[..., None], LABELS),
     TypeError, r"^logits: "),
    ("targets-shape", lambda: losses.squared_error(LOGITS, LOGITS[:1]), ValueError,
     r"^targets: expected shape \(2, 5, 3\)"),
    ("last-valid-lengths-float", lambda: losses.last_valid(LOGITS, np.array([1.0, 2.0])),
     TypeError, r"^lengths: expected an integer array"),
    ("last-valid-lengths-too-long", lambda: losses.last_valid(LOGITS, np.array([1, 6])),
     ValueError, r"^lengths: expected values in \[0, 5\]"),
    ("last-valid-lengths-shape", lambda: losses.last_valid(LOGITS, np.array([1])),
     ValueError, r"^lengths: expected shape \(2,\)"),
]


def check_raised_by_jaxseq(excinfo, error):
  """Exactly ``error`` (not a jax error subclass), raised by a frame in jaxseq itself."""
  assert type(excinfo.value) is error
  assert not isinstance(excinfo.value, jax.errors.JaxRuntimeError)
  raising = excinfo.traceback[-1]
  assert os.path.dirname(str(raising.path)).startswith(JAXSEQ_DIR), raising.path


@pytest.mark.parametrize("thunk, error, pattern", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_raises_named_error_early(thunk, error, pattern):
  with pytest.raises(error, match=pattern) as excinfo:
    thunk()
  check_raised_by_jaxseq(excinfo, error)
  assert ": expected " in str(excinfo.value)


@pytest.mark.parametrize("name, args, error, pattern", [
    ("xs", (np.ones((B, T, D + 1), np.float32), LENGTHS), ValueError, r"^xs: "),
    ("lengths-float", (XS, np.array([1.0, 2.0], np.float32)), TypeError, r"^lengths: "),
    ("lengths-shape", (XS, np.array([1, 2, 3], np.int32)), ValueError, r"^lengths: "),
])
def test_errors_are_raised_while_tracing_under_jit(name, args, error, pattern):
  """Under jit the same checks fire at trace time, in Python, not in XLA."""
  fn = jax.jit(lambda xs, lengths: unroll(LSTM, PARAMS, xs, lengths=lengths))
  with pytest.raises(error, match=pattern) as excinfo:
    fn(*args)
  check_raised_by_jaxseq(excinfo, error)


def test_unknown_merge_is_rejected_at_construction_not_at_apply():
  with pytest.raises(ValueError, match=r"^merge: "):
    bidirectional(LSTM, merge="average")
  assert callable(bidirectional(LSTM, merge=lambda a, b: a).apply)


def test_step_refuses_a_float64_carry_under_jit_too(x64):
  """The dtype check fires while tracing, in jaxseq's Python."""
  carry = jax.tree.map(lambda c: c.astype(jnp.float64), LSTM.initialize_carry(PARAMS, X_T.shape))
  with pytest.raises(TypeError, match=r"^carry: expected the lstm carry in the dtypes") as exc:
    jax.jit(LSTM.step)(PARAMS, carry, X_T)
  check_raised_by_jaxseq(exc, TypeError)


def test_step_accepts_the_carries_whose_dtypes_change_nothing(x64):
  """A float64 input widens a float32 cell: the float32 zero carry and the carry it becomes
  (h in float64, the LSTM cell state kept in its own dtype, as unroll's default carry) both
  step. A float32 carry into a bfloat16 cell is cast down by the step
  (Flax's convention for a bfloat16 GRUCell): it steps, to what the bfloat16 carry gives."""
  x64_t = jnp.asarray(X_T, jnp.float64)
  carry, _ = LSTM.step(PARAMS, LSTM.initialize_carry(PARAMS, x64_t.shape), x64_t)
  assert carry.h.dtype == jnp.float64 and carry.c.dtype == jnp.float32
  _, unrolled = unroll(LSTM, PARAMS, x64_t[:, None])
  assert jax.tree.map(lambda c: c.dtype, unrolled) == jax.tree.map(lambda c: c.dtype, carry)
  carry, y = LSTM.step(PARAMS, carry, x64_t)
  assert y.dtype == jnp.float64
  half = jaxseq.gru(H, dtype=jnp.bfloat16)
  h16 = jax.random.normal(KEY, (B, H)).astype(jnp.bfloat16)
  h_from32, _ = half.step(GRU_PARAMS, h16.astype(jnp.float32), X_T)
  h_from16, _ = half.step(GRU_PARAMS, h16, X_T)
  assert h_from32.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.float32(h_from32), np.float32(h_from16))


def test_merge_of_equal_sizes_builds_and_unknown_sizes_wait_for_the_input():
  layer = bidirectional(jaxseq.lstm(H, proj_size=3), jaxseq.gru(3), merge="sum")
  assert layer.apply(layer.init(KEY, D), XS)[0].shape == (B, T, 3)
  bidirectional(stack(LSTM, jaxseq.gru(2 * H)), bidirectional(LSTM, GRU), merge="mean")
  bidirectional(HAND_MADE, LSTM, merge="sum")  # builds; apply compares (CASES above)
  bidirectional(LSTM, jaxseq.gru(H + 1), merge="concat")
  bidirectional(LSTM, jaxseq.gru(H + 1), merge=lambda a, b: a)


def test_norm_ratios_of_zero_norms_are_their_limits():
  """0 where only the numerator is 0, inf where only the denominator is, nan for 0/0 (no
  gradient at either step: no ratio); log=True gives exactly their logs."""
  norms = np.array([[4.0, 2.0, 0.0, 0.0, 5.0, 0.0],
                    [1.0, 0.0, 3.0, 0.0, 0.0, 0.0]])
  want = np.array([[4 / 2, np.inf, np.nan, 0.0, np.inf],     # by hand
                   [np.inf, 0.0, np.inf, np.nan, np.nan]])
  np.testing.assert_array_equal(np.asarray(gradflow.norm_ratios(norms)), want)
  with np.errstate(divide="ignore"):
    logs, log_want = np.log(norms), np.log(want)
  np.testing.assert_array_equal(np.asarray(gradflow.norm_ratios(logs, log=True)),
                                log_want.astype(np.float32))
  # The padded tail of grad_norms (norm 0 there) gives nan ratios, not vanishing ones.
  cell = jaxseq.simple_rnn(3)
  params = cell.init(KEY, D)
  norms = gradflow.grad_norms(cell, params, XS, lambda ys: (ys ** 2).sum(),
                              lengths=np.array([5, 3]), per_example=True)
  ratios = np.asarray(gradflow.norm_ratios(norms))
  assert np.isnan(ratios[1, 3]) and np.isinf(ratios[1, 2]) and np.isfinite(ratios[0]).all()


def test_float16_is_a_compute_dtype_as_bfloat16_is():
  """``dtype=jnp.float16`` computes the gates in float16 and keeps the LSTM cell state in
  float32 (the bfloat16 path); a float16 input to a float32 cell (``dtype=None``) is
  promoted by JAX's rule, as a bfloat16 one is: exactly the float32 cell on the float16
  values, never a float16 computation passed off as a float32 one."""
  xs = np.asarray(jax.random.normal(KEY, (B, T, D)), np.float32)
  x16 = jnp.asarray(xs, jnp.float16)
  exact, _ = unroll(LSTM, PARAMS, x16.astype(jnp.float32))       # the float32 oracle
  half = jaxseq.lstm(H, dtype=jnp.float16)
  ys16, carry16 = unroll(half, PARAMS, x16)
  assert ys16.dtype == carry16.h.dtype == jnp.float16 and carry16.c.dtype == jnp.float32
  # float16 keeps 11 significant bits (relative 2**-11 per rounding), outputs in [-1, 1].
  np.testing.assert_allclose(np.float32(ys16), exact, atol=4e-3)
  carry = half.initialize_carry(PARAMS, x16[:, 0].shape)
  for t in range(T):
    carry, y = half.step(PARAMS, carry, x16[:, t])
    assert y.dtype == jnp.float16 and carry.c.dtype == jnp.float32
    np.testing.assert_allclose(np.float32(y), np.float32(ys16[:, t]), atol=2e-3)
  for low in (jnp.float16, jnp.bfloat16):
    promoted, carry = unroll(LSTM, PARAMS, xs.astype(low))
    assert promoted.dtype == carry.c.dtype == jnp.float32
    want, _ = unroll(LSTM, PARAMS, jnp.asarray(xs, low).astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(promoted), np.asarray(want))
