"""Data-parallel ``train(..., mesh=...)`` equals single-device training.

Four CPU devices exist only if ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` is
set before JAX starts, so the comparison runs in a fresh Python process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jaxseq
from jaxseq import train as train_lib

SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    import jaxseq
    from jaxseq import train as train_lib

    out = {"devices": len(jax.devices())}
    cell = jaxseq.lstm(8)
    options = dict(length=12, steps=6, batch_size=8, eval_every=3, learning_rate=1e-2,
                   progress=False)
    single = train_lib.train("adding", cell, **options)
    mesh = train_lib.data_mesh()
    sharded = train_lib.train("adding", cell, mesh=mesh, **options)
    out["single_history"] = single.history
    out["sharded_history"] = sharded.history
    leaves = lambda t: [np.asarray(l) for l in jax.tree.leaves(t)]
    out["params_diff"] = max(float(np.max(np.abs(a - b)))
                             for a, b in zip(leaves(single.params), leaves(sharded.params)))
    out["params_replicated"] = all(l.sharding.is_fully_replicated
                                   for l in jax.tree.leaves(sharded.params))

    # The compiled step splits the batch: one all-reduce averages the gradients.
    _, _, step, _ = train_lib._compiled(train_lib.resolve_task("adding"), cell, 8, 12,
                                        "adam", 1e-2, 1.0, mesh, "data")
    state = jax.device_put(train_lib.make_optimizer("adam", 1e-2, 1.0).init(sharded.params),
                           train_lib.replicated(mesh))
    hlo = step.lower(sharded.params, state, jax.random.PRNGKey(1), 0).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo

    # Gradients of a loss on a batch sharded over the devices = on one device.
    model = train_lib.make_model("adding", cell)
    params = model.init(jax.random.PRNGKey(2))
    x, y = train_lib.resolve_task("adding").sample(jax.random.PRNGKey(3), 8, 12)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    xs, ys = jax.device_put((x, y), batch)
    out["shard_rows"] = xs.addressable_shards[0].data.shape[0]
    loss = jax.jit(jax.value_and_grad(model.loss))
    (l1, g1), (l4, g4) = loss(params, x, y), loss(params, xs, ys)
    out["loss_diff"] = abs(float(l1) - float(l4))
    out["grad_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(g1), leaves(g4)))
    out["grad_scale"] = max(float(np.max(np.abs(a))) for a in leaves(g1))
    try:
      train_lib.train("adding", cell, mesh=mesh, **dict(options, batch_size=6))
    except ValueError as e:
      out["bad_batch"] = str(e)
    import contextlib, io
    from jaxseq import cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      out["cli_status"] = cli.main(["train", "adding", "--length", "5", "--steps", "1",
                                    "--batch-size", "6", "--data-parallel", "--quiet"])
    out["cli_error"] = err.getvalue()
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, cwd=tmp_path_factory.mktemp("dp"), timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  line = [l for l in run.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_four_devices_are_used(result):
  assert result["devices"] == 4
  assert result["shard_rows"] == 2          # 8 sequences over 4 devices
  assert result["all_reduce"]               # the gradient is averaged across devices
  assert result["params_replicated"]


def test_sharded_training_equals_single_device(result):
  single, sharded = np.asarray(result["single_history"]), np.asarray(result["sharded_history"])
  assert single.shape == sharded.shape == (2, 3)
  np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-6)
  assert result["params_diff"] < 1e-5


def test_sharded_gradients_equal_single_device(result):
  assert result["loss_diff"] < 1e-6
  assert result["grad_scale"] > 1e-4       # the comparison is not of zeros
  assert result["grad_diff"] < 1e-6 * max(1.0, result["grad_scale"])


def test_batch_must_split_evenly(result):
  assert "batch_size" in result["bad_batch"] and "multiple of the 4" in result["bad_batch"]
  assert result["cli_status"] == 2
  assert result["cli_error"].count("\n") == 1 and "--batch-size" in result["cli_error"]


def test_mesh_arguments_are_checked():
  cell = jaxseq.lstm(4)
  with pytest.raises(TypeError, match="mesh"):
    train_lib.train("adding", cell, length=5, steps=1, mesh="data")
  with pytest.raises(ValueError, match="data_axis"):
    train_lib.train("adding", cell, length=5, steps=1, mesh=train_lib.data_mesh(),
                    data_axis="model")
  with pytest.raises(ValueError, match="data_axis"):
    train_lib.train("adding", cell, length=5, steps=1, data_axis="data")


def test_one_device_mesh_trains_like_no_mesh():
  cell = jaxseq.gru(4)
  options = dict(length=6, steps=2, batch_size=4, eval_every=2, progress=False)
  plain = train_lib.train("adding", cell, **options)
  meshed = train_lib.train("adding", cell, mesh=train_lib.data_mesh(jax.devices()[:1]),
                           **options)
  np.testing.assert_allclose(meshed.history, plain.history, rtol=1e-6)


def test_cli_data_parallel_on_one_device(capsys):
  from jaxseq import cli
  assert cli.main(["train", "adding", "--length", "5", "--steps", "2", "--batch-size", "4",
                   "--hidden", "4", "--data-parallel", "--quiet"]) == 0
  out = capsys.readouterr().out
  assert f"split over {jax.device_count()} devices" in out and "adding: mse" in out
