"""Kernel paths (``jaxseq.kernels``): the fused XLA path against the reference scan.

Oracle: ``unroll(..., kernel="reference")``, the ``lax.scan`` of the cell's ``recur``
differentiated by JAX's own autodiff, and finite differences (``check_grads``). The fused
path's derivative is a hand-built ``custom_jvp`` (hoisted weight tangents, linear scan), so
agreement to ~1e-12 in float64 is agreement of two independent derivations.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq
from jaxseq.cells.base import LSTMState
from jaxseq.kernels import xla

KEY = jax.random.PRNGKey(0)
B, T, D, H = 3, 5, 4, 6

CELLS = {
    "simple_rnn": lambda: jaxseq.simple_rnn(H),
    "simple_rnn_relu_nobias": lambda: jaxseq.simple_rnn(H, jax.nn.relu, use_bias=False),
    "lstm": lambda: jaxseq.lstm(H),
    "lstm_peephole": lambda: jaxseq.lstm(H, peephole=True),
    "lstm_coupled": lambda: jaxseq.lstm(H, coupled=True),
    "lstm_coupled_peephole_proj": lambda: jaxseq.lstm(H, coupled=True, peephole=True,
                                                      proj_size=3),
    "lstm_proj": lambda: jaxseq.lstm(H, proj_size=3),
    "lstm_activations": lambda: jaxseq.lstm(H, gate_fn=jax.nn.hard_sigmoid,
                                            cell_fn=jax.nn.soft_sign, hidden_fn=jnp.sin),
    "gru": lambda: jaxseq.gru(H),
    "gru_nobias": lambda: jaxseq.gru(H, use_bias=False),
    "gru_reset_before": lambda: jaxseq.gru(H, reset_after=False),
    "mgu": lambda: jaxseq.mgu(H),
    "mgu_reset_after": lambda: jaxseq.mgu(H, reset_after=True, activation=jax.nn.gelu),
}


def _setup(name, dtype=jnp.float64):
  cell = CELLS[name]()
  params = cell.init(KEY, D)
  # Non-zero biases and peepholes, so that parity cannot hide a dropped term.
  params = {k: (v + 0.3 * jax.random.normal(jax.random.fold_in(KEY, i), v.shape)
                if k.startswith(("b", "p_")) else v).astype(dtype)
            for i, (k, v) in enumerate(sorted(params.items()))}
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), dtype)
  carry = jax.tree.map(lambda c: 0.5 * jax.random.normal(jax.random.PRNGKey(2), c.shape,
                                                           dtype),
                       cell.initialize_carry(params, (B, D)))
  return cell, params, xs, carry


def _unroll(cell, kernel, **options):
  def run(params, xs, carry):
    return jaxseq.unroll(cell, params, xs, carry, kernel=kernel, **options)
  return run


def _loss(run):
  """A scalar that weighs every output step and the final carry differently."""
  def loss(params, xs, carry):
    ys, final = run(params, xs, carry)
    weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(jnp.sin(ys) * weights) + sum(jnp.sum(c ** 2)
                                                 for c in jax.tree.leaves(final))
  return loss


def _assert_trees_close(got, want, atol):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def _uses_fused_path(fn, *args) -> bool:
  """Whether tracing ``fn`` reaches the fused XLA path's ``custom_jvp``."""
  return "name=_fused" in str(jax.make_jaxpr(fn)(*args))


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("shape", [(3,), (4, 3), (5, 4, 3), (2, 5, 4, 3)])
def test_matmul_on_rows_equals_numpy_over_any_leading_axes(x64, shape):
  """``xla.matmul`` (the dense cells' map, computed on flattened rows) against NumPy's
  product, values and both gradients (closed forms: ``c w^T`` and ``x^T c``)."""
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=shape), rng.normal(size=(3, 6))
  c = rng.normal(size=shape[:-1] + (6,))
  np.testing.assert_allclose(xla.matmul(jnp.asarray(x), jnp.asarray(w)), x @ w, rtol=1e-13)
  dx, dw = jax.grad(lambda x, w: jnp.vdot(xla.matmul(x, w), c), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(dx, c @ w.T, rtol=1e-12)
  rows = x.reshape(-1, 3)
  np.testing.assert_allclose(dw, rows.T @ c.reshape(-1, 6), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_xla_equals_reference_values_and_gradients(x64, name):
  """Outputs, final carry and the gradients for params, inputs and initial carry, with
  per-example lengths (T, 0 and a middle one) forward and reversed."""
  cell, params, xs, carry = _setup(name)
  assert cell.kernel is not None and cell.kernel.name == "xla"
  assert cell.kernel.recur is cell.recur
  lengths = jnp.array([T, 0, 2])
  cases = ({"lengths": lengths}, {"lengths": lengths, "reverse": True})

  def values_and_grads(kernel):
    def both(p, x, c):
      out = []
      for options in cases:
        run = _unroll(cell, kernel, **options)
        out.append((run(p, x, c), jax.grad(_loss(run), argnums=(0, 1, 2))(p, x, c)))
      return out
    return jax.jit(both)(params, xs, carry)
  for (got, got_grads), (want, want_grads) in zip(values_and_grads("xla"),
                                                  values_and_grads("reference")):
    _assert_trees_close(got, want, 1e-13)
    _assert_trees_close(got_grads, want_grads, 1e-12)


@pytest.mark.parametrize("name", ["lstm_coupled_peephole_proj", "gru"])
def test_xla_under_remat_equals_reference(x64, name):
  """``remat``: the fused path runs chunk by chunk under ``jax.checkpoint``; chunks of 2
  over T=5 leave a shorter last chunk, with and without lengths, forward and reversed."""
  cell, params, xs, carry = _setup(name)
  cases = ({"remat": 2, "reverse": True}, {"remat": 2, "lengths": jnp.array([T, 0, 3])},
           {"remat": True, "lengths": jnp.array([1, 4, T]), "reverse": True})

  def values_and_grads(kernel):
    def both(p, x, c):
      out = []
      for options in cases:
        run = _unroll(cell, kernel, **options)
        out.append((run(p, x, c), jax.grad(_loss(run), argnums=(0, 1, 2))(p, x, c)))
      return out
    return jax.jit(both)(params, xs, carry)
  got = values_and_grads("xla")
  assert "remat" in str(jax.make_jaxpr(   # jax.checkpoint's primitive
      jax.grad(_loss(_unroll(cell, "xla", remat=2))))(params, xs, carry))
  for (values, grads), (want, want_grads) in zip(got, values_and_grads("reference")):
    _assert_trees_close(values, want, 1e-13)
    _assert_trees_close(grads, want_grads, 1e-12)


def test_xla_in_blocks_equals_reference(x64, monkeypatch):
  """On CPU a large projection runs in blocks (``block_length``): forced here at T=11 into
  5 blocks of 2 steps and a last step on its own, the values, gradients and forward-mode
  derivatives equal the unblocked reference scan's, with lengths (0, T and a middle one)
  forward and reversed."""
  monkeypatch.setattr(jaxseq.sequence, "block_length", lambda gx_0, num_steps: 2)
  cell = CELLS["lstm_peephole"]()
  params = {k: v + 0.3 for k, v in cell.init(KEY, D).items()}
  params = jax.tree.map(lambda v: v.astype(jnp.float64), params)
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, 11, D), jnp.float64)
  carry = jax.tree.map(lambda c: c + 0.5, cell.initialize_carry(params, (B, D)))
  assert str(jax.make_jaxpr(_unroll(cell, "xla"))(params, xs, carry)).count(
      "name=_fused") == 2   # the scan over whole blocks, then the last step
  tangents = jax.tree.map(jnp.cos, (params, xs, carry))

  def everything(kernel):
    out = []
    for options in ({"lengths": jnp.array([11, 0, 6])},
                    {"lengths": jnp.array([3, 11, 10]), "reverse": True}):
      run = _unroll(cell, kernel, **options)
      out.append((run(params, xs, carry),
                  jax.grad(_loss(run), argnums=(0, 1, 2))(params, xs, carry),
                  jax.jvp(run, (params, xs, carry), tangents)[1]))
    return out
  got, want = (jax.jit(everything, static_argnums=0)(k) for k in ("xla", "reference"))
  _assert_trees_close(got, want, 1e-12)


