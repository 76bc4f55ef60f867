"""Networks and what turns them into samplers.

`unet.UNet` is the official architecture; `diffusion_model.DiffusionModel`
binds it to a parameterization and schedules; `generation.generate` samples a
model in batches sharded over all devices.
"""

from diffusion_distillation.models.unet import UNet

__all__ = [
    'UNet',
]
