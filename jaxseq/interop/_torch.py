"""PyTorch weight interop: ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` to and from jaxseq layers.

PyTorch is an optional dependency: it is imported inside the functions that need it.

Example::

    layer, params = jaxseq.interop.from_torch(module)     # nn.LSTM(4, 6, num_layers=2)
    ys, carry = layer.apply(params, x)                     # == module(x)[0]
    h_n, c_n = jaxseq.interop.carry_to_torch(layer, carry)  # == module(x)[1]
    state = jaxseq.interop.to_torch(layer, params)         # {"weight_ih_l0": ndarray, ...}
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

PyTorch keeps two bias vectors per direction (``b_ih``, ``b_hh``) where one suffices:
``from_torch`` stores their sum in ``b`` (for a GRU, the ``n`` block of ``b_hh`` stays apart
as ``b_hn``, because the reset gate multiplies it), and ``to_torch`` returns ``(b, 0)``
(``(b, [0, 0, b_hn])`` for a GRU). Weights round-trip exactly; biases round-trip as a
function. For a gradient tree the same mapping gives ``bias_ih`` the gradient of ``b``,
which PyTorch reports for ``bias_ih`` and ``bias_hh`` alike (GRU: except the ``n`` block of
``bias_hh``, which is ``b_hn``'s gradient).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq import cells
from jaxseq import layers as layers_lib
from jaxseq import specs
from jaxseq.cells.base import Cell, LSTMState
from jaxseq.layers import Layer

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_TANH = (jnp.tanh, jax.lax.tanh, np.tanh)
_RELU = (jax.nn.relu,)
_SIGMOID = (jax.nn.sigmoid, jax.lax.logistic)


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError("jaxseq.interop: PyTorch is required for this function "
                      "(pip install torch)") from error
  return torch


def _to_numpy(tensor) -> np.ndarray:
  """A float32 NumPy copy of a (possibly GPU, possibly half) PyTorch tensor."""
  import torch  # pylint: disable=import-outside-toplevel
  return np.array(tensor.detach().to("cpu", torch.float32).numpy(), dtype=np.float32)


def from_torch(module) -> tuple[Layer, list]:
  """Converts a PyTorch ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU`` into a jaxseq layer and params.

  The layer is always ``jaxseq.stack(*per_layer, dropout=module.dropout)`` with one entry
  per PyTorch layer: ``recurrent(cell, time_major=not batch_first)``, wrapped in
  ``bidirectional`` when the module is. The cells are ``lstm(H, proj_size=P)``,
  ``gru(H, reset_after=True)`` or ``simple_rnn(H, activation=tanh | relu)``, each with
  ``use_bias=module.bias``. ``num_layers``, ``bidirectional``, ``proj_size``, ``bias``,
  ``batch_first``, ``nonlinearity`` and ``dropout`` (between layers, only when ``apply``
  gets a ``key``, as PyTorch's training mode) are honoured. ``dropout=1.0``, which PyTorch
  accepts, means that in training mode every layer after the first reads zeros; the
  stack then has ``dropout=0`` and those layers zero their input when given a ``key``.

  Args:
    module: the PyTorch module (any device and floating dtype; weights are copied).

  Returns:
    ``(layer, params)``: ``layer.apply(params, x)[0]`` equals ``module(x)[0]`` for the
    same ``x`` (same axis convention; unbatched ``(T, D)`` inputs too). ``params`` is a
    list with one entry per layer: the cell's params (``w_ih (D, G*H)``,
    ``w_hh (H', G*H)``, ``b (G*H,)``, GRU's ``b_hn (H,)``, LSTM's ``w_hr (H, P)``; float32,
    kernels transposed to ``(in, out)``),
    or ``{"forward": ..., "backward": ...}`` of them.

  Raises:
    TypeError: ``module`` is not an ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU``.
  """
  torch = _import_torch()
  nn = torch.nn
  if not isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
    _checks.fail("module", "a torch.nn.RNN, nn.LSTM or nn.GRU", type(module).__name__,
                 TypeError)
  mode = module.mode
  H = module.hidden_size
  proj_size = getattr(module, "proj_size", 0) or None
  use_bias = bool(module.bias)
  if mode == "LSTM":
    cell = cells.lstm(H, proj_size=proj_size, use_bias=use_bias)
  elif mode == "GRU":
    cell = cells.gru(H, reset_after=True, use_bias=use_bias)
  elif mode in ("RNN_TANH", "RNN_RELU"):
    activation = jnp.tanh if mode == "RNN_TANH" else jax.nn.relu
    cell = cells.simple_rnn(H, activation=activation, use_bias=use_bias)
  else:  # a subclass with a mode PyTorch itself does not define
    _checks.fail("module.mode", "one of 'LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU'", repr(mode))

  directions = ("", "_reverse") if module.bidirectional else ("",)
  per_layer, params = [], []
  for k in range(module.num_layers):
    forward = layers_lib.recurrent(cell, time_major=not module.batch_first)
    per_layer.append(layers_lib.bidirectional(forward) if module.bidirectional else forward)
    trees = [_cell_from_torch(module, mode, H, f"_l{k}{suffix}") for suffix in directions]
    params.append(dict(zip(("forward", "backward"), trees)) if module.bidirectional
                  else trees[0])
  rate = float(module.dropout)
  if rate == 1.0:
    # PyTorch accepts dropout=1.0: in training mode F.dropout(p=1) zeroes every layer's
    # output but the last, so each later layer reads zeros (and passes no gradient down);
    # in eval mode nothing is dropped. stack's inverted dropout would divide by 1 - rate
    # = 0, so the zeros are given here, to layers 1.. when apply gets a key.
    per_layer = per_layer[:1] + [_reads_zeros_with_key(layer) for layer in per_layer[1:]]
    rate = 0.0
  layer = layers_lib.stack(*per_layer, dropout=rate)
  return layer, params


def _reads_zeros_with_key(layer: Layer) -> Layer:
  """``layer`` reading zeros instead of ``xs`` when ``apply`` gets a ``key`` (training)."""
  def apply(params, xs, *, key=None, **options):
    if key is not None:
      xs = jnp.zeros_like(xs)
    return layer.apply(params, xs, key=key, **options)
  return layer._replace(apply=apply)


def _cell_from_torch(module, mode: str, H: int, suffix: str) -> dict:
  get = lambda name: _to_numpy(getattr(module, name + suffix))
  params = {"w_ih": get("weight_ih").T, "w_hh": get("weight_hh").T}
  if module.bias:
    b_ih, b_hh = get("bias_ih"), get("bias_hh")
    if mode == "GRU":  # r_t multiplies W_hn h + b_hn, so b_hn cannot join b
      params["b"] = b_ih + np.concatenate([b_hh[:2 * H], np.zeros(H, np.float32)])
      params["b_hn"] = b_hh[2 * H:]
    else:
      params["b"] = b_ih + b_hh
  if getattr(module, "proj_size", 0):
    params["w_hr"] = get("weight_hr").T
  return {name: jnp.array(value, dtype=jnp.float32) for name, value in params.items()}


def to_torch(layer: Layer | Cell, tree: Any) -> dict[str, np.ndarray]:
  """Maps a params-shaped tree of a jaxseq layer onto PyTorch's parameter names.

  Args:
    layer: a ``jaxseq.stack`` of ``recurrent``/``bidirectional`` layers (what
      ``from_torch`` builds), or a single ``recurrent``/``bidirectional`` layer, or a
      ``Cell``, over ``lstm`` (no peephole, not coupled, default activations, optional
      ``proj_size``), ``gru`` (``reset_after=True``, default activations) or
      ``simple_rnn`` (tanh or relu) cells, one configuration throughout, bidirectional
      layers merged by ``"concat"``, no residual connections.
    tree: the layer's params, or any tree shaped like them (their gradients, say).

  Returns:
    ``{name: array}`` with PyTorch's names and shapes, in ``state_dict`` order:
    ``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}...``, ``bias_ih_l{k}...``,
    ``bias_hh_l{k}...``, ``weight_hr_l{k}...``. Kernels are transposed to ``(out, in)``;
    ``bias_ih = b`` and ``bias_hh = 0`` (GRU: ``[0, 0, b_hn]``). Load it with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})`` into
    the PyTorch module of the same configuration.

  Raises:
    ValueError: the layer computes something PyTorch's modules cannot (the message names
      it), or ``tree`` is not shaped like its params.
    TypeError: ``layer`` is not a jaxseq ``Layer`` or ``Cell``.
  """
  kind, cells_per_layer = _layout(layer, strict=True)
  config = _torch_config(cells_per_layer)
  state = {}
  for k, trees in enumerate(_split(kind, tree, cells_per_layer, "tree")):
    for d, params in enumerate(trees):
      where = _where(kind, k, d, len(trees), "tree")
      state.update(_cell_to_torch(where, config, k, len(trees), params,
                                  f"_l{k}" + ("_reverse" if d else "")))
  return state


def _float_numpy(where: str, leaf: Any) -> np.ndarray:
  if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
    _checks.fail(where, "an array", type(leaf).__name__, TypeError)
  array = np.array(leaf)
  if array.dtype not in (np.float16, np.float32, np.float64):  # bfloat16: torch can't read it
    array = array.astype(np.float32)
  return array


def _cell_to_torch(where: str, config: dict, k: int, num_directions: int, params: Any,
                   suffix: str) -> dict[str, np.ndarray]:
  H, G, out_size = config["hidden_size"], _GATES[config["mode"]], config["output_size"]
  names = ["w_ih", "w_hh"] + (["b"] if config["use_bias"] else [])
  names += ["b_hn"] if config["mode"] == "GRU" and config["use_bias"] else []
  names += ["w_hr"] if config["proj_size"] else []
  if not isinstance(params, Mapping) or set(params) != set(names):
    _checks.fail(where, f"a dict with keys {sorted(names)}",
                 sorted(params) if isinstance(params, Mapping) else type(params).__name__)
  arrays = {name: _float_numpy(f"{where}[{name!r}]", params[name]) for name in names}
  shapes = {"w_hh": (out_size, G * H), "b": (G * H,), "b_hn": (H,),
            "w_hr": (H, config["proj_size"])}
  rows = None if k == 0 else num_directions * out_size
  shapes["w_ih"] = (arrays["w_ih"].shape[0] if rows is None else rows, G * H)
  for name, array in arrays.items():
    if array.shape != shapes[name]:
      _checks.fail(f"{where}[{name!r}]", f"shape {shapes[name]}", f"shape {array.shape}")

  state = {"weight_ih" + suffix: np.ascontiguousarray(arrays["w_ih"].T),
           "weight_hh" + suffix: np.ascontiguousarray(arrays["w_hh"].T)}
  if config["use_bias"]:
    b = arrays["b"]
    b_hh = np.zeros_like(b)
    if config["mode"] == "GRU":
      b_hh[2 * H:] = arrays["b_hn"]
    state["bias_ih" + suffix], state["bias_hh" + suffix] = b, b_hh
  if config["proj_size"]:
    state["weight_hr" + suffix] = np.ascontiguousarray(arrays["w_hr"].T)
  return state


def carry_to_torch(layer: Layer | Cell, carry: Any):
  """A jaxseq layer's final carry as PyTorch's ``h_n`` (and ``c_n`` for LSTMs).

  Args:
    layer: a layer as accepted by ``to_torch`` (a stack of ``recurrent``/``bidirectional``
      layers, one such layer, or a ``Cell``).
    carry: what ``layer.apply`` returned as its carry.

  Returns:
    ``h_n`` ``(num_layers * num_directions, *batch, H_out)``, or ``(h_n, c_n)`` when the
    carries are ``LSTMState``s; entry ``k * num_directions + d`` is layer ``k``, direction
    ``d`` (0 forward, 1 backward), as PyTorch orders them. JAX arrays (differentiable).
  """
  kind, cells_per_layer = _layout(layer, strict=False)
  flat = [c for trees in _split(kind, carry, cells_per_layer, "carry") for c in trees]
  is_lstm = [isinstance(c, LSTMState) for c in flat]
  if any(is_lstm) and not all(is_lstm):
    _checks.fail("carry", "the same carry type in every layer and direction",
                 [type(c).__name__ for c in flat], TypeError)
  if all(is_lstm):
    return jnp.stack([c.h for c in flat]), jnp.stack([c.c for c in flat])
  return jnp.stack(flat)


def carry_from_torch(layer: Layer | Cell, h_0: Any, c_0: Any = None) -> Any:
  """PyTorch's initial state ``h_0`` (and ``c_0``) as the ``carry`` of ``layer.apply``.

  Args:
    layer: a layer as accepted by ``to_torch``.
    h_0: ``(num_layers * num_directions, *batch, H_out)`` (PyTorch tensors or arrays).
    c_0: ``(num_layers * num_directions, *batch, H)``, for LSTM cells only (required).

  Returns:
    The carry: a list per layer for a stack, ``{"forward", "backward"}`` per bidirectional
    layer, ``LSTMState(h, c)`` or an array per direction.
  """
  kind, cells_per_layer = _layout(layer, strict=False)
  flat_cells = [cell for directions in cells_per_layer for cell in directions]
  names = [getattr(cell.spec, "name", None) for cell in flat_cells]
  h_0 = _checks.float_array("h_0", _to_array(h_0))
  if h_0.ndim < 2 or h_0.shape[0] != len(flat_cells):
    _checks.fail("h_0", f"shape ({len(flat_cells)}, *batch, H) (num_layers * "
                 "num_directions first)", f"shape {tuple(h_0.shape)}")
  if all(name == "lstm" for name in names):
    if c_0 is None:
      _checks.fail("c_0", "the initial cell states of these LSTM cells", "None")
    c_0 = _checks.float_array("c_0", _to_array(c_0))
    if c_0.ndim != h_0.ndim or c_0.shape[:-1] != h_0.shape[:-1]:
      _checks.fail("c_0", f"shape {tuple(h_0.shape[:-1])} + (H,) (as h_0)",
                   f"shape {tuple(c_0.shape)}")
    flat = [LSTMState(h_0[i], c_0[i]) for i in range(len(flat_cells))]
  elif c_0 is not None:
    _checks.fail("c_0", "None (only LSTM cells have a cell state)", "an array")
  else:
    flat = [h_0[i] for i in range(len(flat_cells))]
  per_layer, i = [], 0
  for directions in cells_per_layer:
    carries = flat[i:i + len(directions)]
    i += len(directions)
    per_layer.append(dict(zip(("forward", "backward"), carries)) if len(directions) == 2
                     else carries[0])
  return per_layer if kind == "stack" else per_layer[0]


def _to_array(x: Any) -> Any:
  if type(x).__module__.startswith("torch"):
    return _to_numpy(x)
  return x


def _layout(layer: Layer | Cell, strict: bool) -> tuple[str, list[list[Cell]]]:
  """``(kind, cells)``: the layer's kind and, per PyTorch layer, its cells per direction."""
  if isinstance(layer, Cell):
    return "cell", [[layer]]
  if not isinstance(layer, Layer):
    _checks.fail("layer", "a jaxseq Layer (stack, bidirectional or recurrent) or Cell",
                 type(layer).__name__, TypeError)
  spec = layer.spec
  if isinstance(spec, specs.StackSpec):
    if strict and spec.residual:
      _checks.fail("layer", "a stack without residual connections (PyTorch has none)",
                   "residual=True")
    return "stack", [_directions(f"layer (layer {k})", sub.spec, strict)
                     for k, sub in enumerate(spec.layers)]
  if not isinstance(spec, (specs.RecurrentSpec, specs.BidirectionalSpec)):
    _checks.fail("layer", "a layer built by jaxseq.stack, bidirectional or recurrent",
                 f"a {getattr(spec, 'kind', None)!r} layer")
  return spec.kind, [_directions("layer", spec, strict)]


