"""Convolutional sentence classifier (Kim 2014)."""
from __future__ import annotations

from typing import Sequence

from jaxseq import _checks
from jaxseq import nn
from jaxseq.models._common import checked_input


def text_cnn(vocab_size: int, num_classes: int = 2, *, embed_dim: int = 300,
             widths: Sequence[int] = (3, 4, 5), filters: int = 100,
             dropout: float = 0.5) -> nn.Layer:
  r"""CNN-rand of Kim (2014), "Convolutional Neural Networks for Sentence Classification"::

      e = Embed(tokens)                                   # (T, embed_dim)
      c_w[t, f] = relu(b_f + \sum_{j < w} e[t + j] . W_f[j])   for each width w
      z = concat_w max_t c_w[t, :]                        # max-over-time pooling
      logits = Dense(dropout(z))

  Args:
    vocab_size: number of token ids (inputs are ints in ``[0, vocab_size)``).
    num_classes: logits.
    embed_dim: word vector size (300 in the paper).
    widths: filter widths (3, 4, 5 in the paper), each a 1-D "VALID" convolution.
    filters: feature maps per width (100 in the paper).
    dropout: on the pooled features (0.5 in the paper); only with ``train=True`` and a key.

  Input shape ``(T,)`` of integer token ids with ``T >= max(widths)``; output
  ``(num_classes,)``. Params: ``[embedding, [per width: [conv, {}, {}]], {}, dense]``.
  """
  vocab_size = _checks.positive_int("vocab_size", vocab_size)
  num_classes = _checks.positive_int("num_classes", num_classes)
  embed_dim = _checks.positive_int("embed_dim", embed_dim)
  filters = _checks.positive_int("filters", filters)
  widths = _checks.positive_ints("widths", widths, what="filter widths")
  dropout = _checks.probability("dropout", dropout)
  branches = [nn.serial(nn.Conv(filters, (w,)), nn.Relu, nn.GlobalMaxPool,
                        name=f"Conv {filters}, f={w}, max-over-time") for w in widths]
  model = nn.serial(
      nn.Embedding(vocab_size, embed_dim),
      nn.concat(*branches, name=f"{len(widths)} widths, max-over-time"),
      nn.Dropout(dropout), nn.Dense(num_classes))
  return checked_input(model, "text_cnn", rank=1)
