r"""Your own images on a CPU: a first look in minutes, before a GPU run.

    python -m diffusion_distillation.main --config=configs/image_folder_cpu.py \
        --config.dataset.path=/data/my_images --workdir=workdirs/my_images_cpu

configs/image_folder.py is sized for a GPU (a 64x64, 11.6M-parameter network
at batch 128 for 200k updates): on a CPU not one update finishes in many
minutes. This one is the embedded digits run (the schema's small defaults:
ch 32, one ResNet block per level, 1500 teacher updates, one update per
compiled call) at batch 32 on the folder's images at 16x16, distilled
128 -> 4 steps at 150 updates per halving, and scored offline by the
teacher's likelihood:

    python -m diffusion_distillation.evaluate --workdir=workdirs/my_images_cpu

(`--metric=inception` gives the FID of every student once the Inception
weights are in the cache: see docs/evaluating.md.) Every field can be overridden,
e.g. `--config.dataset.image_size=32` for detail at 4x the time.
"""

from diffusion_distillation import config as config_lib


def get_config():
  """The digits run's network and schedule on an image folder at 16x16."""
  config = config_lib.default_config()
  config.dataset.update(name='image_folder', image_size=16)
  config.dataset.args.randflip = True
  config.train.batch_size = 32
  config.eval.update(metric='bpd', run_after_training=False)
  return config_lib.add_section(config, 'distillation', end_num_steps=4,
                                steps_per_iter=150, learning_rate=1e-3)
