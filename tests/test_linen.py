"""jaxseq.linen: the modules against the functional layers on the same params, against
Flax's own nn.RNN (the meaning of reverse/keep_order/time_major) and against PyTorch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import jaxseq
import jaxseq.linen as jl
from jaxseq.interop import carry_to_flax, from_flax

B, T, D, H = 3, 5, 4, 6
LENGTHS = jnp.array([5, 2, 0])
ATOL = 1e-5
CELLS = {"lstm": jaxseq.lstm, "gru": jaxseq.gru, "simple_rnn": jaxseq.simple_rnn,
         "mgu": jaxseq.mgu}
MODULES = {"lstm": jl.LSTM, "gru": jl.GRU, "simple_rnn": jl.SimpleRNN, "mgu": jl.MGU}


def _xs(seed=0, shape=(B, T, D)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _close(a, b, atol=ATOL):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5), a, b)


def _loss(ys, carry):
  """Weights every output and carry entry differently, so a misplaced value shows."""
  total = 0.0
  for i, leaf in enumerate(jax.tree.leaves((ys, carry))):
    total += jnp.sum(jnp.sin(leaf * (1.0 + 0.1 * i)))
  return total


def _check_module_equals_layer(module, variables, layer, tree, xs, lengths, **call):
  def module_loss(params):
    carry, ys = module.apply({"params": params}, xs, seq_lengths=lengths, return_carry=True,
                             **call)
    return _loss(ys, carry), (ys, carry)

  def layer_loss(tree):
    ys, carry = layer.apply(tree, xs, lengths=lengths)
    return _loss(ys, carry), (ys, carry)

  (_, (ys_m, carry_m)), grads_m = jax.jit(jax.value_and_grad(module_loss, has_aux=True))(
      variables["params"])
  (_, (ys_l, carry_l)), grads_l = jax.jit(jax.value_and_grad(layer_loss, has_aux=True))(tree)
  _close(ys_m, ys_l)
  _close(carry_m, carry_l)
  _close(jl.tree_of(grads_m), grads_l)
  return ys_m


@pytest.mark.parametrize("name", CELLS)
def test_rnn_of_a_cell_is_the_functional_layer(name):
  cell = CELLS[name](H)
  module = jl.RNN(cell)
  xs = _xs()
  variables = module.init(jax.random.PRNGKey(1), xs)
  # The params collection IS the cell's params tree.
  expected = jax.eval_shape(lambda k: cell.init(k, D), jax.random.PRNGKey(0))
  assert jax.tree.structure(variables["params"]) == jax.tree.structure(expected)
  assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(jnp.shape, expected)
  ys = _check_module_equals_layer(module, variables, jaxseq.recurrent(cell),
                                  variables["params"], xs, LENGTHS)
  assert not np.any(ys[1, 2:]) and not np.any(ys[2])  # padded outputs are zero


@pytest.mark.parametrize("name", MODULES)
def test_stacked_bidirectional_module_is_the_functional_stack(name):
  module = MODULES[name](H, num_layers=2, bidirectional=True)
  xs = _xs(1)
  variables = module.init(jax.random.PRNGKey(2), xs)
  assert set(variables["params"]) == {"layers"}
  tree = jl.tree_of(variables["params"])
  assert isinstance(tree, list) and set(tree[1]) == {"forward", "backward"}
  one = jaxseq.bidirectional(CELLS[name](H))
  layer = jaxseq.stack(one, one)
  ys = _check_module_equals_layer(module, variables, layer, tree, xs, LENGTHS)
  assert ys.shape == (B, T, 2 * H)


def test_drop_in_flax_bidirectional():
  cell = jaxseq.lstm(H)
  bi = nn.Bidirectional(jl.RNN(cell), jl.RNN(cell), return_carry=True)
  xs = _xs(2)
  variables = bi.init(jax.random.PRNGKey(3), xs, seq_lengths=LENGTHS)
  params = variables["params"]
  tree = {"forward": params["forward_rnn"], "backward": params["backward_rnn"]}
  layer = jaxseq.bidirectional(cell)

  def flax_loss(params):
    (c_fw, c_bw), ys = bi.apply({"params": params}, xs, seq_lengths=LENGTHS)
    return _loss(ys, (c_fw, c_bw)), ys

  def layer_loss(tree):
    ys, carry = layer.apply(tree, xs, lengths=LENGTHS)
    return _loss(ys, (carry["forward"], carry["backward"])), ys

  (loss_m, ys_m), g_m = jax.jit(jax.value_and_grad(flax_loss, has_aux=True))(params)
  (loss_l, ys_l), g_l = jax.jit(jax.value_and_grad(layer_loss, has_aux=True))(tree)
  _close(ys_m, ys_l)
  _close(loss_m, loss_l)
  _close({"forward": g_m["forward_rnn"], "backward": g_m["backward_rnn"]}, g_l)


@pytest.mark.parametrize("reverse,keep_order,time_major", [
    (False, False, False), (True, False, False), (True, True, False), (True, False, True)])
def test_flags_mean_what_they_mean_in_flax_rnn(reverse, keep_order, time_major):
  """Flax's nn.RNN is the oracle for reverse / keep_order / time_major (on valid steps:
  Flax computes on past the lengths, jaxseq returns zeros there)."""
  flax_rnn = nn.RNN(nn.LSTMCell(H), time_major=time_major, reverse=reverse,
                    keep_order=keep_order, return_carry=True)
  xs = _xs(3)
  lengths = jnp.array([5, 3, 1])
  xs_in = jnp.swapaxes(xs, 0, 1) if time_major else xs
  flax_vars = flax_rnn.init(jax.random.PRNGKey(4), xs_in)
  cell, tree = from_flax(flax_rnn.cell, flax_vars["params"]["cell"])
  module = jl.RNN(cell, time_major=time_major, reverse=reverse, keep_order=keep_order,
                  return_carry=True)
  carry_f, ys_f = flax_rnn.apply(flax_vars, xs_in, seq_lengths=lengths)
  carry_m, ys_m = module.apply(jl.to_variables(tree), xs_in, seq_lengths=lengths)
  if time_major:
    ys_f, ys_m = jnp.swapaxes(ys_f, 0, 1), jnp.swapaxes(ys_m, 0, 1)
  valid = (jnp.arange(T) < lengths[:, None])[..., None]
  _close(jnp.where(valid, ys_f, 0), ys_m)
  _close(carry_to_flax(cell, carry_m), carry_f)


def test_reverse_of_a_stack_flips_like_flax():
  """A layer without a reverse option of its own runs on the flipped sequences."""
  layer = jaxseq.stack(jaxseq.gru(H), jaxseq.gru(H))
  xs = _xs(4)
  variables = jl.RNN(layer).init(jax.random.PRNGKey(5), xs)
  tree = jl.tree_of(variables["params"])
  flip = lambda a: jaxseq.flip_sequences(a, LENGTHS, 1)
  want_ys, want_carry = layer.apply(tree, flip(xs), lengths=LENGTHS)
  for keep_order in (False, True):
    carry, ys = jl.RNN(layer, reverse=True, keep_order=keep_order, return_carry=True).apply(
        variables, xs, seq_lengths=LENGTHS)
    _close(ys, flip(want_ys) if keep_order else want_ys)
    _close(carry, want_carry)
  # A recurrent layer's own reverse option gives the same as flipping the data.
  cell = jaxseq.lstm(H)
  params = cell.init(jax.random.PRNGKey(6), D)
  for keep_order in (False, True):
    carry, ys = jl.RNN(cell, reverse=True, keep_order=keep_order, return_carry=True).apply(
        {"params": params}, xs, seq_lengths=LENGTHS)
    want_ys, want_carry = jaxseq.recurrent(cell).apply(params, flip(xs), lengths=LENGTHS)
    _close(ys, flip(want_ys) if keep_order else want_ys)
    _close(carry, want_carry)


def test_time_major_several_batch_axes_and_initial_carry():
  cell = jaxseq.gru(H)
  xs = _xs(5, (2, 3, T, D))
  lengths = jnp.array([[5, 0, 3], [1, 4, 2]])
  carry0 = jax.random.normal(jax.random.PRNGKey(7), (2, 3, H))
  module = jl.RNN(cell, time_major=True, return_carry=True, unroll=2)
  xs_tm = jnp.moveaxis(xs, 2, 0)
  variables = module.init(jax.random.PRNGKey(8), xs_tm)
  carry, ys = module.apply(variables, xs_tm, seq_lengths=lengths, initial_carry=carry0)
  want_ys, want_carry = jaxseq.unroll(cell, variables["params"], xs, carry0, lengths)
  _close(jnp.moveaxis(ys, 0, 2), want_ys)
  _close(carry, want_carry)
  _close(carry[0, 1], carry0[0, 1])  # a length-0 sequence returns the initial carry


def test_dropout_masks_differ_in_training_and_vanish_when_deterministic():
  module = jl.LSTM(H, num_layers=2, dropout=0.5, recurrent_dropout=0.3)
  xs = _xs(6)
  variables = module.init(jax.random.PRNGKey(9), xs, deterministic=True)
  train = lambda seed: module.apply(variables, xs, deterministic=False,
                                    rngs={"dropout": jax.random.PRNGKey(seed)})
  ys_a, ys_b = train(0), train(1)
  assert np.abs(ys_a - ys_b).max() > 1e-3
  _close(train(0), ys_a)  # the masks come from the "dropout" stream only
  want, _ = jaxseq.stack(jaxseq.lstm(H), jaxseq.lstm(H)).apply(jl.tree_of(variables["params"]),
                                                              xs)
  _close(module.apply(variables, xs, deterministic=True), want)
  _close(module.clone(deterministic=True).apply(variables, xs), want)
  assert np.abs(ys_a - want).max() > 1e-3
  # nn.merge_param: exactly one of the attribute and the argument.
  with pytest.raises(ValueError, match="deterministic"):
    module.apply(variables, xs)
  with pytest.raises(ValueError, match="deterministic"):
    module.clone(deterministic=True).apply(variables, xs, deterministic=True)
  # A layer without dropout needs neither.
  plain = jl.LSTM(H, num_layers=2)
  _close(plain.apply(variables, xs), want)


def test_mixed_with_flax_layers_under_jit():
  class Tagger(nn.Module):
    @nn.compact
    def __call__(self, xs, lengths, train=False):
      h = nn.Dense(8)(xs)
      h = jl.GRU(H, bidirectional=True, dropout=0.2, num_layers=2)(
          h, seq_lengths=lengths, deterministic=not train)
      return nn.Dense(2)(h)

  model = Tagger()
  xs = _xs(7)
  variables = model.init(jax.random.PRNGKey(10), xs, LENGTHS)
  assert set(variables["params"]["GRU_0"]) == {"layers"}

  @jax.jit
  def loss(params, key):
    out = model.apply({"params": params}, xs, LENGTHS, train=True, rngs={"dropout": key})
    return jnp.mean(out ** 2)

  grads = jax.grad(loss)(variables["params"], jax.random.PRNGKey(0))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.any(jax.tree.leaves(grads["GRU_0"])[0])


def test_conv_lstm_is_the_functional_layer():
  module = jl.ConvLSTM(3, (3, 3))
  xs = _xs(8, (2, 4, 6, 6, 2))
  variables = module.init(jax.random.PRNGKey(11), xs)
  assert variables["params"]["p_o"].shape == (6, 6, 3)  # peepholes fix the frame
  lengths = jnp.array([4, 2])
  ys = module.apply(variables, xs, seq_lengths=lengths)
  want, _ = jaxseq.recurrent(jaxseq.conv_lstm(3, (3, 3))).apply(variables["params"], xs,
                                                                 lengths=lengths)
  _close(ys, want)
  flax_like = jl.ConvLSTM(3, (3, 3), cell_options={"peephole": False})
  assert "p_o" not in flax_like.init(jax.random.PRNGKey(0), xs)["params"]


def test_params_work_with_torch_interop_and_gradflow():
  torch = pytest.importorskip("torch")
  xs = _xs(9)
  module = jl.RNN(jaxseq.lstm(H))
  variables = module.init(jax.random.PRNGKey(12), xs)
  # variables["params"] straight into to_torch, then PyTorch as the oracle.
  state = jaxseq.interop.to_torch(module.layer, variables["params"])
  torch_lstm = torch.nn.LSTM(D, H, batch_first=True)
  torch_lstm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
  with torch.no_grad():
    want = torch_lstm(torch.from_numpy(np.array(xs)))[0].numpy()
  _close(module.apply(variables, xs), want)

  # A stacked bidirectional module, both ways: weights out, and imported weights in.
  stacked = jl.LSTM(H, num_layers=2, bidirectional=True)
  variables = stacked.init(jax.random.PRNGKey(13), xs)
  state = jaxseq.interop.to_torch(stacked.layer, jl.tree_of(variables["params"]))
  torch_lstm = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, batch_first=True)
  torch_lstm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
  with torch.no_grad():
    want = torch_lstm(torch.from_numpy(np.array(xs)))[0].numpy()
  _close(stacked.apply(variables, xs), want)
  layer, tree = jaxseq.interop.from_torch(torch_lstm)
  _close(jl.RNN(layer).apply(jl.to_variables(tree), xs), want)

  norms = jaxseq.gradflow.grad_norms(stacked.layer, jl.tree_of(variables["params"]), xs,
                                     lambda ys: jnp.sum(ys[:, -1]))
  assert len(norms) == 2 and norms[0]["forward"].shape == (T,)
  assert np.all(np.isfinite(norms[1]["backward"]))


def test_bad_arguments_name_themselves():
  xs = _xs()
  with pytest.raises(TypeError, match="cell"):
    jl.RNN("lstm").init(jax.random.PRNGKey(0), xs)
  with pytest.raises(TypeError, match="cell"):
    jl.RNN(jaxseq.nn.Dense(3)).init(jax.random.PRNGKey(0), xs)
  with pytest.raises(TypeError, match="num_layers"):
    jl.LSTM(H, num_layers=1.5).init(jax.random.PRNGKey(0), xs)
  with pytest.raises(TypeError, match="reverse"):
    jl.RNN(jaxseq.gru(H), reverse="yes").init(jax.random.PRNGKey(0), xs)
  with pytest.raises(ValueError, match="inputs"):
    jl.RNN(jaxseq.gru(H)).init(jax.random.PRNGKey(0), jnp.ones((3,)))
  with pytest.raises(TypeError, match="tree"):
    jl.to_variables(3)
