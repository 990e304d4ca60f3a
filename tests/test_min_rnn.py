"""min_gru / min_lstm: the parallel-in-time kernel against the sequential recurrence and a
NumPy loop written from the paper's equations (Feng et al. 2024)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq
from jaxseq.cells import min_rnn
from jaxseq.cells.base import Kernel
from jaxseq.sequence import scan_recur

CELLS = {"min_gru": jaxseq.min_gru, "min_lstm": jaxseq.min_lstm}
B, T, D, H = 4, 9, 3, 5
LENGTHS = np.array([0, 3, T, 7])   # empty, partial, full


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_g(x):
  return np.where(x >= 0, x + 0.5, _sigmoid(x))


def numpy_unroll(name, params, xs, h0, lengths=None, reverse=False, g=False):
  """The paper's equations, one step at a time (float64), with ``unroll``'s meaning of
  ``lengths``/``reverse``: padded steps keep the state and output zeros."""
  w, b = np.asarray(params["w_ih"], np.float64), np.asarray(params["b"], np.float64)
  xs = np.asarray(xs, np.float64)
  lengths = np.full(xs.shape[0], xs.shape[1]) if lengths is None else np.asarray(lengths)
  ys = np.zeros(xs.shape[:2] + (H,))
  carry = np.array(h0, np.float64)
  for n in range(xs.shape[0]):
    h = carry[n]
    steps = range(lengths[n])
    for t in (reversed(steps) if reverse else steps):
      k = xs[n, t] @ w + b
      candidate = _numpy_g(k[-H:]) if g else k[-H:]
      if name == "min_gru":
        z = _sigmoid(k[:H])
        h = (1 - z) * h + z * candidate
      else:
        f, i = _sigmoid(k[:H]), _sigmoid(k[H:2 * H])
        h = f / (f + i) * h + i / (f + i) * candidate
      ys[n, t] = h
    carry[n] = h
  return ys, carry


def _setup(name, dtype=jnp.float64, **options):
  cell = CELLS[name](H, bias_init=jax.nn.initializers.normal(1.0), **options)
  params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.PRNGKey(0), D))
  k_x, k_h = jax.random.split(jax.random.PRNGKey(1))
  xs = 2.0 * jax.random.normal(k_x, (B, T, D), dtype)
  h0 = jax.random.normal(k_h, (B, H), dtype)
  return cell, params, xs, h0


def _sequential(cell, params, xs, h0, lengths, reverse):
  """The reference scan of the cell's own ``recur`` (no kernel), time-major inside."""
  gxs = cell.project(params, jnp.moveaxis(xs, 1, 0))
  lengths = None if lengths is None else jnp.asarray(lengths)
  carry, ys = scan_recur(cell.recur, params, h0, gxs, lengths, reverse)
  return jnp.moveaxis(ys, 0, 1), carry


def _loss(run):
  def loss(params, xs, h0):
    ys, carry = run(params, xs, h0)
    weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(weights * ys) + jnp.sum(jnp.sin(carry))
  return loss


def _close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("scan", ["sequential", "associative"])
@pytest.mark.parametrize("reverse", [False, True])
def test_parallel_equals_sequential_with_lengths(x64, name, scan, reverse):
  cell, params, xs, h0 = _setup(name, scan=scan)
  assert cell.kernel is not None and cell.kernel.recur is cell.recur
  lengths = jnp.asarray(LENGTHS)
  kernel = lambda p, x, h: jaxseq.unroll(cell, p, x, h, lengths=lengths, reverse=reverse)
  reference = lambda p, x, h: _sequential(cell, p, x, h, lengths, reverse)
  value_and_grad = lambda run: jax.jit(jax.value_and_grad(_loss(run), argnums=(0, 1, 2)))
  _close(value_and_grad(kernel)(params, xs, h0), value_and_grad(reference)(params, xs, h0),
         1e-10)
  ys, carry = jax.jit(kernel)(params, xs, h0)
  _close((ys, carry), jax.jit(reference)(params, xs, h0), 1e-12)
  assert np.all(np.asarray(ys)[0] == 0) and np.all(np.asarray(ys)[1, 3:] == 0)
  np.testing.assert_array_equal(carry[0], h0[0])   # an empty sequence keeps its carry


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("scan", ["sequential", "associative"])
def test_parallel_equals_numpy_loop_of_the_paper(x64, name, scan):
  cell, params, xs, h0 = _setup(name, scan=scan)
  assert np.all(np.abs(np.asarray(params["b"])) > 1e-3)   # biases matter
  for reverse in (False, True):
    for lengths in (None, LENGTHS):
      ys, carry = jaxseq.unroll(cell, params, xs, h0, lengths=lengths, reverse=reverse)
      want_ys, want_carry = numpy_unroll(name, params, xs, h0, lengths, reverse)
      _close((ys, carry), (want_ys, want_carry), 1e-10)
  carry, y = cell.step(params, h0, xs[:, 0])   # one step, for decoding
  _close((carry, y), (numpy_unroll(name, params, xs[:, :1], h0)[1],) * 2, 1e-12)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_log_space_model_of_the_paper(x64, name):
  """``activation=positive_g``: the Appendix's candidate g(Linear(x)), evaluated in linear
  space; from a positive h_0 every state stays positive, as the log-space form assumes."""
  cell, params, xs, h0 = _setup(name, activation=min_rnn.positive_g)
  h0 = jnp.abs(h0) + 0.1
  ys, carry = jaxseq.unroll(cell, params, xs, h0, reverse=True)
  want_ys, want_carry = numpy_unroll(name, params, xs, h0, reverse=True, g=True)
  _close((ys, carry), (want_ys, want_carry), 1e-10)
  assert np.all(np.asarray(ys) > 0)
  x = jnp.array([-3.0, -0.0, 0.0, 2.0])
  np.testing.assert_allclose(min_rnn.positive_g(x), _numpy_g(np.asarray(x)), rtol=1e-15)


