"""The cuDNN LSTM path (``jaxseq.kernels.cudnn``) on CPU.

The op itself, ``jax.experimental.rnn.lstm``, needs a GPU; here ``cudnn._LSTM`` is replaced
by a stand-in with its signature built on ``rnn.lstm_ref`` (JAX's CPU reference of the
op) and ``rnn.unpack_lstm_weights`` (JAX's reading of cuDNN's weight layout), so weight
packing, batch flattening, lengths and reverse are all checked against the oracle
``jaxseq.unroll(..., kernel="reference")``: values and reverse-mode gradients.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import jaxseq
from jaxseq.cells.base import LSTMState
from jaxseq.kernels import cudnn

KEY = jax.random.PRNGKey(0)
T, D, H = 6, 3, 5
BATCH = (2, 3)
# Tiny sizes: compiling, not running, is the cost; these options halve it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class StandIn:
  """``rnn.lstm``'s signature on ``rnn.lstm_ref``; records the lengths it was given, which
  must lie in ``[1, T]``, all JAX tests the op with (``lstm_ref`` gives a wrong carry for 0)."""

  def __init__(self):
    self.seq_lengths = []

  def __call__(self, x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers,
               dropout, bidirectional, precision=None):
    assert x.ndim == 3 and x.shape[2] == input_size  # batch-first (B, T, D)
    assert h_0.shape == c_0.shape == (1, x.shape[0], hidden_size)
    assert weights.shape == (rnn.get_num_params_in_lstm(input_size, hidden_size, 1, False),)
    assert seq_lengths.dtype == jnp.int32 and seq_lengths.shape == (x.shape[0],)
    jax.debug.callback(lambda l: self.seq_lengths.append(np.asarray(l)), seq_lengths)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size,
                                                     num_layers, bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size,
                        hidden_size, num_layers, dropout, bidirectional)


@pytest.fixture
def stand_in(monkeypatch):
  op = StandIn()
  monkeypatch.setattr(cudnn, "_LSTM", op)
  return op


def _setup(cell, batch_shape=BATCH, lengths=None, seed=0):
  """Float32 params, time-major ``xs``, a non-zero carry and ``lengths``, drawn with NumPy
  (eager JAX ops would each compile, which dominates on CPU)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  spec = cell.spec
  params = {"w_ih": 0.4 * normal(D, 4 * H), "w_hh": 0.4 * normal(H, 4 * H)}
  if spec.use_bias:
    # Non-zero biases, the forget gate's shifted as forget_bias does, so no term can hide.
    params["b"] = 0.3 * normal(4 * H) + np.repeat(np.float32([0, 1, 0, 0]), H)
  xs = normal(T, *batch_shape, D)
  carry = LSTMState(0.5 * normal(*batch_shape, H), 0.5 * normal(*batch_shape, H))
  if lengths is not None:
    lengths = np.asarray(lengths, np.int32)
    # Garbage in the padding must reach neither values nor gradients.
    pad = np.arange(T).reshape((T,) + (1,) * len(batch_shape)) >= lengths
    xs = np.where(pad[..., None], np.nan, xs).astype(np.float32)
  return params, xs, carry, lengths


RAGGED = [[0, 1, 2], [3, T, 4]]  # an empty sequence, a full one, the rest in between
CASES = {  # name: (cell, batch_shape, lengths, reverse)
    "full": (lambda: jaxseq.lstm(H, forget_bias=1.0), BATCH, None, False),
    "full_reverse": (lambda: jaxseq.lstm(H, forget_bias=1.0), BATCH, None, True),
    "ragged": (lambda: jaxseq.lstm(H, forget_bias=1.0), BATCH, RAGGED, False),
    "ragged_reverse": (lambda: jaxseq.lstm(H, forget_bias=1.0), BATCH, RAGGED, True),
    "no_bias_one_batch_axis": (lambda: jaxseq.lstm(H, use_bias=False), (4,), [0, T, 2, 5],
                               True),
    "chrono_no_batch_axes": (lambda: jaxseq.lstm(H, chrono_t_max=T), (), None, True),
    "empty_no_batch_axes": (lambda: jaxseq.lstm(H), (), 0, False),
    "ragged_no_batch_axes": (lambda: jaxseq.lstm(H), (), 4, True),
}


