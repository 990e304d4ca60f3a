"""Typed, static descriptions of cells and layers.

A ``Cell``'s or ``Layer``'s ``spec`` says what it is without running it: the family and its
options (weight interop reads them), and for layers their children (``map_cells`` walks
them). Specs are frozen dataclasses, one per family; code dispatches on their type, never
on strings. ``spec["field"]`` and ``spec.get("field")`` still read fields, for code
written when specs were dicts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

Activation = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spec:
  """Base of every spec: fields by attribute, or by key as in a mapping."""

  def __getitem__(self, field: str) -> Any:
    try:
      return getattr(self, field)
    except AttributeError:
      raise KeyError(field) from None

  def get(self, field: str, default: Any = None) -> Any:
    return getattr(self, field, default)

  def __contains__(self, field: str) -> bool:
    return hasattr(self, field)


# ----------------------------------------------------------------------------- cells


@dataclasses.dataclass(frozen=True, kw_only=True)
class CellSpec(Spec):
  """What every built-in cell states.

  Attributes:
    hidden_size: size of the state (``H``; ``F`` channels for conv cells).
    output_size: size of ``y_t`` (``P`` for a projected LSTM, else ``H``).
    use_bias: whether the params have biases.
    feature_ndim: rank of one step's input without batch axes (1 dense, 3 for 2-D conv).
  """
  hidden_size: int
  output_size: int
  use_bias: bool = True
  feature_ndim: int = 1
  name: str = "cell"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimpleRNNSpec(CellSpec):
  activation: Activation
  name: str = "simple_rnn"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSTMSpec(CellSpec):
  peephole: bool = False
  coupled: bool = False
  proj_size: Optional[int] = None
  gate_fn: Activation
  cell_fn: Activation
  hidden_fn: Activation
  name: str = "lstm"


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRUSpec(CellSpec):
  reset_after: bool
  gate_fn: Activation
  activation: Activation
  name: str = "gru"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MGUSpec(GRUSpec):
  name: str = "mgu"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvLSTMSpec(CellSpec):
  features: int
  kernel_size: tuple[int, ...]
  peephole: bool
  padding: str
  gate_fn: Activation
  cell_fn: Activation
  hidden_fn: Activation
  forget_offset: float = 0.0
  name: str = "conv_lstm"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvGRUSpec(CellSpec):
  features: int
  kernel_size: tuple[int, ...]
  reset_after: bool
  padding: str
  gate_fn: Activation
  activation: Activation
  name: str = "conv_gru"


# ----------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class SequenceSpec(Spec):
  """Base of the sequence layers' specs: their ``init``/``apply`` are the short form,
  ``init(key, input_size) -> params`` and ``apply(params, xs, *, lengths, carry, key) ->
  (ys, carry)``."""
  kind: str = "sequence"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecurrentSpec(SequenceSpec):
  """``jaxseq.recurrent(cell, **options)``."""
  cell: Any
  reverse: bool = False
  time_major: bool = False
  unroll: Any = 1
  remat: Any = False
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  kernel: str = "auto"
  kind: str = "recurrent"

  @property
  def options(self) -> dict:
    """The keyword options that rebuild this layer with ``recurrent(cell, **options)``."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name not in ("cell", "kind")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BidirectionalSpec(SequenceSpec):
  """``jaxseq.bidirectional``: ``forward`` and ``backward`` are the two layers (the
  backward one already runs in reverse)."""
  forward: Any
  backward: Any
  merge: Any = "concat"
  kind: str = "bidirectional"


@dataclasses.dataclass(frozen=True, kw_only=True)
class StackSpec(SequenceSpec):
  """``jaxseq.stack``: ``layers`` are the stacked sequence layers."""
  layers: tuple
  dropout: float = 0.0
  residual: bool = False
  kind: str = "stack"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlippedSpec(SequenceSpec):
  """A sequence layer run on each sequence's valid part flipped in time (how
  ``bidirectional`` runs a backward direction that has no ``reverse`` option)."""
  layer: Any
  kind: str = "flipped"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetSpec(Spec):
  """A network (feed-forward or combinator) layer: ``kind`` (``"dense"``, ``"conv"``,
  ``"serial"``, ...), display ``name``, child ``layers`` and the factory's ``options``
  (also readable as ``spec[option]``)."""
  kind: str
  name: str
  layers: tuple = ()
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __getitem__(self, field: str) -> Any:
    if field in self.options:
      return self.options[field]
    return super().__getitem__(field)

  def get(self, field: str, default: Any = None) -> Any:
    if field in self.options:
      return self.options[field]
    return super().get(field, default)

  def __contains__(self, field: str) -> bool:
    return field in self.options or hasattr(self, field)