@pytest.mark.parametrize("scan", ["sequential", "associative"])
def test_kernel_forward_and_reverse_mode(x64, scan):
  """The kernel's custom_jvp: forward mode is its rule, reverse mode JAX's transpose of it;
  both against finite differences, on the parameters, inputs and carry."""
  cell, params, xs, h0 = _setup("min_lstm", scan=scan)
  lengths = jnp.asarray(LENGTHS)
  run = lambda p, x, h: jaxseq.unroll(cell, p, x, h, lengths=lengths, reverse=True)
  check_grads(_loss(run), (params, xs, h0), order=1, modes=["fwd", "rev"])


@pytest.mark.parametrize("scan", ["sequential", "associative"])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_recurrence_against_a_loop(x64, scan, reverse):
  k_a, k_b, k_h = jax.random.split(jax.random.PRNGKey(2), 3)
  a = jax.random.uniform(k_a, (7, 2), jnp.float64)
  b = jax.random.normal(k_b, (7, 2), jnp.float64)
  h0 = jax.random.normal(k_h, (2,), jnp.float64)
  h, want = np.asarray(h0), np.zeros(b.shape)
  for t in (range(6, -1, -1) if reverse else range(7)):
    h = np.asarray(a[t]) * h + np.asarray(b[t])
    want[t] = h
  f = lambda a, b, h0: min_rnn.linear_recurrence(a, b, h0, reverse, scan)
  np.testing.assert_allclose(f(a, b, h0), want, rtol=1e-13, atol=1e-13)
  check_grads(f, (a, b, h0), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("name", sorted(CELLS))
def test_inside_recurrent_bidirectional_and_stack(x64, name):
  """Inside the combinators the kernel path equals the same layer with the kernel removed."""
  cell = CELLS[name](H, bias_init=jax.nn.initializers.normal(1.0))
  layer = jaxseq.stack(jaxseq.bidirectional(cell),
                       jaxseq.recurrent(CELLS[name](H), reverse=True))
  sequential = jaxseq.map_cells(layer, lambda c: c._replace(kernel=None))
  params = jax.tree.map(lambda a: a.astype(jnp.float64),
                        layer.init(jax.random.PRNGKey(0), D))
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), jnp.float64)
  lengths = jnp.asarray(LENGTHS)

  def loss(layer):
    def f(p, x):
      ys, _ = layer.apply(p, x, lengths=lengths)
      return jnp.sum(jnp.cos(jnp.arange(ys.size)).reshape(ys.shape) * ys)
    return f
  value_and_grad = lambda layer: jax.jit(jax.value_and_grad(loss(layer), argnums=(0, 1)))
  _close(value_and_grad(layer)(params, xs), value_and_grad(sequential)(params, xs), 1e-10)


def _refusing(cell):
  """The cell with a kernel that fails if it runs."""
  def run(*args):
    raise AssertionError("the parallel kernel ran")
  return cell._replace(kernel=Kernel(cell.recur, run))


def test_unroll_runs_the_kernel():
  cell = _refusing(jaxseq.min_gru(H))
  params = cell.init(jax.random.PRNGKey(0), D)
  with pytest.raises(AssertionError, match="kernel ran"):
    jaxseq.unroll(cell, params, jnp.ones((B, T, D)))
  with pytest.raises(AssertionError, match="kernel ran"):   # a kernel written in JAX/XLA
    jaxseq.unroll(cell, params, jnp.ones((B, T, D)), kernel="xla")
  jaxseq.unroll(cell, params, jnp.ones((B, T, D)), kernel="reference")   # the scan


@pytest.mark.parametrize("name", sorted(CELLS))
def test_recurrent_dropout_takes_the_sequential_path(name):
  """Recurrent dropout replaces ``recur``, so the kernel (bound to the original) never runs
  and the masks are applied: the result is the sequential path's, with the same key."""
  cell = CELLS[name](H)
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  key = jax.random.PRNGKey(2)
  dropped = jaxseq.recurrent(_refusing(cell), recurrent_dropout=0.5)
  sequential = jaxseq.recurrent(cell._replace(kernel=None), recurrent_dropout=0.5)
  params = dropped.init(jax.random.PRNGKey(0), D)
  ys, carry = dropped.apply(params, xs, key=key)
  _close((ys, carry), sequential.apply(params, xs, key=key), 1e-6)
  plain, _ = jaxseq.recurrent(cell).apply(params, xs)
  assert not np.allclose(ys, plain)   # the masks did change the recurrence


