"""A per-layer table of activation shapes, activation sizes and parameter counts."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax

from jaxseq import _checks
from jaxseq.nn.layers import Layer, Shape, input_shape_of

# Parameter-free layers that keep the activation size: folded into the previous row, as
# the lectures' tables do, unless ``all_layers=True``.
_FOLDED = frozenset({"elementwise", "reshape", "dropout"})


class SummaryRow(NamedTuple):
  """One row: a layer's display name, output shape (one example), its size, its params."""
  name: str
  output_shape: Shape
  activation_size: int
  num_params: int


class Summary(NamedTuple):
  """``rows[0]`` is the input; ``str(summary)`` is the printable table."""
  rows: tuple[SummaryRow, ...]
  total_params: int

  @property
  def total_activations(self) -> int:
    """Sum of the layers' activation sizes per example (the input excluded)."""
    return sum(row.activation_size for row in self.rows[1:])

  def __str__(self) -> str:
    header = ("Layer", "Activation shape", "Activation size", "# Parameters")
    body = [(r.name, "x".join(map(str, r.output_shape)), f"{r.activation_size:,}",
             f"{r.num_params:,}") for r in self.rows]
    total = ("Total", "", f"{self.total_activations:,} (layers)", f"{self.total_params:,}")
    widths = [max(len(line[i]) for line in [header, *body, total]) for i in range(4)]

    def fmt(line):
      return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths)))
    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, body), rule, fmt(total)])


def _num_params(layer: Layer, input_shape: Shape) -> int:
  # eval_shape: counts without allocating (VGG-16 would be 138M floats).
  params, _ = jax.eval_shape(lambda k: layer.net_init(k, input_shape), jax.random.PRNGKey(0))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _rows(layer: Layer, shape: Shape, all_layers: bool) -> list[SummaryRow]:
  spec = layer.spec or {}
  if spec.get("kind") == "serial":
    rows = []
    for child in spec["layers"]:
      rows += _rows(child, shape, all_layers)
      shape = child.output_shape(shape)
    return rows
  out = tuple(layer.output_shape(shape))
  count = _num_params(layer, shape)
  if not all_layers and spec.get("kind") in _FOLDED and count == 0:
    return []
  return [SummaryRow(_name(layer), out, math.prod(out), count)]


def _name(layer: Layer) -> str:
  """A row's label: a network layer's name; a sequence layer's kind and cells."""
  spec = layer.spec
  if not layer.is_sequence:
    return spec.get("name", "layer") if spec is not None else "layer"
  from jaxseq import layers as sequence_layers  # pylint: disable=import-outside-toplevel
  cells = [r.spec.cell.spec for r in sequence_layers.recurrent_layers(layer)]
  names = ", ".join(f"{getattr(c, 'name', 'cell')} {getattr(c, 'hidden_size', '')}".strip()
                    for c in cells)
  return f"{spec.kind}({names})"


def summary(model: Layer, input_shape: Shape, *, all_layers: bool = False) -> Summary:
  """Per-layer activation shapes, activation sizes and parameter counts, by shape
  inference only (nothing is computed or allocated).

  Args:
    model: a ``jaxseq.nn.Layer``; ``serial`` models are expanded (recursively) into one
      row per layer; other combinators (``concat``, ``residual``) are one row each.
    input_shape: one example's shape, without the batch axis (``(32, 32, 3)``).
    all_layers: also list parameter-free layers that keep the activation size
      (activations, ``Flatten``, ``Dropout``), which are left out by default.

  Returns:
    A ``Summary``: ``rows`` (``rows[0]`` is the input), ``total_params``,
    ``total_activations``; ``print(summary(...))`` shows the table.
  """
  if not isinstance(model, Layer):
    _checks.fail("model", "a jaxseq.nn Layer", type(model).__name__, TypeError)
  shape = input_shape_of("input_shape", input_shape)
  model.output_shape(shape)    # an input the model cannot take fails here, with its message
  rows = [SummaryRow("Input", shape, math.prod(shape), 0)] + _rows(model, shape, all_layers)
  # Folded rows have no params, so the total over rows is the model's total.
  return Summary(tuple(rows), sum(row.num_params for row in rows))