def test_blocks_only_on_cpu_and_for_a_large_projection(monkeypatch):
  """LSTM B32 H256 in float32 writes 128 KiB of ``gx`` a step: blocks of 4 steps (512 KiB)
  at T=256 (32 MiB), a divisor of T near 4 where there is one (3 at T=255; at T=257, a
  prime, 4 and a shorter last block), one block up to ``16 * BLOCK_BYTES`` (T=64, 8 MiB),
  none off CPU."""
  gx = jax.ShapeDtypeStruct((32, 4 * 256), jnp.float32)
  rule = jaxseq.sequence.block_length
  assert (rule(gx, 256), rule(gx, 255), rule(gx, 257), rule(gx, 64)) == (4, 3, 4, None)
  # remat=True follows the same rule around ceil(sqrt(T)): 250 | 100,000; 101 is a prime.
  chunk = jaxseq.sequence._chunk_length
  assert (chunk(True, 100_000), chunk(True, 101), chunk(3, 10)) == (250, 11, 3)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert rule(gx, 256) is None


CONV_CELLS = {
    "conv_lstm": (lambda: jaxseq.conv_lstm(2, (3, 3)), (4, 4)),
    "conv_lstm_circular_no_peephole": (
        lambda: jaxseq.conv_lstm(2, (3, 2), peephole=False, padding="CIRCULAR"), (3, 4)),
    "conv_gru": (lambda: jaxseq.conv_gru(2, (3,)), (5,)),
    "conv_gru_reset_after": (lambda: jaxseq.conv_gru(2, (2, 2), reset_after=True), (3, 3)),
}


