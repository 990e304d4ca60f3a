"""Pallas kernels (``jaxseq.kernels.pallas``) in interpret mode against the reference scan.

Oracle: ``jaxseq.sequence.scan_recur`` (the ``lax.scan`` of the cell's own ``recur``,
differentiated by JAX's autodiff) and ``unroll(..., kernel="reference")``. The Pallas path's
backward is hand-written (a ``custom_vjp`` with its own backward kernel), so agreement of
values and gradients to ~1e-12 in float64 is agreement of two independent derivations.
Shapes are tiny: interpret mode compiles each kernel pair into an XLA program, and compile
time is what these tests spend.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq
from jaxseq.kernels import pallas
from jaxseq.sequence import scan_recur

pytestmark = pytest.mark.skipif(not pallas.AVAILABLE,
                                reason="jax.experimental.pallas does not import")

KEY = jax.random.PRNGKey(0)
T, B, D, H = 5, 3, 4, 6
LENGTHS = (0, T, 3)   # an empty sequence, a full one, a padded one

CELLS = {
    "lstm": lambda: jaxseq.lstm(H),
    "gru": lambda: jaxseq.gru(H),
    "gru_reset_before": lambda: jaxseq.gru(H, reset_after=False),
}


@functools.lru_cache(maxsize=None)
def _cell(name):
  return CELLS[name]()   # one object per name, so jit caches keyed on it are reused


def _setup(name, dtype, batch=(B,)):
  """Params, time-major inputs ``xs (T, *batch, D)`` and a non-zero carry, drawn with NumPy
  (eager JAX ops would compile a dozen small programs per dtype)."""
  cell = _cell(name)
  rng = np.random.default_rng(0)
  draw = lambda shape, scale: (scale * rng.standard_normal(shape)).astype(dtype)
  shapes = jax.eval_shape(lambda key: cell.init(key, D), KEY)
  # Non-zero biases (b_hn included), so that parity cannot hide a dropped term.
  params = {k: draw(v.shape, 0.3 if k.startswith("b") else 0.5) for k, v in shapes.items()}
  carry = jax.tree.map(lambda c: draw(c.shape, 0.5),
                       jax.eval_shape(lambda p: cell.initialize_carry(p, batch + (D,)), params))
  return cell, params, draw((T,) + batch + (D,), 1.0), carry


def _inputs(name, dtype, batch=(B,)):
  """``_setup`` with the input half done in NumPy: ``gxs = xs W_ih + b`` (time-major)."""
  cell, params, xs, carry = _setup(name, dtype, batch)
  return cell, params, xs @ params["w_ih"] + params["b"], carry


def _mask(lengths):
  """The ``(T, B)`` validity of each step."""
  return np.arange(T)[:, None] < np.asarray(lengths)[None]


# XLA's backend optimisation level 0: these tiny programs compile ~35% faster and compile
# time is what this file spends; the arithmetic is the same.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _loss(carry, ys):
  """A scalar that weighs every output and carry entry differently (fixed cotangents)."""
  total = 0.0
  for k, leaf in enumerate(jax.tree.leaves((carry, ys))):
    weights = np.cos(np.arange(leaf.size) * (1.3 + k)).reshape(leaf.shape)
    total = total + jnp.sum(weights.astype(leaf.dtype) * leaf) + 0.1 * jnp.sum(leaf * leaf)
  return total


@functools.lru_cache(maxsize=None)
def _paths(name, reverse, with_lengths, x64):
  """jitted ``(value, grads wrt (params, carry, gxs), outputs)`` of the Pallas run and of
  the reference scan; cached per configuration so tests sharing one compile once."""
  del x64  # part of the cache key: jit caches differ with and without 64-bit types
  cell = _cell(name)
  run = pallas.run_for(cell)

  def of(path):
    def f(params, carry, gxs, lengths):
      out = path(params, carry, gxs, lengths if with_lengths else None, reverse)
      return _loss(*out), out
    return _jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
  kernel = of(lambda p, c, g, l, r: run(p, c, g, l, r, 1))
  reference = of(lambda p, c, g, l, r: scan_recur(cell.recur, p, c, g, l, r))
  return kernel, reference


def _assert_close(got, want, tol):
  leaves_got, leaves_want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(leaves_got, leaves_want):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _compare(name, dtype, reverse, with_lengths, tol, batch=(B,), lengths=LENGTHS):
  cell, params, gxs, carry = _inputs(name, dtype, batch)
  lengths = np.asarray(lengths).reshape(batch)
  kernel, reference = _paths(name, reverse, with_lengths, dtype == jnp.float64)
  (value, out), grads = kernel(params, carry, gxs, lengths)
  (value_ref, out_ref), grads_ref = reference(params, carry, gxs, lengths)
  _assert_close(out, out_ref, tol)
  _assert_close(value, value_ref, tol)
  _assert_close(grads, grads_ref, tol)
  return grads


# (name, lengths, reverse): every combination of lengths (None / with 0 and T) and order
# occurs, and each family meets the mask and the reverse order.
CASES = [("lstm", False, False), ("lstm", True, True), ("gru", True, False),
         ("gru", False, True), ("gru_reset_before", False, False),
         ("gru_reset_before", True, True)]


@pytest.mark.parametrize("name,with_lengths,reverse", CASES)
def test_values_and_gradients_match_scan_float64(name, with_lengths, reverse, x64):
  _compare(name, jnp.float64, reverse, with_lengths, 1e-10)


def test_float32_two_batch_axes():
  _compare("lstm", jnp.float32, False, True, 1e-5, batch=(2, 3),
           lengths=((0, 5, 3), (1, 5, 4)))


def test_float32_masked_steps_never_reach_results():
  """float32 against the scan; then non-finite ``gx`` at padded steps changes no value and
  no gradient: masked steps keep the carry, store zero gate residuals and pass the
  cotangent through (the reference scan, whose masked steps still run, would give nan
  gradients here)."""
  _compare("gru_reset_before", jnp.float32, True, True, 1e-5)
  cell, params, gxs, carry = _inputs("gru_reset_before", jnp.float32)
  lengths = np.asarray(LENGTHS)
  padded = ~_mask(lengths)[..., None]
  kernel, _ = _paths("gru_reset_before", True, True, False)
  clean = kernel(params, carry, np.where(padded, 0.0, gxs).astype(np.float32), lengths)
  dirty = kernel(params, carry, np.where(padded, np.nan, gxs).astype(np.float32), lengths)
  _assert_close(dirty, clean, 0.0)


def test_unroll_equivalence():
  """``cell.project`` then the Pallas run equals ``unroll(kernel="reference")`` (float32,
  batch-major, lengths) in the outputs, the final carry and the gradients of every param
  (``w_ih``, ``b`` through the input projection, ``b_hn``), the inputs and the carry."""
  cell, params, xs, carry = _setup("gru", jnp.float32)
  xs = np.moveaxis(xs, 0, 1)                                       # batch-major (B, T, D)
  lengths = np.asarray(LENGTHS)
  run = pallas.run_for(cell)

  def via_pallas(params, xs, carry):
    final, ys = run(params, carry, cell.project(params, jnp.moveaxis(xs, 1, 0)), lengths,
                    False, 1)
    ys = jnp.moveaxis(ys, 0, 1)
    return _loss(final, ys), (ys, final)

  def via_unroll(params, xs, carry):
    ys, final = jaxseq.unroll(cell, params, xs, carry, lengths=lengths, kernel="reference")
    return _loss(final, ys), (ys, final)
  grad = lambda f: _jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
  (value, out), grads = grad(via_pallas)(params, xs, carry)
  (value_ref, out_ref), grads_ref = grad(via_unroll)(params, xs, carry)
  _assert_close((value, out), (value_ref, out_ref), 1e-5)
  _assert_close(grads, grads_ref, 1e-5)
  assert set(grads[0]) == {"w_ih", "w_hh", "b", "b_hn"}
  assert all(float(jnp.abs(g).max()) > 0 for g in grads[0].values())


def test_forward_only_kernel_with_unroll_factor():
  """Without differentiation the primal kernel runs (no stored gates); ``unroll=2``."""
  cell, params, gxs, carry = _inputs("lstm", jnp.float32)
  lengths = np.asarray(LENGTHS)
  run = _jit(pallas.run_for(cell), static_argnums=(4, 5))
  want = scan_recur(cell.recur, params, carry, gxs, lengths, True)
  _assert_close(run(params, carry, gxs, lengths, True, 2), want, 1e-5)


def test_run_for_is_cached_per_configuration():
  assert pallas.run_for(jaxseq.lstm(H)) is pallas.run_for(jaxseq.lstm(H))
  assert pallas.run_for(jaxseq.gru(H)) is not pallas.run_for(jaxseq.gru(H, reset_after=False))
  assert pallas.run_for(jaxseq.lstm(H), interpret=True).options["interpret"] is True


def test_mixed_dtypes_are_refused():
  cell, params, gxs, carry = _inputs("lstm", jnp.float32)
  with pytest.raises(TypeError, match="carry: expected h in the dtype of gxs"):
    pallas.run_for(cell)(params, carry, gxs.astype(jnp.bfloat16), None, False, 1)
  half = carry._replace(c=carry.c.astype(jnp.bfloat16))
  with pytest.raises(TypeError, match="carry: expected c in the dtype of gxs .* or a wider"):
    pallas.run_for(cell)(params, half, gxs, None, False, 1)   # float32 compute, bf16 c


BF16_CELLS = {
    "lstm": lambda: jaxseq.lstm(H, dtype=jnp.bfloat16),
    "gru": lambda: jaxseq.gru(H, dtype=jnp.bfloat16),
    "gru_reset_before": lambda: jaxseq.gru(H, reset_after=False, dtype=jnp.bfloat16),
}


@pytest.mark.parametrize("name", list(BF16_CELLS))
def test_bfloat16_compute_matches_the_reference(name):
  """Mixed precision (bfloat16 compute on float32 params; the LSTM's cell state float32)
  against the reference scan of the same cell: outputs within a bfloat16 rounding, the carry
  in the cell's dtypes, float32 weight gradients within bfloat16 accuracy (the kernel's
  backward rounds at other points than autodiff does). The float32 sums themselves are
  checked in closed form in tests/test_kernels.py."""
  cell = BF16_CELLS[name]()
  _, params, xs, _ = _setup(name, np.float32)
  xs = np.moveaxis(xs, 0, 1)                    # batch-major, as unroll takes it
  lengths = np.asarray(LENGTHS)

  def run(kernel):
    def loss(p):
      ys, carry = jaxseq.unroll(cell, p, xs, lengths=lengths, kernel=kernel)
      return _loss(carry, ys), (ys, carry)
    return _jit(jax.value_and_grad(loss, has_aux=True))(params)
  (_, (ys, carry)), grads = run("pallas")
  (_, (ys_ref, carry_ref)), grads_ref = run("reference")
  assert ys.dtype == jnp.bfloat16
  assert [c.dtype for c in jax.tree.leaves(carry)] == [
      c.dtype for c in jax.tree.leaves(carry_ref)] == (
      [jnp.bfloat16, jnp.float32] if name == "lstm" else [jnp.bfloat16])
  for got, want in zip(jax.tree.leaves((ys, carry)), jax.tree.leaves((ys_ref, carry_ref))):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=1e-2, atol=1e-2)
  if name == "lstm":   # c_t = f c_{t-1} + i g summed in float32 from the same bf16 gates
    np.testing.assert_allclose(carry.c, carry_ref.c, rtol=1e-6, atol=1e-6)
  for key in params:
    assert grads[key].dtype == jnp.float32, key
    scale = float(np.abs(grads_ref[key]).max())
    np.testing.assert_allclose(grads[key], grads_ref[key], atol=0.02 * scale)


def test_reason_accepts_exactly_the_supported_cells():
  for name in CELLS:
    assert pallas.reason(_cell(name)) is None
  assert pallas.reason(jaxseq.gru(H, use_bias=False)) is None
  refused = {
      "peephole": jaxseq.lstm(H, peephole=True),
      "coupled": jaxseq.lstm(H, coupled=True),
      "proj_size": jaxseq.lstm(H, proj_size=3),
      "gate_fn": jaxseq.lstm(H, gate_fn=jax.nn.hard_sigmoid),
      "hidden_fn": jaxseq.lstm(H, hidden_fn=jnp.sin),
      "activation": jaxseq.gru(H, activation=jax.nn.relu),
      "mgu": jaxseq.mgu(H),
      "simple_rnn": jaxseq.simple_rnn(H),
      "conv_lstm": jaxseq.conv_lstm(4, (3, 3)),
      "wrapper": jaxseq.lstm(H)._replace(kernel=None),   # how recurrent dropout wraps
  }
  for word, cell in refused.items():
    why = pallas.reason(cell)
    assert isinstance(why, str) and word in why, (word, why)
    with pytest.raises(ValueError, match="Pallas kernel"):
      pallas.run_for(cell)


def test_tpu_interpret_params():
  """The forward kernel under the TPU interpreter (``pltpu.InterpretParams``)."""
  from jax.experimental.pallas import tpu as pltpu
  cell, params, gxs, carry = _inputs("lstm", jnp.float32)
  lengths = np.asarray(LENGTHS)
  run = pallas.run_for(cell, interpret=pltpu.InterpretParams())
  got = _jit(lambda *a: run(*a, lengths, True, 1))(params, carry, gxs)
  _assert_close(got, scan_recur(cell.recur, params, carry, gxs, lengths, True), 1e-5)


@pytest.mark.parametrize("name,dtype", [("lstm", jnp.float32), ("gru", jnp.float32),
                                        ("gru_reset_before", jnp.float32),
                                        ("lstm", jnp.bfloat16)])
def test_kernels_lower_for_tpu(name, dtype):
  """Pallas's TPU lowering (Mosaic) of the forward and backward kernels, on this CPU-only
  machine: ``jax.export`` for the ``"tpu"`` platform lowers every ``pallas_call`` to a Mosaic
  custom call (one for the forward, two for forward+backward), with ``lengths`` and
  ``reverse``, at TPU-tiled sizes (B 8 or 16, H 128). Mosaic's compilation needs a TPU."""
  make = {"lstm": jaxseq.lstm, "gru": jaxseq.gru,
          "gru_reset_before": functools.partial(jaxseq.gru, reset_after=False)}[name]
  cell = make(128, dtype=None if dtype == jnp.float32 else dtype)
  batch = 8 if dtype == jnp.float32 else 16
  params = jax.eval_shape(lambda key: cell.init(key, 16), KEY)
  carry = jax.eval_shape(lambda p: cell.initialize_carry(p, (batch, 16)), params)
  gxs = jax.ShapeDtypeStruct((4, batch, params["w_ih"].shape[-1]), dtype)
  run = pallas.run_for(cell, interpret=False)
  lengths = np.array([4, 0, 2, 3] * (batch // 4))
  forward = lambda p, c, g: run(p, c, g, lengths, True, 1)
  loss = lambda p, c, g: jnp.sum(forward(p, c, g)[1].astype(jnp.float32) ** 2)
  for fn, calls in ((forward, 1), (jax.grad(loss, argnums=(0, 1, 2)), 2)):
    exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(params, carry, gxs)
    assert exported.platforms == ("tpu",)
    assert exported.mlir_module().count("tpu_custom_call") == calls


def test_not_available_where_the_kernels_do_not_lower(monkeypatch):
  """On a GPU backend (faked) the kernels do not lower (Mosaic GPU; module docstring):
  ``"pallas"`` is not available, asking for it is a ``ValueError`` naming the backend, and
  only interpret mode runs."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  cell, params, xs, _ = _setup("gru", np.float32)
  assert "pallas" not in jaxseq.kernels.available()
  assert "'gpu' backend" in pallas.backend_reason()
  with pytest.raises(ValueError, match="kernel: .*'pallas' is not available on this "
                                       "machine: .*do not lower for the 'gpu' backend"):
    jaxseq.unroll(cell, params, np.moveaxis(xs, 0, 1), kernel="pallas")
  for interpret in (None, False):
    with pytest.raises(ValueError, match="interpret: expected True .* got " + str(interpret)):
      pallas.run_for(cell, interpret=interpret)
  assert pallas.run_for(cell, interpret=True).options["interpret"] is True


def test_bidirectional_remat_and_vmap_match_the_reference():
  """The Pallas path inside layers: a bidirectional LSTM layer under ``remat=2`` (chunks of
  2 over T=5, a shorter last one) with lengths 0/T/partial, values and parameter gradients;
  and ``jax.vmap`` over the path (per-example gradients of a reset-before GRU). Each against
  the same with ``kernel="reference"``, float32."""
  _, params, xs, _ = _setup("lstm", np.float32)
  xs, lengths = np.moveaxis(xs, 0, 1), np.asarray(LENGTHS)
  layer = lambda k: jaxseq.bidirectional(jaxseq.recurrent(_cell("lstm"), remat=2, kernel=k))
  bi_params = {"forward": params,
               "backward": jax.tree.map(lambda p: 0.8 * p[..., ::-1], params)}
  assert jax.tree.structure(bi_params) == jax.tree.structure(
      jax.eval_shape(lambda key: layer("reference").init(key, D), KEY))

  def run(kernel):
    def loss(p):
      ys, carry = layer(kernel).apply(p, xs, lengths=lengths)
      return _loss(carry, ys), ys
    return _jit(jax.value_and_grad(loss, has_aux=True))(bi_params)
  assert "pallas_call" in str(jax.make_jaxpr(   # the layer takes the Pallas path
      lambda p: layer("pallas").apply(p, xs, lengths=lengths))(bi_params))
  (value, ys), grads = run("pallas")
  (value_ref, ys_ref), grads_ref = run("reference")
  _assert_close((value, ys, grads), (value_ref, ys_ref, grads_ref), 1e-5)

  cell, params, xs, _ = _setup("gru_reset_before", np.float32)
  xs = np.moveaxis(xs, 0, 1)
  per_example = lambda k: _jit(jax.vmap(jax.grad(lambda p, x: _loss(
      *jaxseq.unroll(cell, p, x, kernel=k)[::-1])), in_axes=(None, 0)))(params, xs)
  assert "pallas_call" in str(jax.make_jaxpr(
      jax.vmap(lambda x: jaxseq.unroll(cell, params, x, kernel="pallas")))(xs))
  _assert_close(per_example("pallas"), per_example("reference"), 1e-5)
