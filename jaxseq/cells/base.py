"""The ``Cell`` record and what every dense cell shares."""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq import initializers
from jaxseq.kernels import xla

Params = Any      # a dict pytree of arrays
Carry = Any       # an array or a NamedTuple of arrays
Initializer = Callable[..., jax.Array]


class InitFn(Protocol):
  def __call__(self, key: jax.Array, input_size: Any) -> Params:
    """Fresh parameters for one step's input: ``input_size`` features (dense cells; a
    shape ``(..., D)`` works too) or the shape ``(*spatial, C)`` (conv cells)."""


class InitializeCarryFn(Protocol):
  def __call__(self, params: Params, input_shape: tuple[int, ...]) -> Carry:
    """The zero carry for one step's input of shape ``input_shape`` (batch axes included),
    Flax's ``initialize_carry`` meaning: ``(*batch, D)`` dense, ``(*batch, *spatial, C)``
    conv."""


class StepFn(Protocol):
  def __call__(self, params: Params, carry: Carry, x_t: jax.Array) -> tuple[Carry, jax.Array]:
    """One time step: ``x_t`` is ``(*batch_shape, input_size)``; returns ``(carry, y_t)``."""


class ProjectFn(Protocol):
  def __call__(self, params: Params, xs: jax.Array) -> Any:
    """The input half: ``xs (..., *features)`` with any leading axes (time included) to the
    per-step inputs of ``recur`` (``x W + b`` for dense cells, a convolution for conv
    cells), computed for all steps at once."""


class RecurFn(Protocol):
  def __call__(self, params: Params, carry: Carry, gx_t: Any) -> tuple[Carry, jax.Array]:
    """The recurrent half: one step from the carry and ``project``'s output at that step."""


class Kernel(NamedTuple):
  """A whole-sequence implementation of a cell's recurrent half (the kernel plug-in point).

  Attributes:
    recur: the recurrent half this kernel implements. ``unroll`` runs the kernel only when
      it is the cell's own ``recur`` (the same function object), so a wrapper that changes
      the recurrence (recurrent dropout, gradient-flow perturbations) and so replaces
      ``recur`` can never be skipped by a fast path: without a kernel of its own, bound to
      its own ``recur``, it falls back to the ``lax.scan`` of ``recur``.
    run: ``run(params, carry, gxs, lengths, reverse, unroll) -> (carry, ys)`` over the
      time-major ``gxs`` (``project``'s output), with ``unroll``'s semantics for ``lengths``
      (masked steps keep the carry and output zeros) and ``reverse``.
    name: the path it is, for ``unroll(..., kernel=...)``: ``"xla"`` (the default) for a
      kernel written in JAX and compiled by XLA, as the dense cells' fused path
      (``jaxseq.kernels.xla``); accelerator kernels will carry their own names.
  """
  recur: Callable[..., Any]
  run: Callable[..., Any]
  name: str = "xla"


