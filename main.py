"""Command line: train or sample score-based models.

  python main.py --workdir runs/digits                      # trains the embedded digits default
  python main.py --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ncsnpp \
      --config.training.batch_size=64
  python main.py --multihost --coordinator_address=10.0.0.1:1234 --num_processes=2 \
      --process_id=0 ...                                    # one per host (or auto-detected)
"""

import logging as pylogging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

import run_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  "configs/digits/digits_ncsnpp_continuous.py",
  "Training configuration.",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, samples.")
flags.DEFINE_enum("mode", "train", sorted(run_lib.MODES), "What to run.")
flags.DEFINE_string("eval_folder", "eval", "Folder under the workdir for evaluation results.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (or JAX_COORDINATOR_ADDRESS)."
)
flags.DEFINE_integer(
  "num_processes", None, "Number of processes (None: detected from the cluster)."
)
flags.DEFINE_integer("process_id", None, "This process's index (None: detected from the cluster).")
flags.DEFINE_string("checkpoint", None, "Released checkpoint (.pth or Flax) for --mode import.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  # orbax logs every file it writes at INFO: keep its warnings only.
  logging.get_absl_handler().addFilter(
    lambda record: record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname
  )
  if FLAGS.multihost:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info(
    "process %d / %d, %d local devices of %d (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  run_lib.MODES[FLAGS.mode](
    FLAGS.config, FLAGS.workdir, eval_folder=FLAGS.eval_folder, checkpoint=FLAGS.checkpoint
  )


if __name__ == "__main__":
  app.run(main)
