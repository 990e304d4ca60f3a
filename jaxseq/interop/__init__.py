"""Weight interop with PyTorch (``nn.RNN/LSTM/GRU``) and Flax linen cells.

PyTorch is imported only when a PyTorch function is called.
"""
from jaxseq.interop._flax import carry_from_flax, carry_to_flax, from_flax
from jaxseq.interop._torch import carry_from_torch, carry_to_torch, from_torch, to_torch

__all__ = ["carry_from_flax", "carry_to_flax", "carry_from_torch", "carry_to_torch", "from_flax", "from_torch", "to_torch"]
