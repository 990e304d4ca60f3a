"""Recurrent cells: one time step each, as pure functions in a ``Cell`` record."""
from jaxseq.cells.base import Cell, Kernel, LSTMState
from jaxseq.cells.conv import conv_gru, conv_lstm
from jaxseq.cells.gru import gru
from jaxseq.cells.lstm import lstm
from jaxseq.cells.mgu import mgu
from jaxseq.cells.min_rnn import min_gru, min_lstm
from jaxseq.cells.simple_rnn import simple_rnn

__all__ = ["Cell", "Kernel", "LSTMState", "conv_gru", "conv_lstm", "gru", "lstm", "mgu", "min_gru",
           "min_lstm", "simple_rnn"]
