"""jaxseq.nnx: the modules against the functional layers on the same params (values and
gradients), nnx.Bidirectional, dropout under train()/eval(), an optimizer step, and
PyTorch as the oracle for loaded weights."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxseq
import jaxseq.nnx as jn

B, T, D, H = 3, 5, 4, 6
LENGTHS = jnp.array([5, 2, 0])
ATOL = 1e-5
CELLS = {"lstm": jaxseq.lstm, "gru": jaxseq.gru, "simple_rnn": jaxseq.simple_rnn,
         "mgu": jaxseq.mgu}
MODULES = {"lstm": jn.LSTM, "gru": jn.GRU, "simple_rnn": jn.SimpleRNN, "mgu": jn.MGU}


def _xs(seed=0, shape=(B, T, D)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _close(a, b, atol=ATOL):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5), a, b)


def _loss(ys, carry):
  total = 0.0
  for i, leaf in enumerate(jax.tree.leaves((ys, carry))):
    total += jnp.sum(jnp.sin(leaf * (1.0 + 0.1 * i)))
  return total


def _grad_tree(model, grads):
  """NNX gradients (a State) as a jaxseq tree: loaded into a copy of the model."""
  copy = nnx.clone(model)
  nnx.update(copy, grads)
  return copy.params()


def _check_model_equals_layer(model, layer, xs, lengths):
  @nnx.jit
  def model_grads(model):
    def loss_fn(model):
      carry, ys = model(xs, seq_lengths=lengths, return_carry=True)
      return _loss(ys, carry), (ys, carry)
    return nnx.value_and_grad(loss_fn, has_aux=True)(model)

  def layer_loss(tree):
    ys, carry = layer.apply(tree, xs, lengths=lengths)
    return _loss(ys, carry), (ys, carry)

  (_, (ys_m, carry_m)), grads_m = model_grads(model)
  (_, (ys_l, carry_l)), grads_l = jax.jit(jax.value_and_grad(layer_loss, has_aux=True))(
      model.params())
  _close(ys_m, ys_l)
  _close(carry_m, carry_l)
  _close(_grad_tree(model, grads_m), grads_l)
  return ys_m


def _params_in_graph(model):
  return [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)]


@pytest.mark.parametrize("name", CELLS)
def test_rnn_of_a_cell_is_the_functional_layer(name):
  cell = CELLS[name](H)
  model = jn.RNN(D, cell, rngs=nnx.Rngs(0))
  tree = model.params()
  expected = jax.eval_shape(lambda k: cell.init(k, D), jax.random.PRNGKey(0))
  assert jax.tree.structure(tree) == jax.tree.structure(expected)
  assert jax.tree.map(jnp.shape, tree) == jax.tree.map(jnp.shape, expected)
  assert isinstance(tree["w_ih"], jax.Array)  # plain arrays, not Variables
  assert len(_params_in_graph(model)) == len(jax.tree.leaves(tree))  # one Param per array
  ys = _check_model_equals_layer(model, jaxseq.recurrent(cell), _xs(), LENGTHS)
  assert not np.any(ys[1, 2:]) and not np.any(ys[2])  # padded outputs are zero


@pytest.mark.parametrize("name", MODULES)
def test_stacked_bidirectional_module_is_the_functional_stack(name):
  model = MODULES[name](D, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(1))
  tree = model.params()
  assert isinstance(tree, list) and set(tree[1]) == {"forward", "backward"}
  assert len(_params_in_graph(model)) == len(jax.tree.leaves(tree))
  one = jaxseq.bidirectional(CELLS[name](H))
  ys = _check_model_equals_layer(model, jaxseq.stack(one, one), _xs(1), LENGTHS)
  assert ys.shape == (B, T, 2 * H)


def test_drop_in_nnx_bidirectional():
  cell = jaxseq.gru(H)
  rngs = nnx.Rngs(2)
  bi = nnx.Bidirectional(jn.RNN(D, cell, rngs=rngs), jn.RNN(D, cell, rngs=rngs),
                         return_carry=True)
  xs = _xs(2)
  (c_fw, c_bw), ys = bi(xs, seq_lengths=LENGTHS)
  tree = {"forward": bi.forward_rnn.params(), "backward": bi.backward_rnn.params()}
  want_ys, want_carry = jaxseq.bidirectional(cell).apply(tree, xs, lengths=LENGTHS)
  _close(ys, want_ys)
  _close((c_fw, c_bw), (want_carry["forward"], want_carry["backward"]))


def test_flags_time_major_and_reverse():
  cell = jaxseq.lstm(H)
  xs = _xs(3)
  model = jn.RNN(D, cell, rngs=nnx.Rngs(3), reverse=True, time_major=True, return_carry=True)
  carry, ys = model(jnp.swapaxes(xs, 0, 1), seq_lengths=LENGTHS)
  flip = lambda a: jaxseq.flip_sequences(a, LENGTHS, 1)
  want_ys, want_carry = jaxseq.recurrent(cell).apply(model.params(), flip(xs),
                                                     lengths=LENGTHS)
  _close(jnp.swapaxes(ys, 0, 1), want_ys)  # keep_order=False: processing order, as Flax
  _close(carry, want_carry)
  _, ys = model(jnp.swapaxes(xs, 0, 1), seq_lengths=LENGTHS, keep_order=True)
  _close(jnp.swapaxes(ys, 0, 1), flip(want_ys))


def test_dropout_follows_train_and_eval():
  model = jn.LSTM(D, H, num_layers=2, dropout=0.5, recurrent_dropout=0.3, rngs=nnx.Rngs(4))
  xs = _xs(4)
  want, _ = jaxseq.stack(jaxseq.lstm(H), jaxseq.lstm(H)).apply(model.params(), xs)
  ys_a, ys_b = model(xs), model(xs)  # training mode by default, as nnx.Dropout
  assert np.abs(ys_a - ys_b).max() > 1e-3 and np.abs(ys_a - want).max() > 1e-3
  model.eval()
  _close(model(xs), want)
  assert np.abs(model(xs, deterministic=False) - want).max() > 1e-3
  model.train()
  assert np.abs(model(xs) - want).max() > 1e-3
  _close(model(xs, deterministic=True), want)
  # A key or Rngs at the call replaces the module's stream: same key, same masks.
  _close(model(xs, rngs=jax.random.PRNGKey(0)), model(xs, rngs=jax.random.PRNGKey(0)))
  # Loaded weights without rngs: dropout needs a source, eval mode does not.
  loaded = jn.LSTM(D, H, num_layers=2, dropout=0.5, params=model.params())
  with pytest.raises(TypeError, match="rngs"):
    loaded(xs)
  loaded.eval()
  _close(loaded(xs), want)


def test_training_step_with_nnx_optimizer_lowers_the_loss():
  class Regressor(nnx.Module):
    def __init__(self, rngs):
      self.rnn = jn.GRU(D, H, bidirectional=True, recurrent_dropout=0.1, rngs=rngs)
      self.readout = nnx.Linear(2 * H, 1, rngs=rngs)

    def __call__(self, xs, lengths):
      return self.readout(self.rnn(xs, seq_lengths=lengths))[..., 0]

  model = Regressor(nnx.Rngs(5))
  xs = _xs(5, (8, T, D))
  lengths = jnp.array([5, 4, 3, 5, 1, 2, 5, 5])
  targets = jnp.cumsum(xs[..., 0], axis=1) * (jnp.arange(T) < lengths[:, None])
  optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    def loss_fn(model):
      return jnp.mean((model(xs, lengths) - targets) ** 2)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    jn.update(optimizer, model, grads)
    return loss

  before = model.rnn.params()
  losses = [float(train_step(model, optimizer)) for _ in range(25)]
  assert losses[-1] < 0.5 * losses[0]
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), before, model.rnn.params())
  assert all(m > 0 for m in jax.tree.leaves(moved))
  shim = jn.optimizer(model, optax.sgd(0.1))  # the same optimizer through the shim
  assert isinstance(shim, nnx.Optimizer)


def test_loaded_weights_match_pytorch():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  torch_lstm = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, batch_first=True)
  xs = np.asarray(_xs(6))
  with torch.no_grad():
    want = torch_lstm(torch.tensor(xs))[0].numpy()
  model = jn.RNN.from_torch(torch_lstm)
  _close(model(xs), want)
  # params() out to PyTorch's names, into a fresh module: the same function.
  state = jaxseq.interop.to_torch(model.layer, model.params())
  fresh = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, batch_first=True)
  fresh.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state.items()})
  with torch.no_grad():
    _close(fresh(torch.tensor(xs))[0].numpy(), want)
  # The convenience module takes the same tree.
  same = jn.LSTM(D, H, num_layers=2, bidirectional=True, params=model.params())
  _close(same(xs), want)
  norms = jaxseq.gradflow.grad_norms(same.layer, same.params(), xs,
                                     lambda ys: jnp.sum(ys[:, -1]))
  assert norms[0]["forward"].shape == (T,)


def test_conv_lstm_is_the_functional_layer():
  xs = _xs(7, (2, 4, 6, 6, 2))
  model = jn.ConvLSTM((6, 6, 2), 3, (3, 3), rngs=nnx.Rngs(6))
  lengths = jnp.array([4, 2])
  want, _ = jaxseq.recurrent(jaxseq.conv_lstm(3, (3, 3))).apply(model.params(), xs,
                                                                 lengths=lengths)
  _close(model(xs, seq_lengths=lengths), want)
  any_frame = jn.ConvLSTM(2, 3, (3, 3), peephole=False, rngs=nnx.Rngs(6))
  assert "p_o" not in any_frame.params()


def test_bad_arguments_name_themselves():
  with pytest.raises(TypeError, match="rngs"):
    jn.RNN(D, jaxseq.gru(H))
  with pytest.raises(TypeError, match="cell"):
    jn.RNN(D, "gru", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="in_features"):
    jn.GRU("4", H, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="params"):
    jn.GRU(D + 1, H, params=jn.GRU(D, H, rngs=nnx.Rngs(0)).params())
  with pytest.raises(TypeError, match="kernel_size"):
    jn.ConvLSTM(2, 3, 3, peephole=False, rngs=nnx.Rngs(0))
