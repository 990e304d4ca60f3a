"""jaxseq: recurrent and convolutional sequence models as pure JAX functions."""
from jaxseq import gradflow, initializers, interop, losses, models, nn, specs, tasks, train
from jaxseq._layer import Layer
from jaxseq.cells import (Cell, Kernel, LSTMState, conv_gru, conv_lstm, gru, lstm, mgu,
                          min_gru, min_lstm, simple_rnn)
from jaxseq.decoding import Decoder, as_cell, beam_search, decoder, generate
from jaxseq.layers import (bidirectional, flip_sequences, map_cells, map_layers, recurrent,
                           reversed_layer, stack)
from jaxseq.nn.layers import over_time, serial
from jaxseq.seq2seq import seq2seq
from jaxseq.sequence import unroll

__version__ = "0.1.0"

__all__ = [
    "Cell", "Decoder", "Kernel", "LSTMState", "Layer", "as_cell", "beam_search",
    "bidirectional", "conv_gru", "conv_lstm", "decoder", "flip_sequences", "generate",
    "gradflow", "gru", "initializers", "interop", "losses", "lstm", "map_cells", "map_layers",
    "mgu", "min_gru", "min_lstm", "models", "nn", "over_time", "recurrent", "reversed_layer",
    "seq2seq", "serial", "simple_rnn", "specs", "stack", "tasks", "train", "unroll",
]
