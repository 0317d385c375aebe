"""What the two fixture writers share: the small networks and SDEs their cases start from.

tools/make_import_fixtures.py (score_sde_pytorch, in a venv with torch) and
tools/make_flax_fixtures.py (the original score_sde JAX code) build the reference networks of the
same small configs from these dictionaries, in the reference code's own config layout
(`config.model` fields; the SDE's name and arguments). Pure Python, so both environments import it.
"""

from __future__ import annotations

# Small NCSN++ / DDPM++ (each case overrides some of these). The SDEs have N = 1000 levels as in the
# released configs: score_sde_pytorch indexes its sigmas with the positional label even when
# scale_by_sigma is off, so continuous VP labels (999 t) need 1000 levels.
NCSNPP = dict(
  name="ncsnpp",
  nf=8,
  ch_mult=(1, 2),
  num_res_blocks=1,
  attn_resolutions=(8,),
  dropout=0.1,
  resamp_with_conv=True,
  conditional=True,
  fir=True,
  fir_kernel=(1, 3, 3, 1),
  skip_rescale=True,
  resblock_type="biggan",
  progressive="none",
  progressive_input="residual",
  progressive_combine="sum",
  attention_type="ddpm",
  embedding_type="fourier",
  init_scale=0.0,
  fourier_scale=16.0,
  conv_size=3,
  scale_by_sigma=True,
  nonlinearity="swish",
  normalization="GroupNorm",
)
VE = dict(name="vesde", sigma_min=0.01, sigma_max=50.0, N=1000)
VP = dict(name="vpsde", beta_min=0.1, beta_max=20.0, N=1000)
# NCSNv2 / NCSN condition on the level index, so N = config.model.num_scales: a few levels suffice.
VE_SMALL = dict(name="vesde", sigma_min=0.01, sigma_max=50.0, N=10)
REFINENET = dict(
  name="ncsnv2_64",
  nf=4,
  normalization="InstanceNorm++",
  nonlinearity="elu",
  interpolation="bilinear",
  scale_by_sigma=True,
)


def reference_model_fields(model: dict, sde: dict) -> dict:
  """`config.model` of the reference code: the network's fields, both SDEs' arguments (the
  references read them from config.model), `num_scales` = the SDE's N, and an EMA rate."""
  return {
    **model,
    "sigma_min": VE["sigma_min"],
    "sigma_max": VE["sigma_max"],
    "beta_min": VP["beta_min"],
    "beta_max": VP["beta_max"],
    "num_scales": sde["N"],
    "ema_rate": 0.999,
  }


def reference_sde(sde_lib, sde: dict):
  """The reference code's SDE object (its own `sde_lib` module) for `sde`."""
  if sde["name"] == "vesde":
    return sde_lib.VESDE(sigma_min=sde["sigma_min"], sigma_max=sde["sigma_max"], N=sde["N"])
  return sde_lib.VPSDE(beta_min=sde["beta_min"], beta_max=sde["beta_max"], N=sde["N"])
