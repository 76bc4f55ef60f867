r"""Distil a teacher from a diffusers folder, e.g. google/ddpm-cifar10-32.

The DDPM release (eps-prediction, linear betas, 1000 discrete steps), once
downloaded (e.g. `huggingface-cli download google/ddpm-cifar10-32
--local-dir ddpm-cifar10-32`: `unet/` and `scheduler/` in it), distilled from
1024 DDIM steps to 1 on CIFAR-10:

    python -m diffusion_distillation.main --config=configs/diffusers_distill.py \
        --config.distillation.teacher_checkpoint_path=ddpm-cifar10-32 \
        --workdir=workdirs/ddpm_cifar10_distill

`model.architecture='diffusers'`: the network is the folder's UNet (a port
of diffusers' `UNet2DModel`), on the folder's discrete noise schedule; the
students predict v (`model.mean_type`) from the teacher's weights, starting
as exactly the teacher (docs/diffusers.md). The data set is `dataset.name`:
CIFAR-10 for this teacher; another teacher's images are another data set
(`--config.dataset.name=image_folder --config.dataset.path=...
--config.dataset.image_size=...`). As configs/cifar10_distill.py otherwise:
50k updates per halving at learning rate 5e-5, scored afterwards by
`python -m diffusion_distillation.evaluate` (FID).
"""

from diffusion_distillation import config as config_lib
from diffusion_distillation.configs import common


def get_config():
  """CIFAR-10, an imported teacher, its 1024-step DDIM distilled to 1 step."""
  config = config_lib.default_config()
  config.dataset.name = 'cifar10'
  config.dataset.args.randflip = True
  config.model.architecture = 'diffusers'
  config.model.mean_type = 'v'
  config.train.batch_size = 128
  config.eval.update(run_after_training=False, metric='inception',
                     num_samples=50_000)
  return common.distill_from(config, teacher_checkpoint_path='',
                             start_num_steps=1024, learning_rate=5e-5)
