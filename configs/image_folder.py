r"""Your own images: a folder of PNG / JPEG / WebP files; teacher, distillation.

Trains a teacher on the images below `dataset.path` (read recursively, central
square crop resized to `dataset.image_size`), then distills its 1024-step DDIM
sampler to a 4-step student, halving the steps every 20k updates:

    python -m diffusion_distillation.main --config=configs/image_folder.py \
        --config.dataset.path=/data/my_images --config.dataset.image_size=64 \
        --workdir=workdirs/my_images

then `python -m diffusion_distillation.evaluate --workdir=workdirs/my_images`
for the FID of every student against the folder's held-out images.

The data: `dataset.eval_fraction` (10%) of the images are held out (a fixed
choice) for the FID statistics, which are cached in the workdir. The folder's
index (file names, sizes, times) is built once, checking that every file
decodes, and cached in the workdir as image_folder_index.json; a rerun on a
changed folder is refused (a new folder is a new workdir). Class labels:
`--config.dataset.labels_from_subfolders=true
--config.dataset.args.class_conditional=true` (one sub-folder per class).
Unreadable files stop the run naming the file, or are skipped with
`--config.dataset.skip_unreadable=true`. Grey-scale and palette images become
RGB, transparent ones are put on white.

The network: `model.args.ch_mult` and `attn_resolutions` follow the image
size as the paper's configs do (config/choices.py `shape_for_size`): 32:
CIFAR-10's (1, 1, 1) with attention at 16 and 8; 64: ImageNet 64's
(1, 2, 3, 4) at 32, 16, 8; 128: LSUN's (1, 2, 4, 6, 8) at 32, 16, 8; other
sizes the nearest of these with a level more per doubling (256: (1, 1, 2, 4,
6, 8)) or fewer per halving (16: (1, 1)). Override either, e.g.
`--config.model.args.ch_mult=1,2,2`. The width (ch=128, 2 ResNet blocks per
level) is smaller than the paper's, for one GPU; widen it for large folders.

The same config reads any TFDS image data set by name:
configs/tfds.py.
"""

from ml_collections import config_dict

from diffusion_distillation import config as config_lib


def get_config():
  """A v-prediction teacher in continuous time, distilled 1024 -> 4 steps."""
  config = config_lib.default_config()
  config.dataset.update(name='image_folder', image_size=64)
  config.dataset.args.randflip = True
  config.model.args.update(
      ch=128, emb_ch=512, ch_mult=(),  # and attention: by image size
      attn_resolutions=config_dict.placeholder(tuple),
      num_res_blocks=2, num_heads=None, head_dim=64, dropout=0.1,
      resblock_resample=True)
  config.model.eval_sampling_num_steps = 1024
  config.train.update(
      num_train_steps=200_000, batch_size=128, learning_rate=2e-4,
      learning_rate_warmup_steps=1000, adam_beta2=0.999, ema_decay=0.9999,
      substeps=10, checkpoint_every_steps=5000, checkpoint_every_secs=900)
  config.eval.update(metric='inception', num_samples=10_000,
                     run_after_training=False)
  return config_lib.add_section(config, 'distillation', end_num_steps=4,
                                steps_per_iter=20_000, learning_rate=1e-4)
