"""jaxseq.gradflow against closed forms and brute-force oracles.

Oracles: gradient norms of linear RNNs with ``W_hh = rho Q`` (``rho^k`` decay), the
Lyapunov spectrum and Jacobian singular values of such RNNs (all ``ln rho`` / ``rho^(t-s)``),
the spectral radius of a random matrix (zero-input tanh RNN), the closed-form step Jacobian
``diag(1 - h_t^2) W_hh^T`` of a tanh RNN in NumPy, and, for gradient norms of LSTMs, GRUs
and layers, one ``jax.grad`` per step of a hand-written Python loop over ``cell.step``
with a perturbation at that step only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import ortho_group

import jaxseq
from jaxseq import gradflow

F64 = jnp.float64


def _linear_rnn(n, d, rho, seed):
  """A linear Elman RNN with ``w_hh = rho Q``, Q orthogonal, and non-zero bias (float64)."""
  rng = np.random.default_rng(seed)
  cell = jaxseq.simple_rnn(n, activation=lambda x: x, param_dtype=F64)
  params = {"w_ih": jnp.asarray(rng.normal(size=(d, n))),
            "w_hh": jnp.asarray(rho * ortho_group.rvs(n, random_state=seed)),
            "b": jnp.asarray(rng.normal(size=(n,)))}
  return cell, params


def _output(carry):
  """Every jaxseq cell outputs its hidden state: y_t = h_t."""
  return carry.h if isinstance(carry, jaxseq.LSTMState) else carry


def _add_at(t, u, carry, eps, b):
  """carry + eps[b] at step u == t only (t is traced, so one compilation serves every t)."""
  return jax.tree.map(lambda c, e: jnp.where(u == t, c + e[b], c), carry, eps)


def _pad(outputs, num_steps, like):
  return jnp.stack(outputs + [jnp.zeros_like(like)] * (num_steps - len(outputs)))


def _brute_force_cell(cell, params, xs, loss_fn, lengths=None, carry=None):
  """grads[t] = d loss / d eps, eps added to the carry after step t only, one jax.grad per
  t; a Python loop over cell.step, one example at a time. Returns the carry's structure of
  (T, B, ...)."""
  batch, num_steps = xs.shape[:2]
  lengths = [num_steps] * batch if lengths is None else [int(n) for n in lengths]
  carry0 = cell.initial_carry(params, (batch,)) if carry is None else carry

  def loss(t, eps):
    ys = []
    for b in range(batch):
      state, out = jax.tree.map(lambda c: c[b], carry0), []
      for u in range(lengths[b]):
        state, _ = cell.step(params, state, xs[b, u])
        state = _add_at(t, u, state, eps, b)
        out.append(_output(state))
      ys.append(_pad(out, num_steps, _output(cell.initial_carry(params, ()))))
    return loss_fn(jnp.stack(ys))

  zeros = cell.initial_carry(params, (batch,))
  grad = jax.jit(jax.grad(loss, argnums=1))
  grads = [grad(t, zeros) for t in range(num_steps)]
  return jax.tree.map(lambda *g: np.stack(g), *grads)


def _norms(grads, per_example):
  """(T, B, H) gradients -> (T,) or (B, T) norms."""
  g = np.asarray(grads)
  return np.sqrt((g ** 2).sum(-1)).T if per_example else np.sqrt((g ** 2).sum((1, 2)))


def _weighted_loss(num_steps, size, seed):
  w = jnp.asarray(np.random.default_rng(seed).normal(size=(num_steps, size)))
  return lambda ys: jnp.sum(w * jnp.tanh(ys) + 0.1 * ys ** 2)


# ----------------------------------------------------------------------------- closed forms


def test_linear_rnn_gradient_decays_as_rho_to_the_lag(x64):
  n, d, num_steps, rho = 8, 3, 12, 0.8
  cell, params = _linear_rnn(n, d, rho, seed=0)
  v = jnp.asarray(np.random.default_rng(1).normal(size=(n,)))
  xs = jax.random.normal(jax.random.PRNGKey(0), (2, num_steps, d), F64)
  # dL/dh_{T-1-k} = v (W_hh^T)^k: its norm is rho^k |v| since W_hh / rho is orthogonal.
  expected = rho ** np.arange(num_steps)[::-1] * np.linalg.norm(v)

  norms = gradflow.grad_norms(cell, params, xs[0], lambda ys: jnp.sum(v * ys[-1]))
  np.testing.assert_allclose(norms, expected, rtol=1e-5)
  per_example = gradflow.grad_norms(cell, params, xs, lambda ys: jnp.sum(v * ys[:, -1]),
                                    per_example=True)
  assert per_example.shape == (2, num_steps)
  np.testing.assert_allclose(per_example, np.stack([expected] * 2), rtol=1e-5)
  np.testing.assert_allclose(gradflow.norm_ratios(norms), np.full(num_steps - 1, rho),
                             rtol=1e-5)


def test_float32_norms_below_the_range_of_their_squares():
  n, d, num_steps, rho = 4, 2, 90, 0.5
  _, params = _linear_rnn(n, d, rho, seed=3)
  cell = jaxseq.simple_rnn(n, activation=lambda x: x)  # float32
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  v = jnp.ones(n) / 2
  xs = jax.random.normal(jax.random.PRNGKey(2), (num_steps, d))
  # 0.5^89 ~ 1.6e-27: the squares of the gradient's entries are below float32's range
  # (1.4e-45); the norm is not.
  norms = gradflow.grad_norms(cell, params, xs, lambda ys: jnp.sum(v * ys[-1]))
  np.testing.assert_allclose(norms, rho ** np.arange(num_steps)[::-1], rtol=1e-5)


def test_linear_rnn_lyapunov_exponents_and_singular_values(x64):
  n, d, num_steps, rho = 8, 3, 40, 0.7
  cell, params = _linear_rnn(n, d, rho, seed=2)
  xs = jax.random.normal(jax.random.PRNGKey(1), (num_steps, d), F64)
  # Every step Jacobian is rho Q^T: every singular value of a product of m of them is rho^m.
  np.testing.assert_allclose(gradflow.lyapunov(cell, params, xs), np.full(n, np.log(rho)),
                             atol=1e-4)
  np.testing.assert_allclose(gradflow.lyapunov(cell, params, xs, k=3, warmup=5),
                             np.full(3, np.log(rho)), atol=1e-4)
  s, t = 3, 17
  np.testing.assert_allclose(gradflow.jacobian_spectrum(cell, params, xs, s=s, t=t),
                             np.full(n, rho ** (t - s)), rtol=1e-6)
  np.testing.assert_allclose(gradflow.jacobian_spectrum(cell, params, xs[None], k=2, s=s,
                                                        t=t), np.full(2, rho ** (t - s)),
                             rtol=1e-6)
  np.testing.assert_allclose(gradflow.jacobian_spectrum(cell, params, xs, s=5, t=5),
                             np.ones(n), rtol=1e-12)


def test_zero_input_tanh_rnn_top_exponent_is_log_of_gain():
  n, g, num_steps = 300, 0.5, 400
  rng = np.random.default_rng(3)
  w = rng.normal(scale=g / np.sqrt(n), size=(n, n))
  cell = jaxseq.simple_rnn(n)
  params = {"w_ih": jnp.zeros((1, n)), "w_hh": jnp.asarray(w, jnp.float32),
            "b": jnp.zeros(n)}
  carry = jnp.asarray(1e-2 * rng.normal(size=n), jnp.float32)
  exponents = gradflow.lyapunov(cell, params, jnp.zeros((num_steps, 1)), k=4, warmup=100,
                                carry=carry)
  # The state decays to the fixed point 0, where the step Jacobian is W^T (the same matrix
  # every step): the top exponent is log of W's spectral radius, ...
  spectral_radius = np.abs(np.linalg.eigvals(w)).max()
  assert abs(exponents[0] - np.log(spectral_radius)) < 0.01
  # ... which is g by the circular law, up to edge fluctuations of order n^-1/2 (Rider 2003):
  # over 20 draws at n = 300 log(radius / g) had mean 0.03 and maximum 0.08.
  assert abs(exponents[0] - np.log(g)) < 0.1
  assert np.all(np.diff(np.asarray(exponents)) <= 0)


def _tanh_rnn_trajectory(params, xs):
  """NumPy: the states h_t and closed-form step Jacobians diag(1 - h_t^2) W_hh^T."""
  w_ih, w_hh, b = (np.asarray(params[k]) for k in ("w_ih", "w_hh", "b"))
  h, jacobians = np.zeros(w_hh.shape[0]), []
  for x in np.asarray(xs):
    h = np.tanh(x @ w_ih + h @ w_hh + b)
    jacobians.append((1 - h ** 2)[:, None] * w_hh.T)
  return jacobians


def test_tanh_rnn_spectrum_and_exponent_sum_match_numpy(x64):
  n, d, num_steps = 6, 2, 30
  cell = jaxseq.simple_rnn(n, recurrent_init=jax.nn.initializers.normal(1.2 / np.sqrt(n)),
                           param_dtype=F64)
  params = cell.init(jax.random.PRNGKey(4), d)
  xs = jax.random.normal(jax.random.PRNGKey(5), (num_steps, d), F64)
  jacobians = _tanh_rnn_trajectory(params, xs)

  s, t = 4, 12
  product = np.eye(n)
  for jac in jacobians[s + 1:t + 1]:
    product = jac @ product
  singular_values = np.linalg.svd(product, compute_uv=False)
  np.testing.assert_allclose(gradflow.jacobian_spectrum(cell, params, xs, s=s, t=t),
                             singular_values, rtol=1e-8)
  # k < n: subspace iteration finds the top singular values.
  np.testing.assert_allclose(
      gradflow.jacobian_spectrum(cell, params, xs, k=2, s=s, t=t, iterations=30),
      singular_values[:2], rtol=1e-6)

  # The exponents sum to the mean log|det J_t| (QR: prod |diag R_t| = |det J_t|).
  warmup = 5
  logdets = [np.linalg.slogdet(jac)[1] for jac in jacobians[warmup:]]
  exponents = gradflow.lyapunov(cell, params, xs, warmup=warmup)
  np.testing.assert_allclose(np.sum(exponents), np.mean(logdets), rtol=1e-8)
  assert np.all(np.diff(np.asarray(exponents)) <= 0)


def test_lstm_spectrum_is_over_the_flattened_h_and_c(x64):
  h_size, d, num_steps = 3, 2, 6
  cell = jaxseq.lstm(h_size, param_dtype=F64)
  params = cell.init(jax.random.PRNGKey(6), d)
  xs = jax.random.normal(jax.random.PRNGKey(7), (num_steps, d), F64)

  def states(hc0):  # the carry after the last step from [h, c] after step 0, as [h, c]
    carry = jaxseq.LSTMState(hc0[:h_size], hc0[h_size:])
    for x in xs[1:]:
      carry, _ = cell.step(params, carry, x)
    return jnp.concatenate([carry.h, carry.c])

  carry0, _ = cell.step(params, cell.initial_carry(params, ()), xs[0])
  dense = jax.jit(jax.jacfwd(states))(jnp.concatenate([carry0.h, carry0.c]))
  np.testing.assert_allclose(gradflow.jacobian_spectrum(cell, params, xs),
                             np.linalg.svd(np.asarray(dense), compute_uv=False), rtol=1e-8,
                             atol=1e-14)  # an SVD is accurate to eps * sigma_1


# ----------------------------------------------------------------------------- brute force


def test_lstm_grad_norms_match_brute_force_per_leaf_and_combined(x64):
  h_size, d, batch, num_steps = 3, 2, 2, 5
  cell = jaxseq.lstm(h_size, param_dtype=F64)
  params = cell.init(jax.random.PRNGKey(8), d)
  xs = jax.random.normal(jax.random.PRNGKey(9), (batch, num_steps, d), F64)
  loss_fn = _weighted_loss(num_steps, h_size, seed=10)
  carry = jax.tree.map(lambda c: jax.random.normal(jax.random.PRNGKey(18), c.shape, F64),
                       cell.initial_carry(params, (batch,)))
  grads = _brute_force_cell(cell, params, xs, loss_fn, carry=carry)

  per_leaf = gradflow.grad_norms(cell, params, xs, loss_fn, carry, per_leaf=True)
  assert isinstance(per_leaf, jaxseq.LSTMState)
  np.testing.assert_allclose(per_leaf.h, _norms(grads.h, False), rtol=1e-10)
  np.testing.assert_allclose(per_leaf.c, _norms(grads.c, False), rtol=1e-10)
  combined = np.sqrt(_norms(grads.h, False) ** 2 + _norms(grads.c, False) ** 2)
  np.testing.assert_allclose(gradflow.grad_norms(cell, params, xs, loss_fn, carry), combined,
                             rtol=1e-10)


def test_gru_grad_norms_match_brute_force_with_lengths_per_example(x64):
  h_size, d, batch, num_steps = 4, 3, 3, 6
  cell = jaxseq.gru(h_size, param_dtype=F64)
  params = cell.init(jax.random.PRNGKey(11), d)
  xs = jax.random.normal(jax.random.PRNGKey(12), (batch, num_steps, d), F64)
  # Garbage in the padding must not matter.
  xs = xs.at[2, 4:].set(1e3)
  lengths = jnp.array([6, 2, 4])
  loss_fn = _weighted_loss(num_steps, h_size, seed=13)
  grads = _brute_force_cell(cell, params, xs, loss_fn, lengths)

  norms = gradflow.grad_norms(cell, params, xs, loss_fn, lengths=lengths, per_example=True)
  assert norms.shape == (batch, num_steps)
  np.testing.assert_allclose(norms, _norms(grads, True), rtol=1e-10)
  assert np.all(np.asarray(norms)[1, 2:] == 0) and np.all(np.asarray(norms)[2, 4:] == 0)
  assert np.all(np.asarray(norms)[0] > 0)

  # The same cell as a time-major layer: the same norms, still indexed by t.
  layer = jaxseq.recurrent(cell, time_major=True)
  norms_tm = gradflow.grad_norms(layer, params, jnp.swapaxes(xs, 0, 1),
                                 lambda ys: loss_fn(jnp.swapaxes(ys, 0, 1)),
                                 lengths=lengths)
  np.testing.assert_allclose(norms_tm, _norms(grads, False), rtol=1e-10)


def test_stacked_bidirectional_layer_grad_norms_match_brute_force(x64):
  h_lstm, h_gru, d, batch, num_steps = 3, 4, 2, 2, 5
  lstm, gru = jaxseq.lstm(h_lstm, param_dtype=F64), jaxseq.gru(h_gru, param_dtype=F64)
  layer = jaxseq.stack(jaxseq.bidirectional(lstm), jaxseq.recurrent(gru))
  params = layer.init(jax.random.PRNGKey(14), d)
  xs = jax.random.normal(jax.random.PRNGKey(15), (batch, num_steps, d), F64)
  lengths = [5, 3]
  loss_fn = _weighted_loss(num_steps, h_gru, seed=16)
  p_fw, p_bw, p_top = params[0]["forward"], params[0]["backward"], params[1]

  def loss(t, eps):  # eps: perturbations of the forward, backward and top carries
    ys = []
    for b in range(batch):
      n = lengths[b]
      carry, h_fw = lstm.initial_carry(p_fw, ()), []
      for u in range(n):
        carry, _ = lstm.step(p_fw, carry, xs[b, u])
        carry = _add_at(t, u, carry, eps["forward"], b)
        h_fw.append(carry.h)
      carry, h_bw = lstm.initial_carry(p_bw, ()), [None] * n
      for u in reversed(range(n)):  # from the last valid step back to 0
        carry, _ = lstm.step(p_bw, carry, xs[b, u])
        carry = _add_at(t, u, carry, eps["backward"], b)
        h_bw[u] = carry.h
      h, out = gru.initial_carry(p_top, ()), []
      for u in range(n):
        h, _ = gru.step(p_top, h, jnp.concatenate([h_fw[u], h_bw[u]]))
        h = _add_at(t, u, h, eps["top"], b)
        out.append(h)
      ys.append(_pad(out, num_steps, out[0]))
    return loss_fn(jnp.stack(ys))

  # Zero perturbations of three carries at once: each one's gradient is still its own.
  zeros = {"forward": lstm.initial_carry(p_fw, (batch,)),
           "backward": lstm.initial_carry(p_bw, (batch,)),
           "top": gru.initial_carry(p_top, (batch,))}
  grad = jax.jit(jax.grad(loss, argnums=1))
  grads = jax.tree.map(lambda *g: np.stack(g), *[grad(t, zeros) for t in range(num_steps)])
  expected = [{d: grads[d] for d in ("forward", "backward")}, grads["top"]]

  norms = gradflow.grad_norms(layer, params, xs, loss_fn, lengths=jnp.array(lengths))
  assert isinstance(norms, list) and set(norms[0]) == {"forward", "backward"}
  for direction in ("forward", "backward"):
    g = expected[0][direction]
    combined = np.sqrt(_norms(g.h, False) ** 2 + _norms(g.c, False) ** 2)
    np.testing.assert_allclose(norms[0][direction], combined, rtol=1e-10)
  np.testing.assert_allclose(norms[1], _norms(expected[1], False), rtol=1e-10)

  per_example = gradflow.grad_norms(layer, params, xs, loss_fn, lengths=jnp.array(lengths),
                                    per_leaf=True, per_example=True)
  np.testing.assert_allclose(per_example[0]["backward"].c,
                             _norms(expected[0]["backward"].c, True), rtol=1e-10)
  np.testing.assert_allclose(per_example[1], _norms(expected[1], True), rtol=1e-10)


def test_nested_bidirectional_norms_are_indexed_by_input_position(x64):
  """The backward direction of a bidirectional layer over a bidirectional layer runs the
  inner layer on the flipped sequences: its norms are flipped back to input positions."""
  inner = jaxseq.bidirectional(jaxseq.gru(3, param_dtype=F64))
  layer = jaxseq.bidirectional(inner, merge=None)
  params = layer.init(jax.random.PRNGKey(19), 2)
  xs = jax.random.normal(jax.random.PRNGKey(20), (2, 6, 2), F64)
  lengths = jnp.array([6, 4])
  flip = lambda a: jaxseq.flip_sequences(a, lengths, 1)
  w = jax.random.normal(jax.random.PRNGKey(21), (6, 6), F64)
  loss_bw = lambda ys_bw: jnp.sum(w * jnp.tanh(ys_bw))  # on the backward direction only

  norms = gradflow.grad_norms(layer, params, xs, lambda ys: loss_bw(ys[1]), lengths=lengths,
                              per_example=True)
  # The backward direction is the inner layer run on the flipped sequences.
  expected = gradflow.grad_norms(inner, params["backward"], flip(xs),
                                 lambda ys: loss_bw(flip(ys)), lengths=lengths,
                                 per_example=True)
  for direction in ("forward", "backward"):
    np.testing.assert_allclose(norms["backward"][direction], flip(expected[direction]),
                               rtol=1e-10)
    assert np.all(np.asarray(norms["forward"][direction]) == 0)
  logs = gradflow.grad_norms(layer, params, xs, lambda ys: loss_bw(ys[1]), lengths=lengths,
                             per_example=True, log=True)
  with np.errstate(divide="ignore"):  # log 0 = -inf at the padding, as log=True gives
    np.testing.assert_allclose(logs["backward"]["forward"],
                               np.log(np.asarray(flip(expected["forward"]))), rtol=1e-10)


# ----------------------------------------------------------------------------- the rest


def test_norm_ratios_divide_consecutive_norms():
  norms = np.random.default_rng(17).uniform(0.5, 2.0, size=(3, 7))
  np.testing.assert_allclose(gradflow.norm_ratios(norms), norms[:, :-1] / norms[:, 1:],
                             rtol=1e-6)
  tree = gradflow.norm_ratios([{"forward": norms[0]}, [1.0, 2.0, 4.0]])
  np.testing.assert_allclose(tree[0]["forward"], norms[0, :-1] / norms[0, 1:], rtol=1e-6)
  np.testing.assert_allclose(tree[1], [0.5, 0.5])


def test_bad_arguments_fail_early_with_clear_messages():
  cell = jaxseq.simple_rnn(3)
  params = cell.init(jax.random.PRNGKey(0), 2)
  xs = jnp.ones((2, 4, 2))
  with pytest.raises(TypeError, match="model: expected a jaxseq Cell or Layer"):
    gradflow.grad_norms(params, params, xs, jnp.sum)
  with pytest.raises(ValueError, match="loss_fn: expected a function returning a real "
                     "scalar"):
    gradflow.grad_norms(cell, params, xs, lambda ys: ys)
  with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 4\]"):
    gradflow.grad_norms(cell, params, xs, jnp.sum, lengths=jnp.array([1, 5]))
  with pytest.raises(ValueError, match=r"xs: expected one sequence"):
    gradflow.lyapunov(cell, params, xs)
  with pytest.raises(ValueError, match="k: expected at most the state size n = 3"):
    gradflow.lyapunov(cell, params, xs[0], k=4)
  with pytest.raises(ValueError, match="warmup: expected fewer steps than the 4"):
    gradflow.lyapunov(cell, params, xs[0], warmup=4)
  with pytest.raises(ValueError, match="t: expected a step >= s = 2"):
    gradflow.jacobian_spectrum(cell, params, xs[0], s=2, t=1)
  with pytest.raises(ValueError, match=r"norms: expected arrays \(..., T\) with T >= 2"):
    gradflow.norm_ratios(jnp.ones((3, 1)))
