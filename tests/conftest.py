"""Test-wide set-up: 8 virtual CPU devices for data-parallel tests (set before jax is imported)."""

import os

if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
