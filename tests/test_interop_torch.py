"""PyTorch weight interop, with PyTorch's nn.RNN/LSTM/GRU as the oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import jaxseq  # pylint: disable=wrong-import-position
from jaxseq.interop._torch import (carry_from_torch, carry_to_torch, from_torch,
                                   to_torch)  # pylint: disable=wrong-import-position

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

B, T, D, H, P = 3, 5, 4, 6, 3
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

# The configurations the parity tests run, forward and backward, in both axis conventions.
PARITY = {
    "lstm-2layer-bidir-proj": ("lstm", dict(num_layers=2, bidirectional=True, proj_size=P)),
    "gru-3layer-bidir-dropout": ("gru", dict(num_layers=3, bidirectional=True,
                                             dropout=0.25)),
    "rnn-relu-2layer-nobias": ("rnn", dict(num_layers=2, nonlinearity="relu", bias=False)),
}
# Round trips only touch PyTorch (no JAX compilation), so they cover more options.
ROUND_TRIP = {
    **PARITY,
    "lstm-1layer": ("lstm", {}),
    "lstm-bidir-proj-nobias": ("lstm", dict(bidirectional=True, proj_size=P, bias=False)),
    "gru-nobias": ("gru", dict(num_layers=2, bias=False)),
    "rnn-tanh-2layer-bidir": ("rnn", dict(num_layers=2, bidirectional=True)),
}


def _module(kind: str, seed: int = 0, **options) -> nn.Module:
  """A float32 PyTorch module whose biases are all non-zero and distinct per vector."""
  torch.manual_seed(seed)
  module = MODULES[kind](D, H, **options)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.startswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return module.eval()  # dropout off: jaxseq's apply without a key


def _np(t) -> np.ndarray:
  return t.detach().numpy()


def _close(actual, expected, tol, what):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol,
                             err_msg=what)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
@pytest.mark.parametrize("name", list(PARITY))
def test_outputs_states_and_gradients_match_torch(name, batch_first):
  kind, options = PARITY[name]
  module = _module(kind, batch_first=batch_first, **options)
  layer, params = from_torch(module)
  assert layer.spec["kind"] == "stack" and len(params) == module.num_layers
  assert layer.spec["dropout"] == module.dropout

  is_lstm = kind == "lstm"
  num_states = module.num_layers * (2 if module.bidirectional else 1)
  out_size = (2 if module.bidirectional else 1) * (module.proj_size or H)
  rng = np.random.default_rng(1)
  randn = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  x = randn(B, T, D) if batch_first else randn(T, B, D)
  w_y = randn(*(x.shape[:2] + (out_size,)))
  h_0, w_h = randn(num_states, B, module.proj_size or H), randn(num_states, B,
                                                                module.proj_size or H)
  c_0, w_c = randn(num_states, B, H), randn(num_states, B, H)

  # Outputs and final states from zero initial states: the interop contract itself.
  y_ref, state_ref = module(torch.from_numpy(x))
  ys, carry = jax.jit(layer.apply)(params, x)
  _close(ys, _np(y_ref), 1e-5, "outputs")
  h_n, c_n = carry_to_torch(layer, carry) if is_lstm else (carry_to_torch(layer, carry), None)
  _close(h_n, _np(state_ref[0] if is_lstm else state_ref), 1e-5, "h_n")
  if is_lstm:
    _close(c_n, _np(state_ref[1]), 1e-5, "c_n")

  # A scalar loss of outputs and final states from a given initial state, both frameworks.
  x_t, h_0t, c_0t = (torch.tensor(a, requires_grad=True) for a in (x, h_0, c_0))
  y_t, state_t = module(x_t, (h_0t, c_0t) if is_lstm else h_0t)
  h_nt, c_nt = state_t if is_lstm else (state_t, None)
  loss_t = (y_t * torch.from_numpy(w_y)).sum() + (h_nt * torch.from_numpy(w_h)).sum()
  if is_lstm:
    loss_t = loss_t + (c_nt * torch.from_numpy(w_c)).sum()
  loss_t.backward()

  def loss_fn(params, x, h_0, c_0):
    carry = carry_from_torch(layer, h_0, c_0 if is_lstm else None)
    ys, carry = layer.apply(params, x, carry=carry)
    state = carry_to_torch(layer, carry)
    h_n, c_n = state if is_lstm else (state, None)
    loss = jnp.sum(ys * w_y) + jnp.sum(h_n * w_h)
    return loss + (jnp.sum(c_n * w_c) if is_lstm else 0.0)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3)))
  loss, grads = grad_fn(params, x, h_0, c_0)
  _close(loss, loss_t.item(), 1e-4, "loss")
  _close(grads[1], _np(x_t.grad), 1e-4, "d loss / d x")
  _close(grads[2], _np(h_0t.grad), 1e-4, "d loss / d h_0")
  if is_lstm:
    _close(grads[3], _np(c_0t.grad), 1e-4, "d loss / d c_0")

  named = dict(module.named_parameters())
  g = to_torch(layer, grads[0])
  assert list(g) == list(named)
  for torch_name, p in named.items():
    if torch_name.startswith("bias_hh"):
      # PyTorch's d/d b_hh equals d/d b_ih, except a GRU's n block, which is b_hn's.
      b_grad = g[torch_name.replace("bias_hh", "bias_ih")]
      ours = (np.concatenate([b_grad[:2 * H], g[torch_name][2 * H:]]) if kind == "gru"
              else b_grad)
    else:
      ours = g[torch_name]
    _close(ours, _np(p.grad), 1e-4, f"gradient of {torch_name}")


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_round_trip_is_exact(name):
  kind, options = ROUND_TRIP[name]
  module = _module(kind, **options)
  state = to_torch(*from_torch(module))
  reference = module.state_dict()
  assert list(state) == list(reference)
  for key, value in state.items():
    assert isinstance(value, np.ndarray) and value.dtype == np.float32, key
    assert value.shape == tuple(reference[key].shape), key
    if key.startswith("weight"):
      np.testing.assert_array_equal(value, reference[key].numpy(), err_msg=key)

  fresh = _module(kind, seed=1, **options)  # different weights, then overwritten
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  x = torch.randn(B, T, D) if fresh.batch_first else torch.randn(T, B, D)
  with torch.no_grad():
    (y_fresh, s_fresh), (y_ref, s_ref) = fresh(x), module(x)
  _close(_np(y_fresh), _np(y_ref), 1e-6, "outputs")
  for a, b in zip(jax.tree.leaves(s_fresh), jax.tree.leaves(s_ref)):
    _close(_np(a), _np(b), 1e-6, "final state")


def test_lengths_match_packed_sequences():
  """jaxseq's ``lengths`` against PyTorch's packed sequences: outputs past a length are
  zero, the backward direction starts at the last valid step, h_n/c_n are the last valid."""
  module = _module("lstm", num_layers=2, bidirectional=True, proj_size=P, batch_first=True)
  layer, params = from_torch(module)
  x = np.random.default_rng(3).standard_normal((B, T, D)).astype(np.float32)
  lengths = np.array([T, 2, 4])
  packed = nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                             batch_first=True, enforce_sorted=False)
  with torch.no_grad():
    y_packed, (h_ref, c_ref) = module(packed)
  y_ref, _ = nn.utils.rnn.pad_packed_sequence(y_packed, batch_first=True, total_length=T)
  ys, carry = jax.jit(lambda p, x, n: layer.apply(p, x, lengths=n))(params, x, lengths)
  h_n, c_n = carry_to_torch(layer, carry)
  _close(ys, _np(y_ref), 1e-5, "outputs")
  _close(h_n, _np(h_ref), 1e-5, "h_n")
  _close(c_n, _np(c_ref), 1e-5, "c_n")


def test_from_torch_params_are_float32_copies():
  module = _module("lstm", proj_size=P).double()
  _, params = from_torch(module)
  shapes = {"w_ih": (D, 4 * H), "w_hh": (P, 4 * H), "b": (4 * H,), "w_hr": (H, P)}
  assert {k: v.shape for k, v in params[0].items()} == shapes
  assert all(v.dtype == jnp.float32 for v in params[0].values())
  np.testing.assert_array_equal(params[0]["w_ih"],
                                module.weight_ih_l0.detach().float().numpy().T)
  with torch.no_grad():  # later changes to the module do not reach the params
    module.weight_ih_l0.zero_()
  assert np.abs(np.asarray(params[0]["w_ih"])).max() > 0


# Layers built in jaxseq (not by from_torch), exported, then run by PyTorch.
NATIVE = {
    "stacked-lstm-proj": (lambda: jaxseq.stack(jaxseq.lstm(H, proj_size=P),
                                               jaxseq.lstm(H, proj_size=P)),
                          "lstm", dict(num_layers=2, proj_size=P)),
    "bidirectional-gru": (lambda: jaxseq.bidirectional(jaxseq.gru(H)),
                          "gru", dict(bidirectional=True)),
    "relu-rnn-cell": (lambda: jaxseq.simple_rnn(H, jax.nn.relu),
                      "rnn", dict(nonlinearity="relu")),
}


@pytest.mark.parametrize("name", list(NATIVE))
def test_native_layer_exports_to_torch(name):
  make, kind, options = NATIVE[name]
  layer = make()
  params = layer.init(jax.random.PRNGKey(0), D)
  module = MODULES[kind](D, H, batch_first=True, **options)
  module.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch(layer, params).items()})
  x = np.random.default_rng(2).standard_normal((B, T, D)).astype(np.float32)
  apply = (lambda p, x: jaxseq.unroll(layer, p, x)) if isinstance(layer, jaxseq.Cell) else (
      layer.apply)
  ys, _ = jax.jit(apply)(params, x)
  with torch.no_grad():
    y_ref, _ = module(torch.from_numpy(x))
  _close(ys, _np(y_ref), 1e-5, "outputs")


def test_carry_from_torch_layout():
  layer = jaxseq.stack(jaxseq.bidirectional(jaxseq.lstm(H, proj_size=P)),
                       jaxseq.bidirectional(jaxseq.lstm(H, proj_size=P)))
  h_0 = torch.arange(4 * B * P, dtype=torch.float32).reshape(4, B, P)
  c_0 = -torch.arange(4 * B * H, dtype=torch.float32).reshape(4, B, H)
  carry = carry_from_torch(layer, h_0, c_0)
  np.testing.assert_array_equal(carry[1]["backward"].h, h_0[3].numpy())  # l1, reverse
  np.testing.assert_array_equal(carry[0]["backward"].c, c_0[1].numpy())  # l0, reverse
  h_n, c_n = carry_to_torch(layer, carry)
  np.testing.assert_array_equal(h_n, h_0.numpy())
  np.testing.assert_array_equal(c_n, c_0.numpy())
  with pytest.raises(ValueError, match="c_0"):
    carry_from_torch(layer, h_0)
  with pytest.raises(ValueError, match="h_0"):
    carry_from_torch(layer, h_0[:3], c_0[:3])


def test_from_torch_rejects_other_modules():
  with pytest.raises(TypeError, match="module: expected a torch.nn.RNN, nn.LSTM or nn.GRU, "
                     "got Linear"):
    from_torch(nn.Linear(D, H))
  with pytest.raises(TypeError, match="got LSTMCell"):
    from_torch(nn.LSTMCell(D, H))


UNREPRESENTABLE = {
    "peephole": (lambda: jaxseq.stack(jaxseq.lstm(H, peephole=True)), "peephole=True"),
    "coupled": (lambda: jaxseq.recurrent(jaxseq.lstm(H, coupled=True)), "coupled=True"),
    "gate_fn": (lambda: jaxseq.lstm(H, gate_fn=jax.nn.hard_sigmoid), "gate_fn="),
    "reset_before": (lambda: jaxseq.bidirectional(jaxseq.gru(H, reset_after=False)),
                     "reset_after=False"),
    "gelu": (lambda: jaxseq.simple_rnn(H, jax.nn.gelu), "activation="),
    "mgu": (lambda: jaxseq.stack(jaxseq.mgu(H)), "a mgu cell"),
    "residual": (lambda: jaxseq.stack(jaxseq.gru(H), jaxseq.gru(H), residual=True),
                 "residual=True"),
    "merge": (lambda: jaxseq.bidirectional(jaxseq.gru(H), merge="sum"), "merge='sum'"),
    "reverse": (lambda: jaxseq.recurrent(jaxseq.gru(H), reverse=True), "reverse=True"),
    "mixed_cells": (lambda: jaxseq.stack(jaxseq.gru(H), jaxseq.lstm(H)), "one cell config"),
    "mixed_sizes": (lambda: jaxseq.stack(jaxseq.gru(H), jaxseq.gru(H + 1)),
                    "one cell config"),
    "mixed_directions": (lambda: jaxseq.stack(jaxseq.bidirectional(jaxseq.gru(H)),
                                              jaxseq.gru(H)), "bidirectional or none"),
}


@pytest.mark.parametrize("name", list(UNREPRESENTABLE))
def test_to_torch_rejects_what_torch_cannot_compute(name):
  make, message = UNREPRESENTABLE[name]
  layer = make()
  params = jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), D))
  with pytest.raises(ValueError, match=message):
    to_torch(layer, params)


def test_to_torch_checks_the_tree():
  layer = jaxseq.stack(jaxseq.lstm(H), jaxseq.lstm(H))
  params = layer.init(jax.random.PRNGKey(0), D)
  with pytest.raises(ValueError, match=r"tree: expected a list of 2 entries"):
    to_torch(layer, params[:1])
  with pytest.raises(ValueError, match=r"tree\[1\]: expected a dict with keys"):
    to_torch(layer, [params[0], {"w_ih": params[1]["w_ih"]}])
  with pytest.raises(ValueError, match=r"tree\[1\]\['w_hh'\]: expected shape \(6, 24\)"):
    to_torch(layer, [params[0], {**params[1], "w_hh": params[1]["w_hh"].T}])
  with pytest.raises(TypeError, match="layer: expected a jaxseq Layer"):
    to_torch(nn.LSTM(D, H), params)