def _directions(where: str, spec: Any, strict: bool) -> list[Cell]:
  if isinstance(spec, specs.RecurrentSpec):
    if strict and spec.reverse:
      _checks.fail(where, "a forward recurrent layer (PyTorch runs a single direction "
                   "forward)", "reverse=True")
    return [spec.cell]
  if isinstance(spec, specs.BidirectionalSpec):
    fw, bw = spec.forward.spec, spec.backward.spec
    if strict and not (isinstance(spec.merge, str) and spec.merge == "concat"):
      _checks.fail(where, "a bidirectional layer with merge='concat' (as PyTorch)",
                   f"merge={spec.merge!r}")
    if not isinstance(fw, specs.RecurrentSpec) or not isinstance(bw, specs.RecurrentSpec):
      _checks.fail(where, "a bidirectional layer of two recurrent directions (as PyTorch)",
                   f"directions of kinds {fw.kind!r} and {bw.kind!r}")
    if strict and (fw.reverse or not bw.reverse):
      _checks.fail(where, "a bidirectional layer whose forward direction runs forward",
                   "a reversed forward direction")
    return _directions(where + " forward", fw, False) + _directions(where + " backward",
                                                                      bw, False)
  _checks.fail(where, "a layer of kind 'recurrent' or 'bidirectional'",
               f"kind {getattr(spec, 'kind', None)!r}")