class Cell(NamedTuple):
  """One recurrent time step as pure functions (the optax ``GradientTransformation`` pattern).

  Attributes:
    init: ``init(key, input_size) -> params``, a plain dict of arrays (conv cells take the
      input shape ``(*spatial, C)``, or the channels ``C`` when no parameter depends on the
      frame size).
    initialize_carry: ``initialize_carry(params, input_shape) -> carry`` (zeros), with
      ``input_shape`` one step's input shape including batch axes (Flax's meaning).
    step: ``step(params, carry, x_t) -> (carry, y_t)``; equals
      ``recur(params, carry, project(params, x_t))`` when the cell has both halves.
    spec: a typed description of the cell (``jaxseq.specs``), ``None`` for hand-made cells.
    project: the input half ``project(params, xs)`` for all steps at once (one GEMM or
      convolution over T·B), or ``None``: a hand-made cell giving only ``step`` (``unroll``
      then scans ``step`` itself).
    recur: the recurrent half ``recur(params, carry, gx_t) -> (carry, y_t)``, or ``None``.
    kernel: an optional whole-sequence ``Kernel`` for ``recur``.
  """
  init: InitFn
  initialize_carry: InitializeCarryFn
  step: StepFn
  spec: Any = None
  project: Optional[ProjectFn] = None
  recur: Optional[RecurFn] = None
  kernel: Optional[Kernel] = None

  def initial_carry(self, params: Params, batch_shape: tuple[int, ...] = ()) -> Carry:
    """Deprecated: ``initialize_carry(params, input_shape)``. The zero carry of a dense
    cell for inputs with leading ``batch_shape``."""
    warnings.warn("Cell.initial_carry(params, batch_shape) is deprecated; use "
                  "cell.initialize_carry(params, x_t.shape) (one step's input shape, batch "
                  "axes included)", DeprecationWarning, stacklevel=2)
    if getattr(self.spec, "feature_ndim", 1) != 1:
      _checks.fail("batch_shape", "initialize_carry(params, input_shape) for a "
                   "convolutional cell (its carry's frame size comes from the input)",
                   "initial_carry(params, batch_shape)", TypeError)
    w_ih = params.get("w_ih") if isinstance(params, Mapping) else None
    size = w_ih.shape[0] if hasattr(w_ih, "shape") else 1
    if not isinstance(batch_shape, (tuple, list)):
      _checks.fail("batch_shape", "a tuple of non-negative ints", repr(batch_shape),
                   TypeError)
    return self.initialize_carry(params, step_shape(tuple(batch_shape) + (size,)))


def halves(cell: Cell) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """``(project, recur)`` of a cell; a step-only cell's are the identity and its ``step``."""
  if cell.project is None or cell.recur is None:
    return _identity_project, cell.step
  return cell.project, cell.recur


def _identity_project(params: Params, xs: Any) -> Any:
  del params
  return xs


def split_cell(init: InitFn, initialize_carry: InitializeCarryFn, project: ProjectFn,
               recur: RecurFn, spec: Any,
               check: Callable[[Params, Carry, jax.Array], None] | None = None,
               kernel: Kernel | None = None) -> Cell:
  """A ``Cell`` from its halves; ``step`` composes them.

  With ``check`` (``check(params, carry, x_t)``, the cell's checks of one step's input),
  ``step`` first runs it, then ``check_carry`` against the unchecked step: the carry must be
  this cell's carry for ``x_t`` in structure, shapes and dtypes, as ``unroll`` demands.
  """
  name = getattr(spec, "name", "cell")

  def unchecked_step(params: Params, carry: Carry, x_t: jax.Array):
    return recur(params, carry, project(params, x_t))

  def step(params: Params, carry: Carry, x_t: jax.Array):
    if check is not None:
      check(params, carry, x_t)
      check_carry(name, initialize_carry, params, carry, x_t, step=unchecked_step)
    return unchecked_step(params, carry, x_t)
  return Cell(init, initialize_carry, step, spec, project, recur, kernel)


def fused_cell(init: InitFn, initialize_carry: InitializeCarryFn, project: ProjectFn,
               equations: xla.Equations, spec: Any,
               check: Callable[[Params, Carry, jax.Array], None] | None = None,
               input_sums: tuple = (), linear: xla.Linear = xla.matmul,
               fused_linear: xla.Linear | None = None) -> Cell:
  """A ``Cell`` whose recurrent half is written once, as
  ``equations(params, carry, gx_t, recurrent)`` with every recurrent linear map through
  ``recurrent(a, w)``: ``recur`` is ``equations`` with ``linear`` (a matmul for dense
  cells, a convolution for conv cells), and the cell's ``Kernel`` (``"xla"``, bound to that
  ``recur``) is the fused path of the same equations (``jaxseq.kernels.xla.fused_run``
  with ``fused_linear``, default ``linear``, which must give the same values and be
  linear for JAX, i.e. transposable; ``input_sums`` as there)."""
  recur = xla.recurrence(equations, linear)
  run = xla.fused_run(equations, fused_linear or linear, input_sums=input_sums)
  return split_cell(init, initialize_carry, project, recur, spec, check,
                    Kernel(recur, run, "xla"))


