"""jaxseq.experiments: lag profiles in log space, snapshots during training, the edge of chaos.

Oracles: float64 gradient norms from gradflow's one-``jax.grad`` path (where they do not
underflow); Python's ``decimal`` for numbers beyond float64's range; the spectral radius of
the recurrent matrix (numpy's eigenvalues) for the Lyapunov exponent at a stable fixed
point; ``scipy.integrate.quad`` for the mean-field Gaussian integrals.
"""
import decimal
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from jaxseq import experiments, gradflow, registry
from jaxseq import train as train_lib


def _float64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def test_log_norms_equal_float64_norms_where_those_are_finite():
  task, length = "adding", 40
  cell = registry.make_cell("lstm", 4)
  params = train_lib.make_model(task, cell).init(jax.random.PRNGKey(1))
  xs, targets = experiments.measurement_batch(task, length, 3)
  logs = experiments.gradient_log_norms(task, cell, params["rnn"], params["readout"], xs,
                                        targets)
  with jax.enable_x64(True):
    loss_fn = experiments.final_step_loss(task, _float64(params["readout"]),
                                          _float64(targets))
    norms = np.asarray(gradflow.grad_norms(cell, _float64(params["rnn"]), _float64(xs),
                                           loss_fn))
  assert logs.shape == (length,) and logs.dtype == np.float64
  assert np.all(norms > 0)
  np.testing.assert_allclose(logs, np.log(norms), atol=2e-4)


def test_gru_profile_at_2000_steps_is_finite_and_printed_below_float64():
  profiles = experiments.lag_profiles("adding", {"gru": registry.make_cell("gru", 4)},
                                      length=2000, batch_size=2)
  logs = profiles["init"]["gru"]
  assert logs.shape == (2000,) and np.isfinite(logs).all()
  assert logs[-1] < math.log(1e-308)       # below float64's range, let alone float32's
  assert np.all(np.float32(np.exp(logs[-100:])) == 0)
  table = experiments.format_profiles(profiles)
  last = [line.split() for line in table.splitlines() if line.strip().startswith("1999 ")]
  assert len(last) == 1 and int(last[0][1].split("e")[1]) < -308, table


@pytest.mark.parametrize("log_value", [0.0, -1.0, 2.5, -11.512925464970229, -745.5, -1000.0,
                                       -123456.789, 700.25])
def test_format_log_norm_agrees_with_decimal(log_value):
  text = experiments.format_log_norm(log_value, 4)
  mantissa, exponent = text.split("e")
  exact = decimal.Context(prec=40).exp(decimal.Decimal(log_value))
  expected = f"{exact:.4e}"   # decimal keeps any exponent: '5.0760e-435'
  expected_mantissa, expected_exponent = expected.split("E" if "E" in expected else "e")
  assert mantissa == expected_mantissa and int(exponent) == int(expected_exponent), \
      (text, expected)


def test_format_log_norm_edges():
  assert experiments.format_log_norm(float("-inf")) == "0"
  assert experiments.format_log_norm(float("inf")) == "inf"
  assert experiments.format_log_norm(float("nan")) == "nan"
  assert experiments.format_log_norm(math.log(9.99999)) == "1.000e+01"   # rounds up a decade
  assert experiments.format_log_norm(math.log(4.155e-21)) == f"{4.155e-21:.3e}"


def test_snapshot_steps_and_phases():
  assert experiments.snapshot_steps(200, 4) == (50, 100, 150, 200)
  assert experiments.snapshot_steps(3, 5) == (1, 2, 3)
  assert experiments.snapshot_steps(7, 1) == (7,)
  assert experiments.phase_step("init") == 0 and experiments.phase_step("step 25") == 25
  with pytest.raises(ValueError, match="train_steps"):
    experiments.snapshot_steps(0, 4)
  with pytest.raises(ValueError, match="phase"):
    experiments.phase_step("trained")


def test_snapshots_equal_the_steps_of_the_longest_run():
  cell = registry.make_cell("gru", 3)
  kwargs = dict(length=5, batch_size=3, learning_rate=1e-2)
  alone = experiments.lag_profiles("adding", {"gru": cell}, train_steps=2, **kwargs)
  both = experiments.lag_profiles("adding", {"gru": cell}, train_steps=(4, 2), **kwargs)
  assert list(alone) == ["init", "step 2"] and list(both) == ["init", "step 2", "step 4"]
  np.testing.assert_array_equal(alone["step 2"]["gru"], both["step 2"]["gru"])
  np.testing.assert_array_equal(alone["init"]["gru"], both["init"]["gru"])
  assert not np.array_equal(both["step 2"]["gru"], both["step 4"]["gru"])


@pytest.mark.parametrize("train_steps, error", [
    ([0], ValueError), (-1, ValueError), ("4", TypeError), (2.0, TypeError)])
def test_lag_profiles_rejects_bad_training_steps(train_steps, error):
  with pytest.raises(error, match="train_steps"):
    experiments.lag_profiles("adding", {"gru": registry.make_cell("gru", 2)}, length=3,
                             batch_size=2, train_steps=train_steps)