@pytest.mark.parametrize("name", sorted(CELLS))
def test_float32_vmap_and_no_batch_axes(name):
  cell = CELLS[name](H)
  params = cell.init(jax.random.PRNGKey(0), D)
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
  ys, carry = jaxseq.unroll(cell, params, xs, lengths=LENGTHS, reverse=True)
  assert ys.dtype == carry.dtype == jnp.float32
  want = _sequential(cell, params, xs, cell.initialize_carry(params, (B, D)),
                     LENGTHS, True)
  _close((ys, carry), want, 1e-5)
  one = lambda x, n: jaxseq.unroll(cell, params, x, lengths=n, reverse=True)
  _close(jax.vmap(one)(xs, jnp.asarray(LENGTHS)), (ys, carry), 1e-6)   # no batch axes inside


def test_min_lstm_gates_that_underflow_stay_finite():
  """f and i both underflow to 0 in float32 at -200: f / (f + i) would be 0/0."""
  cell = jaxseq.min_lstm(2)
  params = {"w_ih": jnp.zeros((1, 6)), "b": jnp.array([-200.0, -200, -201, -199, 1, 2])}
  ys, carry = jaxseq.unroll(cell, params, jnp.ones((1, 3, 1)))
  assert np.all(np.isfinite(ys)) and np.all(np.isfinite(carry))
  f_prime = 1.0 / (1.0 + np.exp(np.array([0.0, 0.0]) + np.array([-1.0, 1.0])))
  np.testing.assert_allclose(ys[0, 0], (1 - f_prime) * np.array([1.0, 2.0]), rtol=1e-6)


def test_params_spec_and_carry():
  cell = jaxseq.min_lstm(H, use_bias=False)
  params = cell.init(jax.random.PRNGKey(0), D)
  assert {k: v.shape for k, v in params.items()} == {"w_ih": (D, 3 * H)}
  assert isinstance(cell.spec, min_rnn.MinLSTMSpec) and cell.spec.name == "min_lstm"
  assert cell.spec.hidden_size == cell.spec["output_size"] == H
  assert cell.initialize_carry(params, (2, 7, D)).shape == (2, 7, H)
  bound = 1 / np.sqrt(D)   # nn.Linear's default: U(-1/sqrt(D), 1/sqrt(D))
  assert np.all(np.abs(np.asarray(params["w_ih"])) <= bound)
  gru_params = jaxseq.min_gru(H).init(jax.random.PRNGKey(0), (8, D))
  assert gru_params["w_ih"].shape == (D, 2 * H) and gru_params["b"].shape == (2 * H,)


def test_bad_options_and_inputs():
  with pytest.raises(ValueError, match="scan: expected one of 'auto'"):
    jaxseq.min_gru(H, scan="parallel")
  with pytest.raises(TypeError, match="activation: expected a callable"):
    jaxseq.min_lstm(H, activation="relu")
  with pytest.raises(ValueError, match="hidden_size"):
    jaxseq.min_gru(0)
  with pytest.raises(ValueError, match="scan"):
    min_rnn.linear_recurrence(jnp.ones((2, 1)), jnp.ones((2, 1)), jnp.ones(1), scan="x")
  cell = jaxseq.min_gru(H)
  params = cell.init(jax.random.PRNGKey(0), D)
  with pytest.raises(ValueError, match="xs: expected feature size 3"):
    jaxseq.unroll(cell, params, jnp.ones((B, T, D + 1)))
  with pytest.raises(ValueError, match="x_t: expected feature size 3"):
    cell.step(params, jnp.zeros((B, H)), jnp.ones((B, D + 1)))
  with pytest.raises(ValueError, match="carry"):
    cell.step(params, jnp.zeros((B + 1, H)), jnp.ones((B, D)))
  with pytest.raises(ValueError, match="min_gru"):
    jaxseq.interop.to_torch(jaxseq.recurrent(cell), params)


@pytest.mark.parametrize("scan", ["sequential", "associative"])
def test_linear_space_is_stable_where_cumulative_products_underflow(scan):
  """a = 0.01 for 300 steps: prod a underflows float32 after ~20 steps (the closed form
  b_k / prod a would overflow), yet composing pairs stays accurate in linear space."""
  a = jnp.full((300, 3), 0.01, jnp.float32)
  b = jnp.asarray(np.random.default_rng(0).normal(size=(300, 3)), jnp.float32)
  h, want = np.ones(3), np.zeros((300, 3))
  for t in range(300):
    h = 0.01 * h + np.asarray(b[t], np.float64)
    want[t] = h
  got = min_rnn.linear_recurrence(a, b, jnp.ones(3, jnp.float32), scan=scan)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