def _loss_and_outputs(run, weights):
  def loss(params, xs, carry):
    (h, c), ys = run(params, xs, carry)
    return jnp.sum(ys * weights[0]) + jnp.sum(h * weights[1]) + jnp.sum(c * weights[2]), \
        ((h, c), ys)
  return loss


@pytest.fixture(scope="module")
def results():
  """Values and gradients of every case by both paths: each path is one ``jit`` compiled
  without LLVM's expensive passes, since on CPU compiling dominates this file's time."""
  cases = {}
  for seed, (name, (cell, batch_shape, lengths, reverse)) in enumerate(CASES.items()):
    cell = cell()
    params, xs, carry, lengths = _setup(cell, batch_shape, lengths, seed)
    out_shape = (T,) + batch_shape + (H,)
    rng = np.random.default_rng(100 + seed)
    weights = [rng.standard_normal(s).astype(np.float32)
               for s in (out_shape, out_shape[1:], out_shape[1:])]
    cases[name] = (cell, reverse, (params, xs, carry, lengths, weights))

  def reference(cell, reverse):
    def run(params, xs, carry, lengths):
      ys, carry = jaxseq.unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                                time_major=True, kernel="reference")
      return carry, ys
    return run

  def kernel(cell, reverse):
    def run(params, xs, carry, lengths):
      return cudnn.unroll(cell.spec, params, carry, xs, lengths, reverse)
    return run

  def all_cases(path):
    def f(inputs):
      out = {}
      for name, (cell, reverse, _) in cases.items():
        params, xs, carry, lengths, weights = inputs[name]
        run = path(cell, reverse)
        loss = _loss_and_outputs(lambda p, x, c: run(p, x, c, lengths), weights)
        (_, outputs), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            params, xs, carry)
        out[name] = (outputs, grads)
      return out
    return jax.jit(f, compiler_options=FAST_COMPILE)

  inputs = {name: case[2] for name, case in cases.items()}
  op = StandIn()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cudnn, "_LSTM", op)
    got = all_cases(kernel)(inputs)
  want = all_cases(reference)(inputs)
  # The op only ever sees lengths in [1, T] (lstm_ref returns a wrong carry for 0).
  assert op.seq_lengths and all(l.min() >= 1 and l.max() <= T for l in op.seq_lengths)
  return inputs, got, want


@pytest.mark.parametrize("name", list(CASES))
def test_unroll_matches_reference(results, name):
  inputs, got, want = results
  _, xs, carry, lengths, _ = inputs[name]
  ((h, c), ys), grads = got[name]
  ((h_ref, c_ref), ys_ref), grads_ref = want[name]
  assert ys.shape == ys_ref.shape == xs.shape[:-1] + (H,)
  for got_, want_ in ((ys, ys_ref), (h, h_ref), (c, c_ref)):
    np.testing.assert_allclose(got_, want_, rtol=1e-5, atol=1e-5)
  if lengths is not None:  # an empty sequence keeps its initial carry exactly
    empty = np.asarray(lengths == 0)
    np.testing.assert_array_equal(np.asarray(h)[empty], np.asarray(carry.h)[empty])
    np.testing.assert_array_equal(np.asarray(c)[empty], np.asarray(carry.c)[empty])
  assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
  for got_, want_ in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    assert np.all(np.isfinite(got_))
    np.testing.assert_allclose(got_, want_, rtol=1e-5, atol=1e-5)


