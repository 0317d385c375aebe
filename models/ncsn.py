"""NCSN (Song & Ermon 2019): the noise-conditional RefineNet of the original score network.

The architecture of Song & Ermon 2019 (App. B.1): the RefineNet of models/ncsnv2.py at its
shallowest depth (four encoder stages, one halving, dilations 2 and 4 in the last two; RefineBlocks
of widths 2 nf, 2 nf, nf, nf), with two changes that make it noise-conditional:

- every normalisation, in the residual blocks and inside the RefineBlocks (residual conv units,
  fusion and pooling), is conditional InstanceNorm++: its gamma, alpha and beta are rows of an
  embedding indexed by the noise level i (Eq. 6 of that paper);
- chained residual pooling averages instead of taking the maximum (the paper's App. B.1).

The network models s(x, sigma_i) directly (config.model.scale_by_sigma = False in the released
configs). Its input c_noise is the integer index i of the noise level, counted from sigma_max
(`sde_lib.VESDE.c_noise(t, continuous=False)`), and config.model.num_scales must equal
config.sde.N. Parameter names and biases follow the authors' code (ermongroup/ncsn), whose port in
score_sde_pytorch does not build; for ve/ncsn/cifar10 (nf = 128, 10 levels, 32x32x3) this network
has 30,117,635 parameters (tests/test_ncsnv2.py recounts them from the authors' module list).
"""

from __future__ import annotations

from typing import Any, ClassVar

from models.ncsnv2 import RefineNet
from models.utils import register_model


@register_model("ncsn")
class NCSN(RefineNet):
  """NCSN: the RefineNet with conditional InstanceNorm++ everywhere and average pooling.

  Defaults are ve/ncsn/cifar10's; attributes as `RefineNet`.
  """

  conditional: bool = True
  pool: str = "avg"
  scale_by_sigma: bool = False
  num_scales: int = 10
  sigma_max: float = 1.0

  config_name: ClassVar[str] = "ncsn"

  @classmethod
  def from_config(cls, config: Any) -> NCSN:
    """Builds NCSN from config.model (nf, normalization, nonlinearity, interpolation, num_scales,
    scale_by_sigma), config.data and config.sde.

    Raises:
      ValueError naming the config field (see `RefineNet.fields_from_config`).
    """
    return cls(**cls.fields_from_config(config, "64", conditional=True))
