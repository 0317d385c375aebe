"""A small NCSN++ on scikit-learn's 8x8 digits with the VP SDE in continuous time: the embedded
default, sized to give mostly recognisable digits after about 10 minutes on 2 CPU cores.

Field names and meanings are those of vp/cifar10_ncsnpp_continuous (models/ncsnpp.py); the network
is cut down for 8x8x1 images: resolutions 8 and 4, attention at 4x4 (1,032,673 parameters).

Measured here (2 idle cores): 5.5 train steps/s on batches of 128 with 5 steps per call;
`python main.py --workdir runs/digits` ran its 2,000 steps in 539 s wall, compilation and the
snapshots at steps 1,000 and 2,000 included (README.md shows the grid of step 2,000). In an earlier
run of this network, after 1,974 steps 91% of 64 samples (EMA weights, Euler-Maruyama with 1,000
steps) were classified with confidence > 0.8 by an SVM fitted on the training digits, against 85%
of the real test digits; with EMA rate 0.999 it was 81%.
"""

from configs.default_digits_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.model.update(
    name="ncsnpp",
    scale_by_sigma=False,
    ema_rate=0.995,  # see default_digits_configs
    # Blocks.
    normalization="GroupNorm",
    nonlinearity="swish",
    nf=32,
    ch_mult=(1, 2),
    num_res_blocks=2,
    attn_resolutions=(4,),
    resamp_with_conv=True,
    conditional=True,
    dropout=0.1,
    # Resampling and skip connections.
    fir=True,
    fir_kernel=[1, 3, 3, 1],
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_input="residual",
    progressive_combine="sum",
    # Attention and noise-level embedding (positional: the VP convention of embedding 999 t).
    attention_type="ddpm",
    init_scale=0.0,
    embedding_type="positional",
    fourier_scale=16,
    conv_size=3,
  )
  return config