@pytest.mark.parametrize("name", sorted(CONV_CELLS))
def test_conv_cells_xla_equals_reference(x64, name):
  """Conv cells: the recurrent convolution's weight tangents hoisted over T·B frames."""
  factory, frame = CONV_CELLS[name]
  cell = factory()
  assert cell.kernel.name == "xla" and cell.kernel.recur is cell.recur
  params = cell.init(KEY, frame + (3,))
  params = {k: (v + 0.3 * jax.random.normal(jax.random.fold_in(KEY, i), v.shape)
                if k.startswith(("b", "p_")) else v).astype(jnp.float64)
            for i, (k, v) in enumerate(sorted(params.items()))}
  xs = jax.random.normal(jax.random.PRNGKey(1), (2, 3) + frame + (3,), jnp.float64)
  carry = jax.tree.map(lambda c: 0.5 * jax.random.normal(KEY, c.shape, jnp.float64),
                       cell.initialize_carry(params, (2,) + frame + (3,)))

  def values_and_grads(kernel):
    run = _unroll(cell, kernel, lengths=jnp.array([1, 3]), reverse=True)
    both = lambda p, x, c: (run(p, x, c), jax.grad(_loss(run), argnums=(0, 1, 2))(p, x, c))
    return jax.jit(both)(params, xs, carry)
  (got, got_grads), (want, want_grads) = values_and_grads("xla"), values_and_grads(
      "reference")
  _assert_trees_close(got, want, 1e-13)
  _assert_trees_close(got_grads, want_grads, 1e-12)
  check_grads(_unroll(cell, "xla"), (params, xs, carry), order=1, modes=["fwd", "rev"])


def test_dispatch_reaches_the_fused_path_only_where_asked():
  cell = jaxseq.mgu(H)
  params = cell.init(KEY, D)
  xs = jnp.ones((B, T, D))
  for kernel, fused in (("auto", True), ("xla", True), ("reference", False)):
    assert _uses_fused_path(lambda p, x: jaxseq.unroll(cell, p, x, kernel=kernel),
                            params, xs) == fused


@pytest.mark.parametrize("name", sorted(CELLS))
def test_xla_check_grads_forward_and_reverse_mode(x64, name):
  """Finite differences, forward and reverse mode (the custom_jvp keeps forward mode),
  without lengths (the parity test above has them)."""
  cell, params, xs, carry = _setup(name)
  run = _unroll(cell, "xla")
  check_grads(run, (params, xs, carry), order=1,
              modes=["fwd", "rev"])