def _abstract_params(cell):
  """The cell's params as shapes and dtypes (``reason`` reads nothing else; no compiling)."""
  return jax.eval_shape(lambda key: cell.init(key, D), KEY)


def test_pack_layout_is_cudnns():
  cell = jaxseq.lstm(H, forget_bias=1.0)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # one compile, not one per op
  def run(key):
    params = cell.init(key, D)
    weights = cudnn.pack(params, cell.spec)
    return params, weights, rnn.unpack_lstm_weights(weights, D, H, 1, False), \
        cudnn.unpack(weights, D, H)
  params, weights, (w_ih, w_hh, b_ih, b_hh), unpacked = run(KEY)
  assert weights.shape == (rnn.get_num_params_in_lstm(D, H, 1, False),)
  # cuDNN: (4H, D) and (4H, H), gate blocks i, f, g, o along the rows, like torch.nn.LSTM.
  np.testing.assert_array_equal(w_ih[0], params["w_ih"].T)
  np.testing.assert_array_equal(w_hh[0], params["w_hh"].T)
  np.testing.assert_array_equal(b_ih[0], params["b"])
  np.testing.assert_array_equal(b_hh[0], 0)
  np.testing.assert_array_equal(b_ih[0][H:2 * H], 1.0)  # forget_bias lands in the f block
  assert set(unpacked) == set(params)
  for name in params:
    np.testing.assert_array_equal(unpacked[name], params[name])


def test_pack_without_bias_and_unpack_of_double_bias():
  cell = jaxseq.lstm(H, use_bias=False)
  params = _setup(cell)[0]
  weights = cudnn.pack(params, cell.spec)
  _, _, b_ih, b_hh = rnn.unpack_lstm_weights(weights, D, H, 1, False)
  np.testing.assert_array_equal(b_ih[0], 0)
  np.testing.assert_array_equal(b_hh[0], 0)
  unpacked = cudnn.unpack(weights, D, H, use_bias=False)
  assert set(unpacked) == {"w_ih", "w_hh"}
  np.testing.assert_array_equal(unpacked["w_hh"], params["w_hh"])
  # Weights from elsewhere carry two biases; jaxseq's single bias is their sum.
  size = rnn.get_num_params_in_lstm(D, H, 1, False)
  foreign = np.random.default_rng(0).standard_normal(size).astype(np.float32)
  _, _, b_ih, b_hh = rnn.unpack_lstm_weights(foreign, D, H, 1, False)
  np.testing.assert_allclose(cudnn.unpack(foreign, D, H)["b"], b_ih[0] + b_hh[0])
  with pytest.raises(ValueError, match="weights of shape"):
    cudnn.unpack(foreign[:-1], D, H)
  peephole = jaxseq.lstm(H, peephole=True)
  with pytest.raises(ValueError, match="peephole"):
    cudnn.pack(params, peephole.spec)


@pytest.mark.parametrize("cell, needle", [
    pytest.param(lambda: jaxseq.lstm(H, peephole=True), "peephole", id="peephole"),
    pytest.param(lambda: jaxseq.lstm(H, coupled=True), "coupled", id="coupled"),
    pytest.param(lambda: jaxseq.lstm(H, proj_size=2), "projection", id="projection"),
    pytest.param(lambda: jaxseq.lstm(H, gate_fn=jax.nn.hard_sigmoid), "sigmoid",
                 id="gate_fn"),
    pytest.param(lambda: jaxseq.lstm(H, cell_fn=jax.nn.soft_sign), "tanh", id="cell_fn"),
    pytest.param(lambda: jaxseq.lstm(H, hidden_fn=jax.nn.relu), "tanh", id="hidden_fn"),
    pytest.param(lambda: jaxseq.gru(H), "gru", id="gru"),
    pytest.param(lambda: jaxseq.min_lstm(H), "min_lstm", id="min_lstm"),
    pytest.param(lambda: jaxseq.lstm(H, dtype=jnp.bfloat16), "bfloat16", id="bf16_compute"),
    pytest.param(lambda: jaxseq.lstm(H, param_dtype=jnp.bfloat16), "bfloat16",
                 id="bf16_params"),
])
def test_reason_refuses(cell, needle):
  cell = cell()
  why = cudnn.reason(cell, _abstract_params(cell), None)
  assert isinstance(why, str) and needle in why, why


