"""jaxseq: recurrent and convolutional sequence models as pure JAX functions."""
from jaxseq import gradflow, initializers, interop, losses, models, nn, tasks, train
from jaxseq.cells import Cell, LSTMState, conv_gru, conv_lstm, gru, lstm, mgu, simple_rnn
from jaxseq.layers import Layer, bidirectional, recurrent, stack
from jaxseq.sequence import unroll

__version__ = "0.1.0"

__all__ = [
    "Cell", "LSTMState", "Layer", "bidirectional", "conv_gru", "conv_lstm", "gradflow", "gru",
    "initializers", "interop", "losses", "lstm", "mgu", "models", "nn", "recurrent",
    "simple_rnn", "stack", "tasks", "train", "unroll",
]