def test_xla_float32_and_batch_axes_time_major_unroll():
  """float32 to 1e-5, two batch axes, time-major inputs and an unroll factor."""
  cell = jaxseq.lstm(H, peephole=True)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (T, 2, 3, D))
  lengths = jnp.array([[5, 1, 0], [3, 4, 2]])
  options = dict(lengths=lengths, time_major=True, unroll=2)
  got = jaxseq.unroll(cell, params, xs, kernel="xla", **options)
  want = jaxseq.unroll(cell, params, xs, kernel="reference", **options)
  _assert_trees_close(got, want, 1e-6)
  grad = lambda k: jax.grad(lambda p, x: jnp.sum(jaxseq.unroll(cell, p, x, kernel=k,
                                                               **options)[0] ** 2),
                            argnums=(0, 1))(params, xs)
  _assert_trees_close(grad("xla"), grad("reference"), 1e-5)


def test_xla_under_vmap():
  cell = jaxseq.gru(H)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (2, B, T, D))
  loss = lambda k: lambda p, x: jnp.sum(jaxseq.unroll(cell, p, x, kernel=k)[0] ** 2)
  per_batch = lambda k: jax.vmap(jax.grad(loss(k)), in_axes=(None, 0))(params, xs)
  _assert_trees_close(per_batch("xla"), per_batch("reference"), 1e-5)
  ys = jax.vmap(lambda x: jaxseq.unroll(cell, params, x, kernel="xla")[0])(xs)
  np.testing.assert_allclose(ys[1], jaxseq.unroll(cell, params, xs[1],
                                                  kernel="reference")[0], atol=1e-6)


def test_bfloat16_compute_keeps_float32_cell_state():
  cell = jaxseq.lstm(H, dtype=jnp.bfloat16)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (B, T, D))
  ys, carry = jaxseq.unroll(cell, params, xs, kernel="xla")
  assert ys.dtype == jnp.bfloat16 and carry.h.dtype == jnp.bfloat16
  assert carry.c.dtype == jnp.float32
  want_ys, want_carry = jaxseq.unroll(cell, params, xs, kernel="reference")
  np.testing.assert_array_equal(ys.astype(jnp.float32), want_ys.astype(jnp.float32))
  np.testing.assert_array_equal(carry.c, want_carry.c)
  loss = lambda k: lambda p: jnp.sum(
      jaxseq.unroll(cell, p, xs, kernel=k)[1].c.astype(jnp.float32) ** 2)
  got, want = jax.grad(loss("xla"))(params), jax.grad(loss("reference"))(params)
  for name in params:
    assert got[name].dtype == jnp.float32
    scale = float(jnp.abs(want[name]).max())
    np.testing.assert_allclose(got[name], want[name], atol=0.05 * scale + 1e-6)


def _bf16_cotangent(shape):
  """A float32 cotangent with full mantissas, and the bfloat16 one a bfloat16 output gets."""
  r = jax.random.normal(jax.random.PRNGKey(7), shape)
  return r, np.asarray(r.astype(jnp.bfloat16), np.float64)


def test_bfloat16_input_half_weight_gradients_are_float32_sums():
  """``x W_ih + b`` in bfloat16: ``dW_ih = X^T dZ`` and ``db = sum dZ`` over all T·B rows,
  against those closed forms in float64 from the same bfloat16 ``X`` and cotangent ``dZ``.
  Rounding the sums to bfloat16 would be ~1e-3 off; float32 accumulation is ~1e-7."""
  cell = jaxseq.lstm(16, dtype=jnp.bfloat16)
  params = cell.init(KEY, 8)
  xs = jax.random.normal(KEY, (4, 32, 8))
  r, dz = _bf16_cotangent((4, 32, 64))
  grads = jax.grad(lambda p: jnp.sum(cell.project(p, xs).astype(jnp.float32) * r))(params)
  x = np.asarray(xs.astype(jnp.bfloat16), np.float64).reshape(-1, 8)
  dz = dz.reshape(-1, 64)
  for got, want in ((grads["w_ih"], x.T @ dz), (grads["b"], dz.sum(0))):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("kernel", ["reference", "xla", "pallas"])
