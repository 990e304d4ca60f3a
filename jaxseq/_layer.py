"""The one ``Layer`` type: network layers and sequence layers alike.

Two forms of the same record:

* **network form** (``jaxseq.nn``: ``Dense``, ``Conv``, ``BatchNorm``, ``serial``, the model
  zoo)::

      params, state = layer.init(key, input_shape)      # one example's shape, no batch axis
      y, state = layer.apply(params, state, x, train=False, key=None)

* **sequence form** (``recurrent``, ``bidirectional``, ``stack``), the short form of
  recurrent layers::

      params = layer.init(key, input_size)               # one step's features: an int, or a shape
      ys, carry = layer.apply(params, xs, lengths=None, carry=None, key=None)

Every layer, whatever its form, also answers the network protocol through ``net_init`` and
``net_apply`` (``lengths`` included), which is what ``serial`` and the other combinators
call: a sequence layer there has no state (``{}``), returns its outputs ``ys`` and drops the
carry, takes ``(N, T, *features)`` inputs with per-example shape ``(T, *features)``, and
turns its dropout on with ``train=True`` and a ``key`` like every network layer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax

from jaxseq import specs

Shape = tuple[int, ...]
# Network combinators whose apply passes ``lengths`` on to the layers inside.
_TAKE_LENGTHS = frozenset({"serial", "concat", "residual", "model"})


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
  """A layer as pure functions (stax's init/apply pair). See the module docstring.

  Attributes:
    init: network form ``init(key, input_shape) -> (params, state)``; sequence form
      ``init(key, input_size) -> params``.
    apply: network form ``apply(params, state, x, *, train=False, key=None) -> (y, state)``;
      sequence form ``apply(params, xs, *, lengths=None, carry=None, key=None) ->
      (ys, carry)`` (a ``key`` turns dropout on).
    output_shape: ``output_shape(input_shape) -> shape`` of one output example (network
      form), by arithmetic or shape inference, without compute.
    spec: a typed spec (``jaxseq.specs``): ``SequenceSpec`` subclasses mark the sequence
      form. A dict ``{"kind", "name", "layers", **options}`` is turned into a ``NetSpec``.
  """
  init: Callable[..., Any]
  apply: Callable[..., Any]
  output_shape: Optional[Callable[[Shape], Shape]] = None
  spec: Any = None

  def __post_init__(self):
    if isinstance(self.spec, dict):
      options = dict(self.spec)
      kind = options.pop("kind", "layer")
      name = options.pop("name", kind)
      layers = tuple(options.pop("layers", ()))
      object.__setattr__(self, "spec", specs.NetSpec(kind=kind, name=name, layers=layers,
                                                     options=options))

  def _replace(self, **changes) -> "Layer":
    return dataclasses.replace(self, **changes)

  @property
  def is_sequence(self) -> bool:
    """Whether ``init``/``apply`` are the sequence form."""
    return isinstance(self.spec, specs.SequenceSpec)

  def net_init(self, key: jax.Array, input_shape: Shape) -> tuple[Any, Any]:
    """``(params, state)`` for examples shaped ``input_shape`` (no batch axis); a sequence
    layer's examples are ``(T, *features)``."""
    if not self.is_sequence:
      return self.init(key, input_shape)
    return self.init(key, _step_shape(input_shape)), {}

  def net_apply(self, params: Any, state: Any, x: jax.Array, *, train: bool = False,
                key: jax.Array | None = None, lengths: jax.Array | None = None
                ) -> tuple[Any, Any]:
    """Network form of any layer; ``lengths`` reach sequence layers, others ignore them."""
    if not self.is_sequence:
      if lengths is not None and self.spec is not None and self.spec.kind in _TAKE_LENGTHS:
        return self.apply(params, state, x, train=train, key=key, lengths=lengths)
      return self.apply(params, state, x, train=train, key=key)
    ys, _ = self.apply(params, x, lengths=lengths, key=key if train else None)
    return ys, state


def _step_shape(input_shape: Any) -> Any:
  """One step's input (an int for dense features) from a sequence example ``(T, *f)``."""
  from jaxseq import _checks
  if not isinstance(input_shape, (tuple, list)) or len(input_shape) < 2:
    _checks.fail("input_shape", "the shape of one sequence, (T, *features), without the "
                 "batch axis", repr(input_shape))
  step = tuple(input_shape[1:])
  return step[0] if len(step) == 1 else step