class LSTMState(NamedTuple):
  """Carry of LSTM-type cells: hidden state ``h`` and cell state ``c``."""
  h: jax.Array
  c: jax.Array


def gate_blocks(init: Initializer, key: jax.Array, rows: int, hidden_size: int,
                num_gates: int, dtype) -> jax.Array:
  """A ``(rows, num_gates * hidden_size)`` kernel made of per-gate blocks from ``init``."""
  keys = jax.random.split(key, num_gates)
  return jnp.concatenate([init(k, (rows, hidden_size), dtype) for k in keys], axis=-1)


def dense_params(key: jax.Array, input_size: Any, hidden_size: int, num_gates: int, *,
                 kernel_init: Initializer, recurrent_init: Initializer,
                 bias_init: Initializer, use_bias: bool, param_dtype,
                 recurrent_size: int | None = None, hidden_bias: bool = False) -> dict:
  """The params every dense cell has: ``w_ih (D, G*H)``, ``w_hh (H', G*H)``, ``b (G*H,)``.

  ``input_size`` is ``D`` or a step's input shape ``(..., D)``. ``hidden_bias`` adds
  ``b_hn (H,)``, the bias inside a reset-after gate's product.
  """
  _checks.init_key(key)
  input_size = dense_input_size(input_size)
  k_ih, k_hh, k_b, k_bn = jax.random.split(key, 4)
  params = {"w_ih": gate_blocks(kernel_init, k_ih, input_size, hidden_size, num_gates,
                                param_dtype),
            "w_hh": gate_blocks(recurrent_init, k_hh, recurrent_size or hidden_size,
                                hidden_size, num_gates, param_dtype)}
  if use_bias:
    params["b"] = bias_init(k_b, (num_gates * hidden_size,), param_dtype)
    if hidden_bias:
      params["b_hn"] = bias_init(k_bn, (hidden_size,), param_dtype)
  return params


def dense_input_size(input_size: Any) -> int:
  """``D`` from an int or from a step's input shape ``(..., D)``."""
  if isinstance(input_size, (tuple, list)) and input_size:
    input_size = input_size[-1]
  return _checks.positive_int("input_size", input_size)


def default_inits(hidden_size: int, kernel_init, recurrent_init, bias_init):
  for argument, fn in (("kernel_init", kernel_init), ("recurrent_init", recurrent_init),
                       ("bias_init", bias_init)):
    check_callable(argument, fn, optional=True)
  default = initializers.torch_default(hidden_size)
  return kernel_init or default, recurrent_init or default, bias_init or default


def check_callable(argument: str, fn: Any, *, optional: bool = False) -> None:
  """Factory options that are functions (activations, initializers) fail at build time."""
  if fn is None and optional:
    return
  if not callable(fn):
    _checks.fail(argument, "a callable" + (" or None" if optional else "")
                 + (" (a function such as jax.nn.sigmoid, not its name)"
                    if isinstance(fn, str) else ""), repr(fn), TypeError)


def check_number(argument: str, value: Any, *, optional: bool = True) -> float | None:
  """A finite real number option (``forget_bias``); ``None`` passes when optional."""
  if value is None and optional:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    _checks.fail(argument, "a finite real number", repr(value), TypeError)
  if not math.isfinite(value):
    _checks.fail(argument, "a finite real number", repr(value))
  return float(value)


def check_input(name: str, w_ih: jax.Array, x_t: Any) -> None:
  """Cheap per-step check of a step input against the input kernel."""
  if not hasattr(x_t, "shape") or not x_t.ndim:
    _checks.fail("x_t", "an array of shape (*batch_shape, input_size)", repr(x_t), TypeError)
  if x_t.shape[-1] != w_ih.shape[0]:
    _checks.fail("x_t", f"feature size {w_ih.shape[0]} (the input size of these {name} params)",
                 f"shape {tuple(x_t.shape)}")
  if not jnp.issubdtype(x_t.dtype, jnp.floating):
    _checks.fail("x_t", "a floating-point array", f"dtype {x_t.dtype}", TypeError)