def test_bfloat16_recurrent_weight_gradient_is_a_float32_sum(kernel):
  """The LSTM's ``dW_hh = sum_t h_{t-1}^T dZ_t`` under bfloat16 compute, against that closed
  form in float64 from the path's own bfloat16 states and gate cotangents ``dZ_t`` (the
  gradient with respect to ``gx_t``, which ``z_t = gx_t + h_{t-1} W_hh`` shares)."""
  cell = jaxseq.lstm(16, dtype=jnp.bfloat16)
  params = cell.init(KEY, 8)
  num_steps, batch = 24, 4
  gxs = jax.random.normal(KEY, (num_steps, batch, 64)).astype(jnp.bfloat16)
  carry = cell.initialize_carry(params, (batch, 8))
  r, _ = _bf16_cotangent((num_steps, batch, 16))

  def run(p, g):
    if kernel == "pallas":
      pytest.importorskip("jax.experimental.pallas")
      from jaxseq.kernels import pallas
      return pallas.run_for(cell)(p, carry, g, None, False, 1)[1]
    if kernel == "xla":
      return cell.kernel.run(p, carry, g, None, False, 1)[1]
    return jax.lax.scan(lambda c, g_t: cell.recur(p, c, g_t), carry, g)[1]
  loss = lambda p, g: jnp.sum(run(p, g).astype(jnp.float32) * r)
  d_params, dz = jax.jit(jax.grad(loss, (0, 1)))(params, gxs)
  hs = np.asarray(jax.jit(run)(params, gxs), np.float64)
  h_prev = np.concatenate([np.zeros_like(hs[:1]), hs[:-1]])
  want = np.einsum("tbh,tbg->hg", h_prev, np.asarray(dz, np.float64))
  assert d_params["w_hh"].dtype == jnp.float32
  np.testing.assert_allclose(d_params["w_hh"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ----------------------------------------------------------------------------- dispatch


def test_available_and_unavailable_kernels():
  from jaxseq.kernels import pallas
  assert jaxseq.kernels.available() == ("reference", "xla") + (
      ("pallas",) if pallas.AVAILABLE else ())     # no cuDNN on a CPU backend
  cell = jaxseq.lstm(H)
  params = cell.init(KEY, D)
  xs = jnp.ones((B, T, D))
  with pytest.raises(ValueError, match="kernel: .*'cudnn' is not available on this machine: "
                                       "the cuDNN/MIOpen LSTM needs a CUDA or ROCm GPU"):
    jaxseq.unroll(cell, params, xs, kernel="cudnn")
  with pytest.raises(ValueError, match="'cudnn' is not available on this machine"):
    jaxseq.recurrent(cell, kernel="cudnn")
  with pytest.raises(ValueError, match="kernel: expected one of 'auto'.*got 'fast'"):
    jaxseq.unroll(cell, params, xs, kernel="fast")
  with pytest.raises(TypeError, match="kernel: expected one of"):
    jaxseq.recurrent(cell, kernel=None)


# A GPU is faked for the cuDNN dispatch: ``available()`` says yes and the op is the
# ``rnn.lstm_ref`` stand-in of tests/test_kernels_cudnn.py, which counts its calls.


@pytest.fixture
def fake_gpu(monkeypatch):
  from jaxseq.kernels import cudnn
  from test_kernels_cudnn import StandIn   # tests/ is on sys.path under pytest
  op = StandIn()
  monkeypatch.setattr(cudnn, "_LSTM", op)
  monkeypatch.setattr(cudnn, "available", lambda: True)
  return op


def test_auto_takes_cudnn_on_a_gpu_only_where_it_applies(fake_gpu):
  cell = jaxseq.lstm(H, forget_bias=1.0)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (B, T, D))
  lengths = jnp.array([T, 0, 2])
  calls = lambda: len(fake_gpu.seq_lengths)
  for kernel in ("auto", "cudnn"):
    before = calls()
    got = jax.block_until_ready(jaxseq.unroll(cell, params, xs, lengths=lengths,
                                              reverse=True, kernel=kernel))
    assert calls() > before
    _assert_trees_close(got, jaxseq.unroll(cell, params, xs, lengths=lengths, reverse=True,
                                           kernel="reference"), 1e-5)
  # Where cuDNN does not apply, auto takes the fused path and asking for it is an error.
  peephole = jaxseq.lstm(H, peephole=True)
  p_params = peephole.init(KEY, D)
  dropout = jaxseq.recurrent(cell, recurrent_dropout=0.5, kernel="cudnn")
  before = calls()
  for run in (lambda: jaxseq.unroll(cell, params, xs, remat=True),
              lambda: jaxseq.unroll(cell, params, xs.astype(jnp.bfloat16)),
              lambda: jaxseq.unroll(peephole, p_params, xs),
              lambda: jax.vmap(lambda x: jaxseq.unroll(cell, params, x))(xs[None]),
              # a wrapper's change is kept: recurrent dropout runs the scan
              lambda: dropout.apply(params, xs, key=KEY)):
    jax.block_until_ready(run())
  assert calls() == before
  for run, why in ((lambda: jaxseq.unroll(cell, params, xs, remat=True, kernel="cudnn"),
                    "remat"),
                   (lambda: jaxseq.unroll(peephole, p_params, xs, kernel="cudnn"),
                    "no peepholes"),
                   (lambda: jax.vmap(lambda x: jaxseq.unroll(cell, params, x,
                                                             kernel="cudnn"))(xs[None]),
                    "vmap")):
    with pytest.raises(ValueError, match=f"kernel: expected 'cudnn' only for .*{why}"):
      run()


def test_pallas_runs_only_where_asked_and_for_its_own_recurrence():
  from jaxseq.kernels import pallas
  if not pallas.AVAILABLE:
    pytest.skip("no Pallas in this JAX")
  cell = jaxseq.gru(H, reset_after=False)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (B, T, D))
  lengths = jnp.array([T, 0, 3])
  uses = lambda fn: "pallas_call" in str(jax.make_jaxpr(fn)(params))
  run = lambda kernel, **o: lambda p: jaxseq.unroll(cell, p, xs, lengths=lengths,
                                                    kernel=kernel, **o)
  assert uses(run("pallas")) and uses(run("pallas", remat=2))
  assert not uses(run("auto")) and not uses(run("xla"))
  layer = jaxseq.recurrent(cell, recurrent_dropout=0.3, kernel="pallas")
  assert not uses(lambda p: layer.apply(p, xs, key=KEY))      # dropout: the scan
  assert uses(lambda p: layer.apply(p, xs))                   # no key: no dropout
  loss = lambda kernel: jax.grad(lambda p: jnp.sum(run(kernel)(p)[0] ** 2))(params)
  _assert_trees_close(run("pallas")(params), run("reference")(params), 1e-5)
  _assert_trees_close(loss("pallas"), loss("reference"), 1e-5)
  with pytest.raises(ValueError, match="kernel: expected 'pallas' only for .*peephole"):
    jaxseq.unroll(jaxseq.lstm(H, peephole=True), jaxseq.lstm(H, peephole=True).init(KEY, D),
                  xs, kernel="pallas")