def _where(kind: str, k: int, d: int, num_directions: int, root: str) -> str:
  where = root + (f"[{k}]" if kind == "stack" else "")
  if num_directions == 2:
    where += "['backward']" if d else "['forward']"
  return where


def _split(kind: str, tree: Any, cells_per_layer: list[list[Cell]], root: str) -> list[list]:
  """Splits a params- or carry-shaped tree into per layer, per direction subtrees."""
  if kind == "stack":
    if not isinstance(tree, (list, tuple)) or len(tree) != len(cells_per_layer):
      _checks.fail(root, f"a list of {len(cells_per_layer)} entries, one per layer",
                   f"a {type(tree).__name__} of length {len(tree)}"
                   if isinstance(tree, (list, tuple)) else type(tree).__name__)
    per_layer = list(tree)
  else:
    per_layer = [tree]
  out = []
  for k, (subtree, directions) in enumerate(zip(per_layer, cells_per_layer)):
    if len(directions) == 2:
      where = root + (f"[{k}]" if kind == "stack" else "")
      if not isinstance(subtree, Mapping) or set(subtree) != {"forward", "backward"}:
        _checks.fail(where, "a dict with keys ['backward', 'forward']",
                     sorted(subtree) if isinstance(subtree, Mapping)
                     else type(subtree).__name__)
      out.append([subtree["forward"], subtree["backward"]])
    else:
      out.append([subtree])
  return out


