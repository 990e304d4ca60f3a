r"""Cells by name, with named initialisation schemes: what the ``jaxseq`` command line,
``jaxseq.reproduce`` and scripts use to say "an LSTM with chrono init" in one line.

    from jaxseq import registry
    cell = registry.make_cell("simple_rnn", 100, "identity", activation="relu")   # the IRNN
    registry.describe_cell("lstm", 128, chrono_t_max=70.0)
    # -> 'lstm(H=128, init default, chrono T_max=70)'

Schemes (recurrent kernels are initialised per gate block):

* ``default``: PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` for every weight and bias.
* ``orthogonal``: orthogonal recurrent kernel (Saxe, McClelland & Ganguli 2014),
  Glorot-uniform input kernel, zero bias (Keras' recurrent defaults).
* ``identity``: identity recurrent kernel, ``N(0, 0.001^2)`` input kernel, zero bias
  (Le, Jaitly & Hinton 2015); with ``activation="relu"`` on ``simple_rnn`` this is the IRNN.
* ``glorot``: Glorot-uniform input and recurrent kernels, zero bias.

On top of a scheme, the LSTM takes a constant forget-gate bias (Gers et al. 2000) or the
chrono initialisation ``b_f ~ log U[1, T_max - 1]``, ``b_i = -b_f`` (Tallec & Ollivier
2018).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxseq import _checks, cells, initializers

CELLS = ("simple_rnn", "lstm", "gru", "mgu")
INITS = ("default", "orthogonal", "identity", "glorot")
ACTIVATIONS = ("tanh", "relu", "linear")


def linear(x: jax.Array) -> jax.Array:
  """The identity activation (a linear RNN)."""
  return x


_ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "linear": linear}


def init_scheme(init: str) -> dict[str, Any]:
  """The initializer options (``kernel_init``, ``recurrent_init``, ``bias_init``) that
  scheme ``init`` passes to a cell factory; ``{}`` for ``"default"``."""
  _checks.choice("init", init, INITS)
  if init == "orthogonal":
    return dict(kernel_init=initializers.glorot_uniform(),
                recurrent_init=initializers.orthogonal(), bias_init=initializers.zeros)
  if init == "identity":
    return dict(kernel_init=initializers.normal(0.001), recurrent_init=initializers.identity(),
                bias_init=initializers.zeros)
  if init == "glorot":
    return dict(kernel_init=initializers.glorot_uniform(),
                recurrent_init=initializers.glorot_uniform(), bias_init=initializers.zeros)
  return {}


def _optional_finite(argument: str, value: Any) -> float | None:
  return None if value is None else _checks.number(argument, value,
                                                   "a finite number or None")


def check_cell_options(name: str, hidden_size: int, init: str = "default", *,
                       activation: str = "tanh", forget_bias: float | None = None,
                       chrono_t_max: float | None = None) -> dict[str, Any]:
  """Validates ``make_cell``'s arguments; returns them normalised (floats as floats).

  Raises ``ValueError``/``TypeError`` naming the argument: an unknown name, scheme or
  activation, a non-finite bias, an option that does not apply to the cell (``activation``
  other than tanh off ``simple_rnn``; ``forget_bias``/``chrono_t_max`` off ``lstm``), or
  both LSTM bias options at once.
  """
  _checks.choice("cell", name, CELLS)
  hidden_size = _checks.positive_int("hidden_size", hidden_size)
  _checks.choice("init", init, INITS)
  _checks.choice("activation", activation, ACTIVATIONS)
  forget_bias = _optional_finite("forget_bias", forget_bias)
  chrono_t_max = _optional_finite("chrono_t_max", chrono_t_max)
  if activation != "tanh" and name != "simple_rnn":
    _checks.fail("activation", f"'tanh' for {name} (activation applies to simple_rnn only)",
                 repr(activation))
  for argument, value in (("forget_bias", forget_bias), ("chrono_t_max", chrono_t_max)):
    if value is not None and name != "lstm":
      _checks.fail(argument, f"None for {name} ({argument} applies to lstm only)", repr(value))
  if forget_bias is not None and chrono_t_max is not None:
    _checks.fail("forget_bias, chrono_t_max", "at most one of them", "both")
  if chrono_t_max is not None and not chrono_t_max > 2:
    _checks.fail("chrono_t_max", "a number > 2", repr(chrono_t_max))
  return dict(name=name, hidden_size=hidden_size, init=init, activation=activation,
              forget_bias=forget_bias, chrono_t_max=chrono_t_max)


def make_cell(name: str, hidden_size: int, init: str = "default", *,
              activation: str = "tanh", forget_bias: float | None = None,
              chrono_t_max: float | None = None) -> cells.Cell:
  """Builds a cell by name with a named initialisation scheme (see the module docstring).

  Args:
    name: one of ``CELLS``.
    hidden_size: ``H``.
    init: one of ``INITS``.
    activation: ``simple_rnn``'s nonlinearity, one of ``ACTIVATIONS``.
    forget_bias: ``lstm``'s constant forget-gate bias (Gers et al. 2000).
    chrono_t_max: ``lstm``'s chrono initialisation (Tallec & Ollivier 2018), ``> 2``.

  Returns:
    A ``jaxseq.Cell``.
  """
  options = check_cell_options(name, hidden_size, init, activation=activation,
                               forget_bias=forget_bias, chrono_t_max=chrono_t_max)
  factory_options = init_scheme(init)
  if name == "simple_rnn":
    factory_options["activation"] = _ACTIVATION_FNS[activation]
  if name == "lstm":
    factory_options.update(forget_bias=options["forget_bias"],
                           chrono_t_max=options["chrono_t_max"])
  return getattr(cells, name)(options["hidden_size"], **factory_options)


def describe_cell(name: str, hidden_size: int, init: str = "default", *,
                  activation: str = "tanh", forget_bias: float | None = None,
                  chrono_t_max: float | None = None) -> str:
  """One line naming the cell and the initialisation it really gets, e.g.
  ``"simple_rnn(H=100, init identity, relu)"`` or ``"lstm(H=64, init default, forget
  bias 1)"``."""
  options = check_cell_options(name, hidden_size, init, activation=activation,
                               forget_bias=forget_bias, chrono_t_max=chrono_t_max)
  parts = [f"H={options['hidden_size']}", f"init {init}"]
  if name == "simple_rnn":
    parts.append(activation)
  if options["forget_bias"] is not None:
    parts.append(f"forget bias {options['forget_bias']:g}")
  if options["chrono_t_max"] is not None:
    parts.append(f"chrono T_max={options['chrono_t_max']:g}")
  return f"{name}({', '.join(parts)})"
