"""Flax weight interop, with Flax linen's own cells run by ``nn.RNN`` as the oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxseq.interop._flax import carry_from_flax, carry_to_flax, from_flax
from jaxseq.sequence import unroll

B, T, D, H = 2, 5, 3, 4
ATOL = 1e-5

# Each configuration runs forward and backward through both models; every option that
# changes the equations (activations, residual, the two LSTM implementations) appears once.
CONFIGS = {
    "simple-tanh": lambda: nn.SimpleCell(H),
    "simple-relu-residual": lambda: nn.SimpleCell(H, activation_fn=jax.nn.relu, residual=True),
    "lstm": lambda: nn.LSTMCell(H),
    "optimized-lstm-hard-sigmoid-softsign": lambda: nn.OptimizedLSTMCell(
        H, gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.soft_sign),
    "gru": lambda: nn.GRUCell(H),
    "gru-hard-sigmoid-relu": lambda: nn.GRUCell(H, gate_fn=jax.nn.hard_sigmoid,
                                                activation_fn=jax.nn.relu),
    "mgu": lambda: nn.MGUCell(H),
}


def _flax_model(name: str, seed: int = 0):
  """``nn.RNN`` around the cell, with every bias moved away from its (0 or 1) init."""
  rnn = nn.RNN(CONFIGS[name]())
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  xs = jax.random.normal(keys[0], (B, T, D))
  variables = rnn.init(keys[1], xs)

  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  leaves = [leaf + 0.5 * jax.random.normal(jax.random.fold_in(keys[2], i), leaf.shape)
            if jax.tree_util.keystr(path).endswith("['bias']") else leaf
            for i, (path, leaf) in enumerate(leaves)]
  return rnn, jax.tree.unflatten(treedef, leaves), xs


def _random_carry(rnn, key):
  """A non-zero initial carry in Flax's convention (tests carry_from_flax too)."""
  carry = rnn.cell.initialize_carry(key, (B, D))
  leaves, treedef = jax.tree.flatten(carry)
  leaves = [0.5 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape)
            for i, leaf in enumerate(leaves)]
  return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("name", CONFIGS)
def test_outputs_carry_and_gradients_match_flax(name):
  rnn, variables, xs = _flax_model(name)
  carry0 = _random_carry(rnn, jax.random.PRNGKey(7))
  weights = jax.random.normal(jax.random.PRNGKey(3), (B, T, H))
  cell, params = from_flax(rnn.cell, variables["params"]["cell"])

  def flax_loss(variables, xs):
    carry, ys = rnn.apply(variables, xs, initial_carry=carry0, return_carry=True)
    return jnp.sum(weights * ys), (ys, carry)

  def jaxseq_loss(params, xs):
    ys, carry = unroll(cell, params, xs, carry=carry_from_flax(cell, carry0))
    return jnp.sum(weights * ys), (ys, carry)

  grad = lambda f: jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))
  (g_vars, g_xs_flax), (ys_flax, carry_flax) = grad(flax_loss)(variables, xs)
  (g_params, g_xs), (ys, carry) = grad(jaxseq_loss)(params, xs)

  np.testing.assert_allclose(ys, ys_flax, atol=ATOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL),
               carry_to_flax(cell, carry), carry_flax)
  np.testing.assert_allclose(g_xs, g_xs_flax, atol=ATOL)
  # The weight mapping is a concatenation (plus a constant I for a residual SimpleCell), so
  # it maps Flax's gradients onto ours.
  _, g_mapped = from_flax(rnn.cell, g_vars["params"]["cell"])
  if getattr(rnn.cell, "residual", False):
    g_mapped["w_hh"] = g_mapped["w_hh"] - jnp.eye(H)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL), g_params, g_mapped)


def test_variables_wrapped_or_bare_and_module_options():
  module = nn.GRUCell(H, dtype=jnp.bfloat16, param_dtype=jnp.float32)
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((B, H)), jnp.zeros((B, D)))
  cell_a, params_a = from_flax(module, variables)
  cell_b, params_b = from_flax(module, dict(variables["params"]))
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  assert cell_a.spec["name"] == "gru" and cell_a.spec["reset_after"]
  # dtype=bfloat16 carries over: the gates compute in bfloat16, as Flax's Dense layers do
  # (Flax's final blend with a float32 h promotes back to float32; ours stays bfloat16).
  h = jax.random.normal(jax.random.PRNGKey(1), (B, H))
  x = jax.random.normal(jax.random.PRNGKey(2), (B, D))
  h_flax, _ = module.apply(variables, h, x)
  h_ours, _ = cell_a.step(params_a, h, x)
  assert h_ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(h_ours), np.float32(h_flax), atol=2e-2)


def test_carry_conventions():
  cell, _ = from_flax(nn.LSTMCell(H), nn.LSTMCell(H).init(
      jax.random.PRNGKey(0), (jnp.zeros((B, H)),) * 2, jnp.zeros((B, D))))
  c, h = jnp.zeros((B, H)), jnp.ones((B, H))
  state = carry_from_flax(cell, (c, h))
  assert state.h is not None and np.all(state.h == 1) and np.all(state.c == 0)
  assert carry_to_flax(cell, state)[1] is state.h
  with pytest.raises(TypeError, match=r"^carry: expected Flax's LSTM carry"):
    carry_from_flax(cell, h)
  with pytest.raises(TypeError, match=r"^carry: expected an LSTMState"):
    carry_to_flax(cell, (c, h))


def _init(module):
  return module.init(jax.random.PRNGKey(0), module.initialize_carry(
      jax.random.PRNGKey(1), (B, D)), jnp.zeros((B, D)))


def test_errors():
  with pytest.raises(TypeError, match=r"^module: expected a flax.linen SimpleCell.*got Dense"):
    from_flax(nn.Dense(H), {"params": {}})
  mgu = nn.MGUCell(H, reset_gate=False)
  with pytest.raises(ValueError, match=r"^module: expected an MGUCell with reset_gate=True"):
    from_flax(mgu, _init(mgu))
  with pytest.raises(ValueError, match=r"^variables: expected GRUCell params with a 'hr'"):
    from_flax(nn.GRUCell(H), _init(nn.LSTMCell(H)))
  with pytest.raises(ValueError, match=r"^variables: expected params of a cell with features=5"):
    from_flax(nn.GRUCell(5), _init(nn.GRUCell(H)))
  with pytest.raises(TypeError, match=r"^variables: expected a dict"):
    from_flax(nn.GRUCell(H), [1, 2])


def test_conv_lstm_through_unroll_matches_flax_rnn():
  """from_flax on a ConvLSTMCell, given the frame size, runs through unroll as nn.RNN does."""
  conv = nn.ConvLSTMCell(3, kernel_size=(3, 3))
  xs = jax.random.normal(jax.random.PRNGKey(7), (2, 4, 5, 5, 2))
  rnn = nn.RNN(conv)
  variables = rnn.init(jax.random.PRNGKey(8), xs)
  variables = jax.tree.map(lambda a: a + 0.1, variables)  # non-zero biases
  expected = rnn.apply(variables, xs)
  cell, params = from_flax(conv, variables["params"]["cell"])
  ys, _ = unroll(cell, params, xs)
  np.testing.assert_allclose(ys, expected, atol=1e-5)