def _torch_config(cells_per_layer: list[list[Cell]]) -> dict:
  """The one PyTorch module configuration every cell must share."""
  configs = []
  for k, directions in enumerate(cells_per_layer):
    for d, cell in enumerate(directions):
      where = f"layer (layer {k}" + (", backward)" if d else ")")
      configs.append((where, _cell_config(where, cell)))
  first_where, first = configs[0]
  for where, config in configs[1:]:
    if config != first:
      _checks.fail("layer", "one cell configuration in every layer and direction (one "
                   f"PyTorch module); {first_where} has {first}", f"{config} in {where}")
  num_directions = {len(directions) for directions in cells_per_layer}
  if len(num_directions) != 1:
    _checks.fail("layer", "every layer bidirectional or none (one PyTorch module)",
                 "a mix")
  return first


def _cell_config(where: str, cell: Cell) -> dict:
  """PyTorch's mode and sizes for a cell, or ValueError naming what PyTorch lacks."""
  if not isinstance(cell, Cell) or not isinstance(cell.spec, specs.CellSpec):
    _checks.fail(where, "a jaxseq lstm, gru or simple_rnn cell", "a cell without a spec")
  spec = cell.spec
  name = spec.get("name")
  use_bias = spec.get("use_bias", True)

  def require(condition: bool, expected: str, received: str) -> None:
    if not condition:
      article = "an" if name == "lstm" else "a"
      _checks.fail(where, f"{article} {name} cell {expected} (all PyTorch computes)",
                   received)

  def is_fn(fn, choices) -> bool:
    return any(fn is choice for choice in choices)

  if name == "lstm":
    require(not spec["peephole"], "without peephole connections", "peephole=True")
    require(not spec["coupled"], "with separate input and forget gates", "coupled=True")
    require(is_fn(spec["gate_fn"], _SIGMOID), "with gate_fn=jax.nn.sigmoid",
            f"gate_fn={spec['gate_fn']!r}")
    for option in ("cell_fn", "hidden_fn"):
      require(is_fn(spec[option], _TANH), f"with {option}=jnp.tanh",
              f"{option}={spec[option]!r}")
    mode, proj_size = "LSTM", spec["proj_size"]
  elif name == "gru":
    require(spec["reset_after"], "with reset_after=True", "reset_after=False")
    require(is_fn(spec["gate_fn"], _SIGMOID), "with gate_fn=jax.nn.sigmoid",
            f"gate_fn={spec['gate_fn']!r}")
    require(is_fn(spec["activation"], _TANH), "with activation=jnp.tanh",
            f"activation={spec['activation']!r}")
    mode, proj_size = "GRU", None
  elif name == "simple_rnn":
    activation = spec["activation"]
    require(is_fn(activation, _TANH + _RELU), "with activation jnp.tanh or jax.nn.relu",
            f"activation={activation!r}")
    mode, proj_size = ("RNN_TANH" if is_fn(activation, _TANH) else "RNN_RELU"), None
  else:
    _checks.fail(where, "an lstm, gru or simple_rnn cell (PyTorch's nn.LSTM, nn.GRU, "
                 "nn.RNN)", f"a {name} cell")
  return dict(mode=mode, hidden_size=spec["hidden_size"], proj_size=proj_size,
              output_size=spec["output_size"], use_bias=use_bias)
