"""Makes the diffusers golden data of tests/test_diffusers_import.py.

Run once, outside the project, in a scratch venv with the reference:

    python3 -m venv /tmp/ref-diffusers
    /tmp/ref-diffusers/bin/pip install torch==2.13.0 diffusers safetensors numpy
    /tmp/ref-diffusers/bin/python tests/data/diffusers/make_golden.py

(made with diffusers 0.42.1, torch 2.13.0 CPU). It writes, next to itself:

* `ddpm_like/` and `adm_like/`: tiny random-weight `UNet2DModel`s saved with
  `save_pretrained` (`unet/`) plus a `DDIMScheduler` config (`scheduler/`).
  ddpm_like has the block types and time embedding of google/ddpm-cifar10-32
  (DownBlock2D / AttnDownBlock2D, default time shift, flip_sin_to_cos=False,
  freq_shift=1, downsample_padding=0), 8x8x1 so that it fits the digits.
  adm_like is ADM-style: scale_shift norm, attention_head_dim heads, class
  embeddings, learned variance (twice the channels out), cosine betas.
* `<name>/golden.npz`: the network's outputs on fixed inputs and (fractional)
  timesteps, and a 10-step DDIM trajectory of `DDIMScheduler` (eta 0).
* `betas.npz`: the betas of every `beta_schedule` name diffusers has.
"""

import os

from diffusers import DDIMScheduler
from diffusers import DDPMScheduler
from diffusers import UNet2DModel
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = {
    'ddpm_like': dict(
        unet=dict(sample_size=8, in_channels=1, out_channels=1,
                  block_out_channels=(8, 16), layers_per_block=1,
                  down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                  up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
                  norm_num_groups=4, norm_eps=1e-6, attention_head_dim=None,
                  flip_sin_to_cos=False, freq_shift=1, downsample_padding=0),
        scheduler=dict(num_train_timesteps=1000, beta_schedule='linear',
                       beta_start=1e-4, beta_end=0.02),
        classes=None),
    'adm_like': dict(
        unet=dict(sample_size=8, in_channels=3, out_channels=6,
                  block_out_channels=(8, 16), layers_per_block=2,
                  down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                  up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
                  norm_num_groups=8, attention_head_dim=4,
                  resnet_time_scale_shift='scale_shift', num_class_embeds=3),
        scheduler=dict(num_train_timesteps=1000,
                       beta_schedule='squaredcos_cap_v2'),
        classes=3),
}
# Our DDIM on the imported teacher is diffusers' DDIM at these settings: the
# grid t = i / N is the 'trailing' spacing, and the last step returns the x
# prediction (alpha = 1).
DDIM = dict(clip_sample=False, set_alpha_to_one=True,
            timestep_spacing='trailing', prediction_type='epsilon')
TIMESTEPS = np.array([0., 17.5, 421., 999.], np.float32)


def perturbed_unet(config):
  """Random weights, every parameter moved off its init (norm scales 1,
  biases 0 would hide a misplaced one)."""
  torch.manual_seed(0)
  unet = UNet2DModel(**config).eval()
  with torch.no_grad():
    for p in unet.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return unet


def ddim_trajectory(unet, scheduler, z, labels):
  """z after each of 10 DDIM steps (the last one is the sample)."""
  scheduler.set_timesteps(10)
  out = [z.numpy()]
  with torch.no_grad():
    for k in scheduler.timesteps:
      pred = unet(z, k, class_labels=labels).sample[:, :z.shape[1]]
      z = scheduler.step(pred, k, z, eta=0.).prev_sample
      out.append(z.numpy())
  return np.stack(out), scheduler.timesteps.numpy()


def make(name, spec):
  folder = os.path.join(HERE, name)
  unet = perturbed_unet(spec['unet'])
  unet.save_pretrained(os.path.join(folder, 'unet'))
  scheduler = DDIMScheduler(**spec['scheduler'], **DDIM)
  scheduler.save_pretrained(os.path.join(folder, 'scheduler'))
  gen = torch.Generator().manual_seed(1)
  shape = (len(TIMESTEPS), spec['unet']['in_channels'], 8, 8)
  x = torch.randn(shape, generator=gen)
  labels = (torch.arange(len(TIMESTEPS)) % spec['classes']
            if spec['classes'] else None)
  with torch.no_grad():
    out = unet(x, torch.from_numpy(TIMESTEPS), class_labels=labels).sample
  z = torch.randn((2, *shape[1:]), generator=gen)
  traj_labels = labels[:2] if labels is not None else None
  trajectory, steps = ddim_trajectory(unet, scheduler, z, traj_labels)
  extra = {} if labels is None else dict(labels=labels.numpy(),
                                         trajectory_labels=traj_labels.numpy())
  # NCHW (torch) -> NHWC (ours)
  nhwc = lambda a: np.moveaxis(np.asarray(a), -3, -1)
  np.savez(os.path.join(folder, 'golden.npz'), x=nhwc(x), timesteps=TIMESTEPS,
           out=nhwc(out), trajectory=nhwc(trajectory), ddim_timesteps=steps,
           alphas_cumprod=scheduler.alphas_cumprod.numpy(), **extra)


def main():
  for name, spec in MODELS.items():
    make(name, spec)
  betas = {}
  for schedule in ('linear', 'scaled_linear', 'squaredcos_cap_v2'):
    betas[schedule] = DDPMScheduler(num_train_timesteps=1000,
                                    beta_schedule=schedule).betas.numpy()
  np.savez(os.path.join(HERE, 'betas.npz'), **betas)


if __name__ == '__main__':
  main()