def check_carry(name: str, initialize_carry: InitializeCarryFn, params: Params, carry: Any,
                x_t: jax.Array, step: StepFn | None = None) -> None:
  """A step's carry must be this cell's carry for ``x_t``.

  Its structure and shapes must be exactly the zero carry's: broadcasting a carry of another
  batch shape would silently give a wrong answer. Given the cell's unchecked ``step``, its
  dtypes must not change the arithmetic: the step must return from it the dtypes it returns
  from the zero carry, and each leaf must be in the zero carry's dtype, the returned one
  (they differ where the input widens the arithmetic, a float64 ``x_t`` on float32 params)
  or a wider float that the step casts down (a float32 carry into a bfloat16 cell, Flax's
  convention). So a float64 carry, which would turn a float32 cell into a float64 one, and
  a float16 or integer carry, which would mix into its arithmetic, fail here (``TypeError``),
  as ``unroll`` refuses them. One ``eval_shape`` traces the zero carry and the steps,
  once per abstract signature (``_step_carries``).
  """
  def abstract(argument, tree):
    def leaf_struct(leaf):
      try:
        return jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf))
      except TypeError:
        _checks.fail(argument, "a pytree of arrays", f"a leaf of type {type(leaf).__name__}",
                     TypeError)
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(leaf_struct(leaf) for leaf in leaves)

  carry_structs = abstract("carry", carry)
  given = jax.tree.unflatten(*carry_structs)
  expected, returned, from_given = _step_carries(
      initialize_carry, step, abstract("params", params),
      jax.ShapeDtypeStruct(tuple(x_t.shape), x_t.dtype), carry_structs)
  if not _checks.same_shapes(given, expected):
    _checks.fail("carry", f"the {name} carry for x_t of shape {tuple(x_t.shape)}, shaped "
                 f"{_checks.describe(expected)}", _checks.describe(carry))
  if step is None:
    return
  dtypes = lambda tree: [leaf.dtype for leaf in jax.tree.leaves(tree)]
  got, outs = dtypes(given), dtypes(returned)
  # A wider float is fine where the step casts it down to what it returns anyway.
  fits = lambda g, z, o: g in (z, o) or jnp.promote_types(g, o) == g
  if (from_given is None or dtypes(from_given) != outs
      or not all(fits(g, z, o) for g, z, o in zip(got, dtypes(expected), outs))):
    _checks.fail("carry", f"the {name} carry in the dtypes its step returns for x_t of dtype "
                 f"{x_t.dtype} ({', '.join(map(str, outs))})",
                 f"dtypes ({', '.join(map(str, got))})", TypeError)


@functools.lru_cache(maxsize=256)
def _step_carries(initialize_carry, step, params, x_t, carry):
  """``check_carry``'s one ``eval_shape``, cached on the abstract arguments (so an eager loop
  of steps traces it once): the zero carry for ``x_t``, the carry ``step`` returns from it
  and the one it returns from ``carry`` (``None`` where that carry has other shapes or a
  non-float leaf). ``params`` and ``carry`` are ``(treedef, leaf structs)`` pairs."""
  def carries(p, x, c):
    zero = initialize_carry(p, tuple(x.shape))
    if step is None:
      return zero, None, None
    returned = step(p, zero, x)[0]
    if not _checks.same_shapes(c, zero) or not all(
        jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree.leaves(c)):
      return zero, returned, None
    if all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(c), jax.tree.leaves(zero))):
      return zero, returned, returned  # the usual case: one trace of the step
    return zero, returned, step(p, c, x)[0]

  unflatten = lambda pair: jax.tree.unflatten(pair[0], pair[1])
  return jax.eval_shape(carries, unflatten(params), x_t, unflatten(carry))


