"""Optimizer, train state and train / eval steps (losses.py) on problems with hand-computable answers.

Toy problem: loss(w) = mean_b ||w - x_b||^2 / 2, whose gradient is w - mean(x). Adam's first update
is then -lr g / (|g| + eps) elementwise (bias-corrected moments m = g, v = g^2). Hand computations are
in float64 numpy; the step runs in float32, so comparisons allow float32 round-off (rtol 1e-6 for a
few operations; 1e-5 where the mapped step reduces in a different order).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import losses
import parallel

B1, B2, EPS = 0.9, 0.999, 1e-8
# optax's float32 Adam scales v by (1 - beta2) rounded from float64 (0.001) but bias-corrects with
# 1 - float32(beta2)^k (0.00099998713): v_hat is 1.3e-5 too large and each update, of size lr = 0.1,
# 6.4e-7 too small. Parameter checks after k Adam updates therefore allow atol = 1e-6 k.
ADAM_ATOL = 1e-6


def optim_config(**overrides):
  config = ml_collections.ConfigDict(
    dict(optimizer="Adam", lr=0.1, beta1=B1, eps=EPS, weight_decay=0.0, warmup=0, grad_clip=-1.0)
  )
  config.update(overrides)
  return config


def quadratic_loss(params, batch, rng):
  del rng
  per_example = 0.5 * jnp.sum((params["w"] - batch["image"]) ** 2, axis=-1)
  return jnp.mean(per_example), {"loss": per_example}


W0 = np.array([1.0, -2.0, 3.0])


def batches(n, size=4, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, size, 3)) * 2.0
  return [{"image": jnp.asarray(xi, jnp.float32)} for xi in x]


def test_lr_schedule_is_linear_warmup_from_zero():
  # The reference's lr * min(step / warmup, 1).
  schedule = losses.get_lr_schedule(optim_config(lr=2e-4, warmup=100))
  for step, want in [(0, 0.0), (1, 2e-6), (50, 1e-4), (100, 2e-4), (5000, 2e-4)]:
    np.testing.assert_allclose(schedule(step), want, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(losses.get_lr_schedule(optim_config(lr=3e-4))(0), 3e-4, rtol=1e-7)


def test_two_adam_steps_and_ema_match_hand_computation():
  config, ema_rate = optim_config(), 0.9
  optimizer = losses.get_optimizer(config)
  step = jax.jit(
    losses.get_step_fn(
      quadratic_loss, optimizer, ema_rate, lr_schedule=losses.get_lr_schedule(config)
    )
  )
  state = losses.init_train_state({"w": jnp.asarray(W0, jnp.float32)}, optimizer)
  data = batches(2)

  w, m, v, ema = W0.copy(), np.zeros(3), np.zeros(3), W0.copy()
  for k in range(2):
    g = w - np.asarray(data[k]["image"], np.float64).mean(0)
    loss = 0.5 * np.mean(np.sum((w - np.asarray(data[k]["image"], np.float64)) ** 2, -1))
    m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g**2
    m_hat, v_hat = m / (1 - B1 ** (k + 1)), v / (1 - B2 ** (k + 1))
    w = w - 0.1 * m_hat / (np.sqrt(v_hat) + EPS)
    ema = ema_rate * ema + (1 - ema_rate) * w
    state, metrics = step(state, data[k], jax.random.PRNGKey(0))
    assert int(state.step) == k + 1
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-6, atol=ADAM_ATOL * (k + 1))
    np.testing.assert_allclose(state.ema_params["w"], ema, rtol=1e-6, atol=ADAM_ATOL * (k + 1))
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(g), rtol=1e-6)
    np.testing.assert_allclose(metrics["lr"], 0.1, rtol=1e-7)


def test_warmup_zero_lr_first_step_then_ramps():
  # lr(step 0) = 0: the first update leaves the parameters unchanged (as in the reference);
  # lr(step 1) = lr / warmup, and Adam's second update is lr_1 m_hat / (sqrt(v_hat) + eps).
  config = optim_config(warmup=4)
  optimizer = losses.get_optimizer(config)
  step = jax.jit(
    losses.get_step_fn(quadratic_loss, optimizer, 0.0, lr_schedule=losses.get_lr_schedule(config))
  )
  state = losses.init_train_state({"w": jnp.asarray(W0, jnp.float32)}, optimizer)
  data = batches(2)
  state, metrics = step(state, data[0], jax.random.PRNGKey(0))
  np.testing.assert_array_equal(state.params["w"], np.float32(W0))
  assert float(metrics["lr"]) == 0.0
  state, metrics = step(state, data[1], jax.random.PRNGKey(0))
  np.testing.assert_allclose(metrics["lr"], 0.1 / 4, rtol=1e-7)
  g0 = W0 - np.asarray(data[0]["image"], np.float64).mean(0)
  g1 = W0 - np.asarray(data[1]["image"], np.float64).mean(0)
  m_hat = (B1 * (1 - B1) * g0 + (1 - B1) * g1) / (1 - B1**2)
  v_hat = (B2 * (1 - B2) * g0**2 + (1 - B2) * g1**2) / (1 - B2**2)
  np.testing.assert_allclose(
    state.params["w"], W0 - 0.025 * m_hat / (np.sqrt(v_hat) + EPS), rtol=1e-6, atol=ADAM_ATOL
  )


@pytest.mark.parametrize("grad_clip", [1.0, -1.0])
def test_gradient_clipping_by_global_norm(grad_clip):
  # A gradient of global norm 10 over two leaves: clipped to norm 1 (g * 1 / 10) before Adam, so
  # Adam's first moment is (1 - beta1) g / 10; grad_clip < 0 leaves it unclipped. grad_norm reports
  # the norm before clipping.
  optimizer = losses.get_optimizer(optim_config(grad_clip=grad_clip))
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  g = {"a": jnp.array([6.0, 0.0]), "b": jnp.array([8.0])}
  loss_fn = lambda p, batch, rng: (sum(jnp.vdot(g[k], p[k]) for k in p), {})
  step = losses.get_step_fn(loss_fn, optimizer, 0.5)
  state, metrics = step(losses.init_train_state(params, optimizer), {}, jax.random.PRNGKey(0))
  scale = 0.1 if grad_clip > 0 else 1.0
  mu = optax.tree_utils.tree_get(state.opt_state, "mu")
  for k in g:
    np.testing.assert_allclose(mu[k], (1 - B1) * scale * g[k], rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], 10.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_weight_decay_is_decoupled(name):
  # AdamW (and "Adam" with weight_decay, like the reference's flax.optim.Adam):
  # w1 = w0 - lr (g / (|g| + eps) + wd w0).
  optimizer = losses.get_optimizer(optim_config(optimizer=name, weight_decay=0.1))
  state = losses.init_train_state({"w": jnp.asarray(W0, jnp.float32)}, optimizer)
  data = batches(1)[0]
  state, _ = losses.get_step_fn(quadratic_loss, optimizer, 0.0)(state, data, jax.random.PRNGKey(0))
  g = W0 - np.asarray(data["image"], np.float64).mean(0)
  np.testing.assert_allclose(
    state.params["w"], W0 - 0.1 * (g / (np.abs(g) + EPS) + 0.1 * W0), rtol=1e-6, atol=ADAM_ATOL
  )


def test_unknown_optimizer_names_the_field():
  with pytest.raises(ValueError, match=r"config\.optim\.optimizer.*adam"):
    losses.get_optimizer(optim_config(optimizer="Lion"))


def test_eval_step_uses_the_ema_params():
  optimizer = losses.get_optimizer(optim_config())
  state = losses.init_train_state({"w": jnp.asarray(W0, jnp.float32)}, optimizer)
  state = state.replace(ema_params={"w": jnp.zeros(3)})
  data = batches(1)[0]
  metrics = jax.jit(losses.get_eval_step_fn(quadratic_loss))(state, data, jax.random.PRNGKey(0))
  np.testing.assert_allclose(metrics["loss"], quadratic_loss({"w": jnp.zeros(3)}, data, None)[0])


def test_init_train_state_copies_params_into_the_ema():
  params = {"w": jnp.asarray(W0, jnp.float32)}
  state = losses.init_train_state(params, losses.get_optimizer(optim_config()))
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.ema_params["w"] is not params["w"]
  np.testing.assert_array_equal(state.ema_params["w"], params["w"])


@pytest.mark.parametrize("unroll", [True, False])
def test_multi_step_equals_sequential_steps(unroll):
  config = optim_config(warmup=2)
  optimizer = losses.get_optimizer(config)
  step = losses.get_step_fn(
    quadratic_loss, optimizer, 0.5, lr_schedule=losses.get_lr_schedule(config)
  )
  state0 = losses.init_train_state({"w": jnp.asarray(W0, jnp.float32)}, optimizer)
  data = batches(3)
  state, seq_losses = state0, []
  for batch in data:
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    seq_losses.append(float(metrics["loss"]))
  multi = jax.jit(losses.get_multi_step_fn(step, 3, unroll=unroll))
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *data)
  multi_state, metrics = multi(state0, stacked, jax.random.PRNGKey(0))
  assert metrics["loss"].shape == (3,) and int(multi_state.step) == 3
  np.testing.assert_allclose(metrics["loss"], seq_losses, rtol=1e-6)
  np.testing.assert_allclose(metrics["lr"], [0.0, 0.05, 0.1], rtol=1e-7)
  for a, b in zip(jax.tree.leaves(multi_state), jax.tree.leaves(state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  with pytest.raises(ValueError, match="n_jitted_steps"):
    multi(state0, jax.tree.map(lambda x: x[:2], stacked), jax.random.PRNGKey(0))


# --- Data parallelism on 8 virtual CPU devices (tests/conftest.py) -------------------------------

needs_8_devices = pytest.mark.skipif(
  jax.device_count() != 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


def mlp_regression_loss(params, batch, rng):
  """A deterministic nonlinear regression loss (the mean over the batch of squared errors)."""
  del rng
  hidden = jnp.tanh(batch["image"] @ params["W1"] + params["b1"])
  per_example = jnp.sum((hidden @ params["W2"] - batch["label"]) ** 2, axis=-1)
  return jnp.mean(per_example), {"loss": per_example}


@needs_8_devices
def test_data_parallel_step_equals_full_batch_step():
  # With equal shards, the pmean of per-device mean gradients is the full-batch mean gradient, so
  # two mapped steps give the single-device parameters up to float32 round-off (different
  # reduction order; Adam's g / sqrt(v) amplifies nothing at these gradient sizes).
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  params = {
    "W1": jax.random.normal(keys[0], (5, 16)) / 2,
    "b1": jnp.zeros(16),
    "W2": jax.random.normal(keys[1], (16, 2)) / 4,
  }
  data = [
    {
      "image": jax.random.normal(k, (64, 5)),
      "label": jax.random.normal(jax.random.fold_in(k, 1), (64, 2)),
    }
    for k in keys[2:4]
  ]
  config = optim_config(lr=1e-2, warmup=1, grad_clip=1.0)
  optimizer = losses.get_optimizer(config)
  schedule = losses.get_lr_schedule(config)
  single = jax.jit(losses.get_step_fn(mlp_regression_loss, optimizer, 0.9, lr_schedule=schedule))
  mapped = parallel.data_parallel(
    losses.get_step_fn(
      mlp_regression_loss, optimizer, 0.9, axis_name=parallel.AXIS, lr_schedule=schedule
    ),
    in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
    out_specs=(parallel.REPLICATED, parallel.REPLICATED),
  )
  state_single = state_mapped = losses.init_train_state(params, optimizer)
  for batch in data:
    state_single, metrics_single = single(state_single, batch, keys[4])
    state_mapped, metrics_mapped = mapped(state_mapped, batch, keys[4])
    for name in ("loss", "grad_norm", "lr"):
      np.testing.assert_allclose(metrics_mapped[name], metrics_single[name], rtol=1e-5)
  assert int(state_mapped.step) == 2
  for a, b in zip(jax.tree.leaves(state_mapped), jax.tree.leaves(state_single), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@needs_8_devices
def test_data_parallel_keys_are_folded_with_step_and_device():
  # loss = u * w with u ~ U(0, 1) from the step's key: the averaged gradient is the mean over
  # devices d of u(fold_in(fold_in(rng, step), d)), which Adam's first moment records exactly.
  loss_fn = lambda p, batch, rng: (jax.random.uniform(rng) * p["w"], {})
  optimizer = losses.get_optimizer(optim_config())
  mapped = parallel.data_parallel(
    losses.get_step_fn(loss_fn, optimizer, 0.0, axis_name=parallel.AXIS),
    in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
    out_specs=(parallel.REPLICATED, parallel.REPLICATED),
  )
  rng = jax.random.PRNGKey(3)
  state = losses.init_train_state({"w": jnp.ones(())}, optimizer)
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  state, _ = mapped(state, {"dummy": jnp.zeros((8, 1))}, rng)
  u = [jax.random.uniform(jax.random.fold_in(jax.random.fold_in(rng, 7), d)) for d in range(8)]
  np.testing.assert_allclose(
    optax.tree_utils.tree_get(state.opt_state, "mu")["w"], (1 - B1) * np.mean(u), rtol=1e-6
  )


def test_train_state_round_trips_through_orbax(tmp_path):
  # The state is a registered dataclass pytree: orbax's StandardSave / StandardRestore keep its type.
  optimizer = losses.get_optimizer(optim_config(warmup=10, grad_clip=1.0))
  state = losses.init_train_state({"w": jnp.asarray(W0, jnp.float32)}, optimizer)
  state, _ = losses.get_step_fn(quadratic_loss, optimizer, 0.9)(
    state, batches(1)[0], jax.random.PRNGKey(0)
  )
  manager = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(create=True))
  manager.save(1, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  fresh = losses.init_train_state({"w": jnp.zeros(3)}, optimizer)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
  restored = manager.restore(1, args=ocp.args.StandardRestore(abstract))
  manager.close()
  assert isinstance(restored, losses.TrainState)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)