def test_layers_thread_the_kernel_option():
  cell = jaxseq.lstm(H)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (B, T, D))
  for kernel, fused in (("auto", True), ("xla", True), ("reference", False)):
    layer = jaxseq.recurrent(cell, kernel=kernel)
    assert layer.spec.kernel == kernel and layer.spec.options["kernel"] == kernel
    assert _uses_fused_path(lambda p, x: layer.apply(p, x), params, xs) == fused
    backward = jaxseq.reversed_layer(layer)     # options, kernel included, carry over
    assert backward.spec.kernel == kernel and backward.spec.reverse
  bi = jaxseq.bidirectional(jaxseq.recurrent(cell, kernel="reference"))
  bi_params = bi.init(KEY, D)
  assert not _uses_fused_path(lambda p, x: bi.apply(p, x), bi_params, xs)
  # remat runs the fused path chunk by chunk; "reference" the checkpointed scan.
  assert _uses_fused_path(lambda p, x: jaxseq.unroll(cell, p, x, kernel="xla", remat=True),
                          params, xs)
  assert not _uses_fused_path(lambda p, x: jaxseq.unroll(cell, p, x, kernel="reference",
                                                         remat=True), params, xs)


def test_hand_made_kernel_runs_under_auto_and_xla_not_reference():
  """A user's own ``Kernel`` (written in JAX: name ``"xla"`` by default) replaces the fused
  path under ``auto`` and ``xla``; ``reference`` runs the scan."""
  cell = jaxseq.gru(H)
  calls = []

  def run(params, carry, gxs, lengths, reverse, unroll):
    calls.append(1)
    return cell.kernel.run(params, carry, gxs, lengths, reverse, unroll)
  custom = cell._replace(kernel=jaxseq.Kernel(cell.recur, run))
  params = cell.init(KEY, D)
  for steps, kernel in ((T, "auto"), (T + 1, "xla")):   # new shapes: traced afresh
    jaxseq.unroll(custom, params, jnp.ones((B, steps, D)), kernel=kernel)
    assert calls
    calls.clear()
  jaxseq.unroll(custom, params, jnp.ones((B, T + 2, D)), kernel="reference")
  assert not calls