def test_reason_accepts_plain_lstm():
  for cell in (jaxseq.lstm(H), jaxseq.lstm(H, use_bias=False),
               jaxseq.lstm(H, forget_bias=1.0), jaxseq.lstm(H, chrono_t_max=10)):
    params = _abstract_params(cell)
    assert cudnn.reason(cell, params, jnp.float32) is None
    assert cudnn.reason(cell, params, None) is None
    assert cudnn.reason(cell, _setup(cell)[0], None) is None  # concrete arrays too
  assert "bfloat16" in cudnn.reason(cell, params, jnp.bfloat16)
  assert "no place for: extra" in cudnn.reason(cell, dict(params, extra=params["b"]))


def test_reason_refuses_float64(x64):
  cell = jaxseq.lstm(H, param_dtype=jnp.float64)
  assert "float64" in cudnn.reason(cell, _abstract_params(cell), None)
  cell = jaxseq.lstm(H)
  assert "float64" in cudnn.reason(cell, _abstract_params(cell), jnp.float64)


def test_unroll_refuses_bad_input(stand_in, x64):
  cell = jaxseq.lstm(H)
  params, xs, carry, _ = _setup(cell)
  with pytest.raises(TypeError, match="float32"):
    cudnn.unroll(cell.spec, params, carry, xs.astype(np.float64))
  with pytest.raises(ValueError, match="peephole"):
    cudnn.unroll(jaxseq.lstm(H, peephole=True).spec, params, carry, xs)
  with pytest.raises(ValueError, match="lengths"):
    cudnn.unroll(cell.spec, params, carry, xs, np.ones((2,), np.int32))
  with pytest.raises(TypeError, match="integers"):
    cudnn.unroll(cell.spec, params, carry, xs, np.ones(BATCH, np.float32))
  assert not stand_in.seq_lengths  # refused before anything ran


def test_not_available_on_cpu():
  assert jax.default_backend() == "cpu"
  assert cudnn.available() is False
  cell = jaxseq.lstm(H)
  params, xs, carry, _ = _setup(cell)
  # The real op is refused in Python, before anything is traced.
  with pytest.raises(RuntimeError, match="available"):
    cudnn.unroll(cell.spec, params, carry, xs)


def test_rocm_gate_order(monkeypatch):
  """On ROCm the weights reach the op with MIOpen's gate order ``i, f, o, g`` (swapped by
  ``rnn.swap_lstm_gates``, as JAX's own tests do); a stand-in that swaps them back must
  then reproduce the reference."""
  inner = StandIn()

  def miopen(x, h_0, c_0, weights, *args, **kwargs):
    return inner(x, h_0, c_0, rnn.swap_lstm_gates(weights, D, H, 1, False), *args, **kwargs)
  monkeypatch.setattr(cudnn, "_LSTM", miopen)
  monkeypatch.setattr(cudnn, "_gpu_platform", lambda: "rocm")
  cell = jaxseq.lstm(H)
  params, xs, carry, lengths = _setup(cell, lengths=RAGGED)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def both(params, xs, carry, lengths):
    ys, (h, c) = jaxseq.unroll(cell, params, xs, carry, lengths=lengths, time_major=True,
                               kernel="reference")
    return (h, c, ys), tuple(jax.tree.leaves(cudnn.unroll(cell.spec, params, carry, xs,
                                                          lengths)))
  (h, c, ys), (h_k, c_k, ys_k) = both(params, xs, carry, lengths)
  for got, want in ((ys_k, ys), (h_k, h), (c_k, c)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