def dense_check(name: str, initialize_carry: InitializeCarryFn):
  """``split_cell``'s ``check`` for dense cells: the step input (``split_cell`` then checks
  the carry). ``initialize_carry`` is unused, kept for the factories that pass it."""
  del initialize_carry

  def check(params: Params, carry: Carry, x_t: jax.Array) -> None:
    del carry
    check_input(name, params["w_ih"], x_t)
  return check


def dense_project(dtype):
  """The dense input half ``x W_ih + b`` (all gates), over any leading axes: computed in
  ``dtype`` (``None``: JAX's promotion of ``x`` and ``W_ih``) with the weight and bias
  gradients accumulated in the params' dtype (``xla.mixed``, ``add_bias``)."""
  return input_half(dtype, xla.matmul)


def input_half(dtype, linear: xla.Linear):
  """``linear(x, W_ih) + b`` in ``dtype`` (``None``: promotion), weight and bias gradients
  in the params' dtype: the input half of dense (``xla.matmul``) and conv cells."""
  linear = xla.mixed(linear)

  def project(params: Params, xs: jax.Array) -> jax.Array:
    w_ih = params["w_ih"]
    xs = jnp.asarray(xs, dtype or jnp.result_type(xs, w_ih))
    return add_bias(linear(xs, w_ih), params.get("b"))
  return project


def add_bias(x: jax.Array, b: jax.Array | None) -> jax.Array:
  """``x + b`` in ``x``'s dtype; a ``b`` wider than ``x`` (a float32 bias under bfloat16
  compute) is added in its own dtype, so its gradient, a sum over every row, is too."""
  if b is None:
    return x
  if not xla.wider(b, x):
    return x + b
  return (x.astype(b.dtype) + b).astype(x.dtype)


def cast(dtype, *arrays):
  """Casts arrays to the compute dtype (``None``: JAX's usual promotion)."""
  if dtype is None:
    return arrays
  return tuple(None if a is None else jnp.asarray(a, dtype) for a in arrays)


def common_options(hidden_size: int, use_bias: bool, dtype, param_dtype) -> int:
  hidden_size = _checks.positive_int("hidden_size", hidden_size)
  if not isinstance(use_bias, bool):
    _checks.fail("use_bias", "a bool", repr(use_bias), TypeError)
  for argument, value in (("dtype", dtype), ("param_dtype", param_dtype)):
    if value is not None:
      try:
        jnp.dtype(value)
      except TypeError:
        _checks.fail(argument, "a floating dtype", repr(value), TypeError)
      if not jnp.issubdtype(value, jnp.floating):
        _checks.fail(argument, "a floating dtype", repr(value), TypeError)
  return hidden_size


def step_shape(input_shape: Any, min_rank: int = 1) -> tuple[int, ...]:
  """Validates ``initialize_carry``'s ``input_shape``: one step's input shape, batch axes
  included, as a tuple of non-negative ints of rank >= ``min_rank``."""
  expected = (f"one step's input shape (x_t.shape), a tuple of >= {min_rank} non-negative "
              "ints with the batch axes first")
  if not isinstance(input_shape, (tuple, list)):
    _checks.fail("input_shape", expected, repr(input_shape), TypeError)
  if len(input_shape) < min_rank or not all(
      isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
      for d in input_shape):
    _checks.fail("input_shape", expected, repr(input_shape))
  return tuple(int(d) for d in input_shape)


def zeros_carry(hidden_size: int, dtype):
  """``initialize_carry`` for cells whose carry is one ``(*batch, H)`` array."""
  def initialize_carry(params: Params, input_shape: tuple[int, ...]) -> jax.Array:
    batch_shape = step_shape(input_shape)[:-1]
    return jnp.zeros(batch_shape + (hidden_size,), dtype or params["w_hh"].dtype)
  return initialize_carry