def test_wrapped_cells_keep_their_change_under_every_kernel():
  """Recurrent dropout and gradflow's perturbations replace ``recur``: the fused path is
  never taken for them, and ``"xla"`` gives exactly the reference's result."""
  cell = jaxseq.lstm(H, peephole=True)
  params = cell.init(KEY, D)
  xs = jax.random.normal(KEY, (B, T, D))
  key = jax.random.PRNGKey(3)
  apply = lambda k: jaxseq.recurrent(cell, recurrent_dropout=0.5, kernel=k).apply
  for kernel in ("auto", "xla"):
    assert not _uses_fused_path(lambda p, x: apply(kernel)(p, x, key=key), params, xs)
    for got, want in zip(jax.tree.leaves(apply(kernel)(params, xs, key=key)),
                         jax.tree.leaves(apply("reference")(params, xs, key=key))):
      np.testing.assert_array_equal(got, want)
  dropped = apply("xla")(params, xs, key=key)[0]
  assert float(jnp.abs(dropped - jaxseq.unroll(cell, params, xs)[0]).max()) > 1e-3

  loss = lambda ys: jnp.sum(ys[:, -1] ** 2)
  norms = {k: jaxseq.gradflow.grad_norms(jaxseq.recurrent(cell, kernel=k), params, xs, loss)
           for k in ("xla", "reference")}
  np.testing.assert_array_equal(norms["xla"], norms["reference"])
  assert float(norms["xla"].min()) > 0


def test_lstm_state_carry_and_reverse_lengths_edge_cases(x64):
  """Empty and full sequences in one batch, reversed: the carry of an empty sequence is
  the initial carry, its outputs are zeros."""
  cell, params, xs, carry = _setup("lstm_peephole")
  lengths = jnp.array([0, T, 1])
  ys, final = jaxseq.unroll(cell, params, xs, carry, lengths=lengths, reverse=True,
                            kernel="xla")
  assert isinstance(final, LSTMState)
  np.testing.assert_array_equal(ys[0], 0.0)
  np.testing.assert_array_equal(ys[2, 1:], 0.0)
  np.testing.assert_array_equal(final.c[0], carry.c[0])


def test_second_order_equals_reference(x64):
  """The linear tangent rule is itself differentiable: Hessians match the reference's."""
  cell = jaxseq.lstm(3, peephole=True, proj_size=2)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(KEY, 2))
  xs = jax.random.normal(KEY, (2, 3, 2), jnp.float64)
  lengths = jnp.array([3, 2])
  hessian = lambda k: jax.hessian(lambda x: jnp.sum(jaxseq.unroll(
      cell, params, x, lengths=lengths, kernel=k)[0] ** 3))(xs)
  np.testing.assert_allclose(hessian("xla"), hessian("reference"), rtol=0, atol=1e-12)
