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
from jaxseq import losses
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
