"""Controllable generation: linear inverse problems and class-conditional sampling with any score.

Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021
(arXiv:2011.13456), Sec. 5 and App. I.

Linear observations (App. I.2, I.3). An observation is y = M U x: U an orthogonal linear map of one
example (the identity in pixel space, the colour decoupling transform, a per-block orthonormal basis)
and M a 0/1 mask in U-space (1 = observed coordinate). The PC sampler with replacement runs the
unconditional predictor and corrector and, before each of them at time t, replaces the observed
coordinates of U x by the observation noised to time t,

  U x <- M (mean_t(U y) + std_t z) + (1 - M) U x,   (mean_t, std_t) = sde.marginal_prob(U y, t),

with fresh noise z per example and step; the output has its observed coordinates set to U y exactly
(exactly for a mask in pixel space; to float round-off through a transform). Because the kernel
x_t = a(t) x0 + std(t) z of the SDE has isotropic noise, U x_t = a(t) U x0 + std(t) U z with U z again
standard normal: noising in U-space is noising in pixel space. Inpainting (`inpainting`),
colourisation (`colorization`) and super-resolution by block averaging (`superresolution`) are
instances of one sampler, `get_linear_observation_sampler`.

Replacement is an approximation: it uses the joint score at a freshly noised copy of the observed
coordinates instead of the score of p_t(x_unobserved | y). It is exact when observed and unobserved
coordinates are independent, and close for a strong corrector at small t; tests/test_controllable.py
checks its exact law for Gaussian data and states the gap to the true conditional.

Class-conditional sampling (App. I.1). With a noise-conditional classifier p_t(y | x),

  score(x, t | y) = score(x, t) + scale grad_x log p_t(y | x),

used by any predictor and corrector (`get_conditional_sampler`); `scale` = 1 is Bayes' rule, larger
values sharpen towards the class (classifier guidance). The classifier is trained on data perturbed
by the forward SDE at t ~ U(eps, T) (`classifier_loss_fn`, `classifier_step_fn`).

Everything takes a `score_fn(params, x, t, ...)` and, for classifiers, a `logits_fn(params, x, t)`
(a network wrapped at the edge, controllable_lib.py), and an SDE with Gaussian marginals. Samplers
are `sample(key, params, <observation>, first_index=0) -> (x, nfe)` with per-example keys as in
sampling.py, so `data_parallel` gives the one-device samples with the same key.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import parallel
import sampling
from utils import batch_mul, check_eps

LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
"""logits_fn(params, x [B, ...], t [B]) -> logits [B, num_classes] of p_t(y | x)."""

Transform = Callable[[jax.Array], jax.Array]
"""An orthogonal map of a batch [B, ...] -> [B, ...'] (and its inverse, its transpose)."""


# --- Observations. -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearObservation:
  """An orthogonal transform U of images and its inverse U^T; the mask lives in U-space.

  Attributes:
    name: what the observation is (used in error messages).
    forward: x [B, ...] -> U x [B, ...'] (orthogonal).
    inverse: U x -> x, the transpose of `forward`.
  """

  name: str
  forward: Transform
  inverse: Transform

  def observe(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """The observed coordinates M U x (zeros elsewhere) [B, ...']."""
    return jnp.where(mask, self.forward(x), 0.0)

  def impose(self, x: jax.Array, u_y: jax.Array, mask: jax.Array) -> jax.Array:
    """x with its observed coordinates in U-space replaced by those of `u_y` [B, ...']."""
    return self.inverse(jnp.where(mask, u_y, self.forward(x)))


def _identity(x: jax.Array) -> jax.Array:
  return x


def inpainting() -> LinearObservation:
  """Inpainting: the mask is in pixel space (U = I); the known pixels are returned bit for bit."""
  return LinearObservation("inpainting", _identity, _identity)


def colour_decoupling_matrix(dtype: Any = np.float32) -> np.ndarray:
  """An orthogonal 3x3 Q whose first row is (1, 1, 1) / sqrt(3): u = Q rgb, rgb = Q^T u.

  Channel 0 of u is sqrt(3) x the grey (mean) value; channels 1 and 2 span the colour plane
  (the Helmert contrasts (1, -1, 0) / sqrt(2) and (1, 1, -2) / sqrt(6)).
  """
  q = np.array(
    [
      [1.0, 1.0, 1.0],
      [1.0, -1.0, 0.0],
      [1.0, 1.0, -2.0],
    ]
  )
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  return q.astype(dtype)


def colorization() -> LinearObservation:
  """Colourisation: U decouples RGB into sqrt(3) x grey and two colour channels (App. I.3)."""

  def forward(x):
    if x.shape[-1] != 3:
      raise ValueError(f"Colourisation needs RGB images [B, H, W, 3]; got shape {tuple(x.shape)}.")
    return jnp.einsum("ij,...j->...i", jnp.asarray(colour_decoupling_matrix(x.dtype)), x)

  def inverse(u):
    return jnp.einsum("ij,...i->...j", jnp.asarray(colour_decoupling_matrix(u.dtype)), u)

  return LinearObservation("colorization", forward, inverse)


def colorization_mask(shape: tuple[int, ...]) -> jax.Array:
  """The U-space mask of colourisation for images of `shape` [B, H, W, 3]: the grey channel."""
  return jnp.zeros(shape, bool).at[..., 0].set(True)


def colorization_data(grey: jax.Array) -> jax.Array:
  """The RGB image [B, H, W, 3] whose grey (channel mean) is `grey` [B, H, W, 1] and colour zero."""
  grey = jnp.asarray(grey)
  if grey.ndim != 4 or grey.shape[-1] != 1:
    raise ValueError(
      f"A grey image for colourisation is [B, H, W, 1] (one channel); got shape {tuple(grey.shape)}."
    )
  return jnp.repeat(grey, 3, axis=-1)


def block_basis(factor: int, dtype: Any = np.float32) -> np.ndarray:
  """An orthogonal [k^2, k^2] matrix (k = factor) whose first column is constant, 1 / k.

  Coordinate 0 of a block in this basis is k x the block mean; the other k^2 - 1 span the
  zero-mean patterns of the block.
  """
  n = factor * factor
  a = np.eye(n)
  a[:, 0] = 1.0
  q, _ = np.linalg.qr(a)
  q *= np.sign(q[0, 0])
  return q.astype(dtype)


def superresolution(factor: int) -> LinearObservation:
  """Super-resolution from block means: per k x k block and channel, the orthonormal `block_basis`.

  U-space is [B, H / k, W / k, C, k^2]; coordinate 0 is k x the block mean (the low-resolution
  pixel), observed with `superresolution_mask`.
  """
  factor = int(factor)
  if factor < 1:
    raise ValueError(f"The super-resolution factor must be a positive integer; got {factor}.")

  def forward(x):
    b, h, w, c = x.shape
    if h % factor or w % factor:
      raise ValueError(
        f"Images of shape {tuple(x.shape)} do not split into {factor}x{factor} blocks."
      )
    blocks = x.reshape(b, h // factor, factor, w // factor, factor, c)
    blocks = blocks.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // factor, w // factor, c, -1)
    return blocks @ jnp.asarray(block_basis(factor, x.dtype))

  def inverse(u):
    b, hk, wk, c, _ = u.shape
    blocks = u @ jnp.asarray(block_basis(factor, u.dtype)).T
    blocks = blocks.reshape(b, hk, wk, c, factor, factor).transpose(0, 1, 4, 2, 5, 3)
    return blocks.reshape(b, hk * factor, wk * factor, c)

  return LinearObservation(f"superresolution x{factor}", forward, inverse)


def superresolution_mask(shape: tuple[int, ...], factor: int) -> jax.Array:
  """The U-space mask [B, H / k, W / k, C, k^2] for images of `shape` [B, H, W, C]: block means."""
  b, h, w, c = shape
  return jnp.zeros((b, h // factor, w // factor, c, factor * factor), bool).at[..., 0].set(True)


def superresolution_data(lowres: jax.Array, factor: int) -> jax.Array:
  """The image [B, H, W, C] made of k x k blocks equal to `lowres` [B, H / k, W / k, C]."""
  return jnp.repeat(jnp.repeat(jnp.asarray(lowres), factor, axis=1), factor, axis=2)


def downsample(x: jax.Array, factor: int) -> jax.Array:
  """Block means of `x` [B, H, W, C] over k x k blocks -> [B, H / k, W / k, C]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


# --- Checks. -------------------------------------------------------------------------------------


def check_gaussian_marginals(sde, shape: tuple[int, ...], what: str) -> None:
  """Raises a ValueError naming the SDE if it has no Gaussian perturbation kernel (marginal_prob)."""
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  t = jax.ShapeDtypeStruct(tuple(shape[:1]), jnp.float32)
  try:
    jax.eval_shape(sde.marginal_prob, x, t)
  except NotImplementedError as error:
    raise ValueError(
      f"{what} noises the observation with the SDE's Gaussian perturbation kernel, but "
      f"{type(sde).__name__} has none (its marginal_prob raises NotImplementedError): {error}"
    ) from error


def _check_observation(observation, shape, y, mask):
  u_shape = jax.eval_shape(observation.forward, jax.ShapeDtypeStruct(shape, jnp.float32)).shape
  if tuple(y.shape) != tuple(shape):
    raise ValueError(
      f"{observation.name}: the observed image y has shape {tuple(y.shape)}; the sampler was "
      f"built for images of shape {tuple(shape)}."
    )
  if tuple(mask.shape) != tuple(u_shape):
    raise ValueError(
      f"{observation.name}: the mask has shape {tuple(mask.shape)}; it must match the "
      f"{'image' if u_shape == tuple(shape) else 'transformed image'} shape {tuple(u_shape)}."
    )


# --- The PC sampler with replacement. ------------------------------------------------------------


def get_linear_observation_sampler(
  sde,
  score_fn: sampling.ScoreFn,
  shape: tuple[int, ...],
  observation: LinearObservation,
  predictor: type[sampling.Predictor],
  corrector: type[sampling.Corrector],
  inverse_scaler: Callable[[jax.Array], jax.Array],
  snr: float,
  n_steps: int = 1,
  probability_flow: bool = False,
  noise_removal: bool = True,
  eps: float = 1e-3,
  timesteps: Callable[..., jax.Array] = sampling.linear_timesteps,
) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """The PC sampler conditioned on a linear observation by replacement (App. I.2, I.3).

  At each time t_i of `timesteps(T, eps, N)`: replace the observed coordinates by the observation
  noised to t_i, corrector update (skipped, with its replacement, for a corrector without score
  evaluations), replace again with fresh noise, predictor update from t_i. The output has its
  observed coordinates equal to the observation.

  Args:
    sde: the forward SDE; needs a Gaussian perturbation kernel (marginal_prob).
    score_fn: score_fn(params, x, t, *, train=False, rng=None).
    shape: one call's batch shape [B, ...].
    observation: the transform U (`inpainting()`, `colorization()`, `superresolution(k)`, ...).
    predictor, corrector, inverse_scaler, snr, n_steps, probability_flow, noise_removal, eps,
      timesteps: as for `sampling.get_pc_sampler`.

  Returns:
    `sample(key, params, y, mask, first_index=0) -> (x [B, ...], nfe)`, jit-able: y [B, ...] is an
    image in the model's data space whose observed coordinates M U y are the observation (e.g. the
    original image for inpainting, `colorization_data(grey)`), mask [B, ...'] is boolean in U-space
    (True = observed). Example i draws from `fold_in(key, first_index + i)`.
  """
  shape = sampling._check_shape(shape)
  check_eps(eps, sde.T, "eps")
  check_gaussian_marginals(sde, shape, observation.name)
  N = sde.N

  def build(score):
    return predictor(sde, score, probability_flow), corrector(sde, score, snr, n_steps)

  # Fail now on a bad predictor / corrector combination, as the unconditional sampler does.
  probe_predictor, probe_corrector = build(lambda x, t: jnp.zeros_like(x))
  x_spec = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
  t_spec = jax.ShapeDtypeStruct(shape[:1], x_spec.dtype)
  jax.eval_shape(probe_predictor.update, sampling._abstract_keys(shape[0]), x_spec, t_spec)
  use_corrector = probe_corrector.nfe > 0

  def sample(key, params, y, mask, first_index=0):
    y = jnp.asarray(y)
    mask = jnp.asarray(mask).astype(bool)
    _check_observation(observation, shape, y, mask)
    predictor_, corrector_ = build(functools.partial(score_fn, params))
    keys = sampling.example_keys(key, shape[0], first_index)
    prior_keys, step_keys = sampling.split(keys)
    x = sampling.prior_sample(sde, prior_keys, shape)
    u_y = observation.forward(y.astype(x.dtype))
    times = timesteps(sde.T, eps, N, x.dtype)

    def replace(key, x, t):
      mean, std = sde.marginal_prob(u_y, t)
      u_t = mean + batch_mul(std, sampling.normal(key, u_y))
      return observation.impose(x, u_t, mask)

    def body(i, state):
      x, _ = state
      t = jnp.full((shape[0],), times[i], x.dtype)
      k_replace_c, k_corrector, k_replace_p, k_predictor = sampling.split(
        sampling.fold_in(step_keys, i), 4
      )
      if use_corrector:
        x = replace(k_replace_c, x, t)
        x, _ = corrector_.update(k_corrector, x, t)
      x = replace(k_replace_p, x, t)
      return predictor_.update(k_predictor, x, t)

    x, x_mean = jax.lax.fori_loop(0, N, body, (x, x))
    x = observation.impose(x_mean if noise_removal else x, u_y, mask)
    nfe = N * (predictor_.nfe + corrector_.nfe)
    return inverse_scaler(x), jnp.asarray(nfe, jnp.int32)

  return sample


def data_parallel_observation_sampler(sample, per_device_batch: int):
  """`sample(key, params, y, mask) -> (x, nfe)` over every device, y and mask split over them.

  Device d draws examples d * per_device_batch onwards, so the result equals the one-device run
  with the same key (the Langevin step size averages over all devices, as in sampling.py).
  """

  def per_device(key, params, y, mask):
    first_index = jax.lax.axis_index(parallel.AXIS) * per_device_batch
    with sampling.batch_axis(parallel.AXIS):
      x, nfe = sample(key, params, y, mask, first_index)
    return x, jax.lax.pmax(nfe, parallel.AXIS)

  return parallel.data_parallel(
    per_device,
    in_specs=(parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED, parallel.SHARDED),
    out_specs=(parallel.SHARDED, parallel.REPLICATED),
  )


# --- Class-conditional sampling. -----------------------------------------------------------------


def classifier_log_prob_grad(
  logits_fn: LogitsFn, params: Any, x: jax.Array, t: jax.Array, labels: jax.Array
) -> jax.Array:
  """grad_x log p_t(labels | x) [B, ...] for a classifier without interaction between examples."""

  def total_log_prob(x):
    log_probs = jax.nn.log_softmax(logits_fn(params, x, t), axis=-1)
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

  return jax.grad(total_log_prob)(x)


def guided_score_fn(score_fn: sampling.ScoreFn, logits_fn: LogitsFn, scale: float):
  """The class-conditional score score(x, t) + scale grad_x log p_t(y | x) (App. I.1).

  Returns:
    `score_fn(params, x, t, **kwargs)` with params = ((score_params, classifier_params), labels [B]).
  """

  def conditional_score_fn(params, x, t, **kwargs):
    (score_params, classifier_params), labels = params
    score = score_fn(score_params, x, t, **kwargs)
    grad = classifier_log_prob_grad(logits_fn, classifier_params, x, t, labels)
    return score + scale * grad.astype(score.dtype)

  return conditional_score_fn


def check_labels(labels: Any, batch_size: int, num_classes: int) -> None:
  """Raises a ValueError unless labels are integers [batch_size] in 0 .. num_classes - 1.

  Values are checked when they are concrete (not inside a trace).
  """
  labels_shape = tuple(np.shape(labels))
  if labels_shape != (batch_size,):
    raise ValueError(f"Class labels must be shaped [{batch_size}]; got shape {labels_shape}.")
  if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
    raise ValueError(f"Class labels must be integers; got dtype {jnp.asarray(labels).dtype}.")
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.asarray(labels)
  bad = values[(values < 0) | (values >= num_classes)]
  if bad.size:
    raise ValueError(
      f"Class labels {sorted(set(bad.tolist()))} are outside the classifier's range "
      f"0 .. {num_classes - 1} (num_classes = {num_classes})."
    )


def get_conditional_sampler(
  sde,
  score_fn: sampling.ScoreFn,
  logits_fn: LogitsFn,
  shape: tuple[int, ...],
  num_classes: int,
  predictor: type[sampling.Predictor],
  corrector: type[sampling.Corrector],
  inverse_scaler: Callable[[jax.Array], jax.Array],
  snr: float,
  scale: float = 1.0,
  n_steps: int = 1,
  probability_flow: bool = False,
  noise_removal: bool = True,
  eps: float = 1e-3,
  timesteps: Callable[..., jax.Array] = sampling.linear_timesteps,
):
  """The PC sampler on the class-conditional score (App. I.1), any predictor x corrector.

  Args:
    logits_fn: logits_fn(classifier_params, x, t) -> [B, num_classes], a noise-conditional
      classifier of p_t(y | x).
    num_classes: the classifier's number of classes (labels are checked against it).
    scale: the guidance scale s of score + s grad log p_t(y | x).
    others: as for `sampling.get_pc_sampler`.

  Returns:
    `sample(key, params, labels, first_index=0) -> (x [B, ...], nfe)` with params =
    (score_params, classifier_params) and labels [B] integers; per-example keys as in sampling.py.
    nfe counts score evaluations (each also one classifier forward and backward pass).
  """
  shape = sampling._check_shape(shape)
  pc_sample = sampling.get_pc_sampler(
    sde,
    guided_score_fn(score_fn, logits_fn, float(scale)),
    shape,
    predictor,
    corrector,
    inverse_scaler,
    snr,
    n_steps,
    probability_flow,
    noise_removal,
    eps,
    timesteps,
  )

  def sample(key, params, labels, first_index=0):
    check_labels(labels, shape[0], num_classes)
    return pc_sample(key, (params, jnp.asarray(labels)), first_index)

  return sample


def data_parallel_conditional_sampler(sample, per_device_batch: int):
  """`sample(key, params, labels) -> (x, nfe)` over every device, labels split over them."""

  def per_device(key, params, labels):
    first_index = jax.lax.axis_index(parallel.AXIS) * per_device_batch
    with sampling.batch_axis(parallel.AXIS):
      x, nfe = sample(key, params, labels, first_index)
    return x, jax.lax.pmax(nfe, parallel.AXIS)

  return parallel.data_parallel(
    per_device,
    in_specs=(parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED),
    out_specs=(parallel.SHARDED, parallel.REPLICATED),
  )


# --- The noise-conditional classifier. -----------------------------------------------------------


def classifier_loss_fn(sde, logits_fn: LogitsFn, eps: float = 1e-5):
  """Cross-entropy of a noise-conditional classifier on perturbed data (App. I.1):

  L = E_{t ~ U(eps, T), x0, y, z} [-log p_t(y | a(t) x0 + std(t) z)].

  Returns:
    `loss_fn(params, batch, key) -> (loss, {"accuracy": ...})`, batch {"image" [B, ...],
    "label" [B]}; jit-able.
  """
  check_eps(eps, sde.T, "eps")
  check_gaussian_marginals(sde, (1, 1), "Training a noise-conditional classifier")

  def loss_fn(params, batch, key):
    x0, labels = batch["image"], batch["label"]
    t_key, z_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), x0.dtype, eps, sde.T)
    mean, std = sde.marginal_prob(x0, t)
    x = mean + batch_mul(std, jax.random.normal(z_key, x0.shape, x0.dtype))
    logits = logits_fn(params, x, t)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"accuracy": accuracy}

  return loss_fn


def classifier_step_fn(
  loss_fn, optimizer: optax.GradientTransformation, axis_name: str | None = None
):
  """One optimiser step: `step(params, opt_state, batch, key) -> (params, opt_state, metrics)`.

  Under a mapped `axis_name` the gradients and metrics are averaged over its devices, and the
  device index is folded into the key.
  """

  def step(params, opt_state, batch, key):
    if axis_name is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
    metrics = {"loss": loss, **aux}
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return step


def classifier_accuracy(
  logits_fn: LogitsFn, params: Any, key: jax.Array, sde, x0: jax.Array, labels: jax.Array, t: float
) -> jax.Array:
  """Accuracy of the classifier on x0 [B, ...] perturbed to the fixed time t."""
  vec_t = jnp.full((x0.shape[0],), t, x0.dtype)
  mean, std = sde.marginal_prob(x0, vec_t)
  x = mean + batch_mul(std, jax.random.normal(key, x0.shape, x0.dtype))
  return jnp.mean(jnp.argmax(logits_fn(params, x, vec_t), axis=-1) == labels)