def test_records_and_slope_from_logs():
  logs = np.log(3.0) - 0.25 * np.arange(6)          # norms 3 e^{-k/4}
  logs[-1] = -2000.0                                  # far below float64
  rows = experiments.records({"init": {"c": logs}})
  assert [r["lag"] for r in rows] == list(range(6))
  np.testing.assert_allclose([r["relative_norm"] for r in rows[:5]],
                             np.exp(-0.25 * np.arange(5)))
  assert rows[-1]["norm"] == 0.0 and rows[-1]["log_norm"] == -2000.0
  np.testing.assert_allclose(experiments.log_slope(logs[:5]), -0.25)
  np.testing.assert_allclose(experiments.log_slope(logs, first=1, last=4), -0.25)
  np.testing.assert_allclose(experiments.decay_rate(logs[:5]), math.exp(-0.25))


def test_edge_of_chaos_small_network():
  gains = (0.5, 1.0, 1.5, 2.0)
  result = experiments.edge_of_chaos(gains, hidden_size=32, length=300, warmup=100,
                                     seed=0)
  assert result.lyapunov.shape == result.slope.shape == (1, 4)
  lam = result.lyapunov[0]
  assert lam[0] < 0 < lam[3]
  # g = 0.5: the state decays to the fixed point 0, whose Jacobian is W = g W_0, so the
  # exponent is log(g rho(W_0)) (mean field: log g, rho -> 1 as N -> infinity)
  np.testing.assert_allclose(lam[0], math.log(0.5 * result.spectral_radius[0]), atol=5e-3)
  # the gradient norm decays at the same rate
  np.testing.assert_allclose(result.slope[0, 0], lam[0], atol=0.02)
  np.testing.assert_allclose(result.mean_field[0], math.log(0.5))


def _gauss(fn):
  return integrate.quad(lambda z: fn(z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
                        -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("gain", [1.2, 2.0, 3.0])
def test_mean_field_against_quadrature(gain):
  delta = experiments.mean_field_variance(gain)
  assert delta > 0
  fixed_point = gain ** 2 * _gauss(lambda z: math.tanh(math.sqrt(delta) * z) ** 2)
  np.testing.assert_allclose(fixed_point, delta, rtol=1e-9)
  expected = 0.5 * math.log(gain ** 2 * _gauss(
      lambda z: (1 - math.tanh(math.sqrt(delta) * z) ** 2) ** 2))
  np.testing.assert_allclose(experiments.mean_field_lyapunov(gain), expected, rtol=1e-9)
  assert expected > 0


def test_mean_field_crosses_zero_at_one():
  for gain in (0.3, 0.9, 1.0):
    assert experiments.mean_field_variance(gain) == 0.0
    np.testing.assert_allclose(experiments.mean_field_lyapunov(gain), math.log(gain))
  assert 0 < experiments.mean_field_lyapunov(1.01) < 1e-3
  values = [experiments.mean_field_lyapunov(g) for g in (0.5, 0.8, 1.0, 1.3, 2.0)]
  assert values == sorted(values)
  np.testing.assert_allclose(experiments.crossing((0.5, 0.8, 1.0, 1.3, 2.0), values), 1.0)


def test_crossing():
  gains = [0.5, 1.0, 1.5, 2.0]
  assert experiments.crossing(gains, [-0.5, -0.1, 0.1, 0.2]) == pytest.approx(1.25)
  # after the last value at or below 0: between 1.5 (-0.1) and 2.0 (0.2)
  assert experiments.crossing(gains, [-0.5, 0.1, -0.1, 0.2]) == pytest.approx(1.5 + 0.5 / 3)
  assert experiments.crossing(gains, [0.1, 0.2, 0.3, 0.4]) == 0.5
  assert math.isnan(experiments.crossing(gains, [-0.1, 0.2, 0.3, -0.4]))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(gains="0.5"), TypeError, "gains"),
    (dict(gains=[]), ValueError, "gains"),
    (dict(gains=[0.5, -1.0]), ValueError, "gains"),
    (dict(gains=[0.5], length=20, warmup=10), ValueError, "warmup"),
    (dict(gains=[0.5], hidden_size=0), ValueError, "hidden_size"),
    (dict(gains=[0.5], gradients="no"), TypeError, "gradients"),
])
def test_edge_of_chaos_rejects_bad_options(kwargs, error, name):
  with pytest.raises(error, match=name):
    experiments.edge_of_chaos(**kwargs)


def test_reproduce_edge_of_chaos_rows_and_section():
  from jaxseq import reproduce
  scale = dict(edge_of_chaos=dict(hidden=16, length=150, warmup=50, draws=1, fit_from=10,
                                  gains=(0.5, 2.0), finite_sizes=(8,), finite_draws=1,
                                  finite_gains=(0.5, 2.0)))
  rows, section = reproduce.edge_of_chaos(scale, reproduce.Budget(0), seed=0)
  assert [r.source.split(",")[0] for r in rows] == ["Sompolinsky", "Pascanu"]
  assert all(r.verdict.startswith("**") for r in rows)
  assert section.startswith("## Edge of chaos")
  assert "| 0.50 | -0.6931 |" in section          # the mean field's log 0.5
  table = [line for line in section.splitlines() if line.startswith("| 8 |")
           or line.startswith("| 16 |")]
  assert len(table) == 2                             # one finite-size row per N
