"""Forward and forward+backward throughput (images/s) of the reduced DDPM++ on this machine.

The network is vp/cifar10_ddpmpp_continuous reduced to nf=32, ch_mult=(1, 2, 2),
num_res_blocks=1, attn_resolutions=(16,) (1,260,547 parameters; issue 4 and ENVIRONMENT.md),
on 32x32x3 images in batches of 16, jitted. "forward" is one evaluation (train=False, what the
samplers run); "fwd+bwd" is the gradient of a continuous VP denoising loss with respect to the
parameters, dropout on (the network part of a training step, without the optimizer).

Each is compiled three ways: XLA's default CPU flags, YNN fusion of reductions
(`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`) and YNN fusion off (empty
value). Variants are timed in interleaved rounds (the machine may be shared) and reported as the
median, with ratios to the default, and the process CPU time per batch (summed over threads: less
sensitive to other processes than the wall-clock rate, which is what the images/s are). Parameters are random (cost does not depend on their values).

  python benchmarks/model_throughput.py [--batch 16] [--iters 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.vp import cifar10_ddpmpp_continuous  # noqa: E402
from models import utils as model_utils  # noqa: E402

_YNN = "xla_cpu_experimental_ynn_fusion_type"
VARIANTS = {
  "default": None,
  "ynn_reduce": {_YNN: "LIBRARY_FUSION_TYPE_REDUCE"},
  "ynn_off": {_YNN: ""},
}


def reduced_config():
  config = cifar10_ddpmpp_continuous.get_config()
  config.model.nf = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (16,)
  return config


def random_params(model, x, c_noise):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, c_noise, train=False))["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes)


def build(model, compiler_options):
  """Jitted forward(params, x, c_noise) and fwd+bwd(params, x, z, t, key) for one flag set."""

  def forward(params, x, c_noise):
    return model.apply({"params": params}, x, c_noise, train=False)

  def loss(params, x0, z, t, key):
    # Continuous VP DSM with the noise-prediction parameterisation (Song et al. 2021, Eq. 7).
    log_mean = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    mean, std = jnp.exp(log_mean), jnp.sqrt(-jnp.expm1(2.0 * log_mean))
    x = mean[:, None, None, None] * x0 + std[:, None, None, None] * z
    output = model.apply({"params": params}, x, 999.0 * t, train=True, rngs={"dropout": key})
    return jnp.mean(jnp.sum((output - z) ** 2, axis=(1, 2, 3)))

  kwargs = {} if compiler_options is None else {"compiler_options": compiler_options}
  return jax.jit(forward, **kwargs), jax.jit(jax.grad(loss), **kwargs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--iters", type=int, default=5, help="calls per timed round")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
  args = parser.parse_args()

  config = reduced_config()
  model = model_utils.get_model(config)
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.uniform(-1, 1, (args.batch, size, size, channels)), jnp.float32)
  z = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
  t = jnp.asarray(rng.uniform(1e-5, 1.0, args.batch), jnp.float32)
  params = random_params(model, x0, 999.0 * t)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  key = jax.random.key(2)

  device = jax.devices()[0]
  print(
    f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} CPUs, load average "
    f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; jax {jax.__version__}"
  )
  print(f"reduced DDPM++: {n_params:,} parameters, batch {args.batch} of {size}x{size}x{channels}")

  variants = {name: build(model, options) for name, options in VARIANTS.items()}
  calls = {
    "forward": lambda fns: fns[0](params, x0, 999.0 * t),
    "fwd+bwd": lambda fns: fns[1](params, x0, z, t, key),
  }
  compile_s = {}
  for name, fns in variants.items():
    for kind, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call(fns))
      compile_s[name, kind] = time.perf_counter() - start

  times = {(name, kind): [] for name in variants for kind in calls}
  cpu_times = {(name, kind): [] for name in variants for kind in calls}
  for _ in range(args.rounds):
    for kind, call in calls.items():
      for name, fns in variants.items():
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.iters):
          jax.block_until_ready(call(fns))
        times[name, kind].append((time.perf_counter() - start) / args.iters)
        cpu_times[name, kind].append((time.process_time() - cpu_start) / args.iters)

  for kind in calls:
    base = args.batch / np.median(times["default", kind])
    for name in variants:
      rate = args.batch / np.median(times[name, kind])
      spread = args.batch / np.max(times[name, kind]), args.batch / np.min(times[name, kind])
      cpu_s = np.median(cpu_times[name, kind])
      print(
        f"{kind:>8} {name:>11}: {rate:7.1f} images/s  x{rate / base:4.2f} vs default  "
        f"(rounds {spread[0]:.1f}-{spread[1]:.1f}; {cpu_s * 1e3:.0f} CPU-ms per batch; "
        f"first call {compile_s[name, kind]:.1f} s)"
      )


if __name__ == "__main__":
  main()
