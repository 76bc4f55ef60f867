"""Makes golden.npz: diffusers' own DDIM on our exported tiny models.

Run from the repository root, in two steps (two Python environments):

    PYTHONPATH=$PWD .venv/bin/python tests/data/diffusers_export/make_golden.py export
    /tmp/ref-export/bin/python tests/data/diffusers_export/make_golden.py diffusers

`export` (our environment) builds each variant's tiny model with random
parameters (`helpers.random_params`), writes it with our exporter to
/tmp/diffusers_export_golden/<variant>/ together with the initial noise,
labels and our own sampler's images. `diffusers` (a scratch venv:
`pip install torch==2.13.0 diffusers safetensors numpy`; made with torch
2.13.0, diffusers 0.42.1) loads every folder with `UNet2DModel.from_pretrained`
and `DDIMScheduler.from_pretrained`, runs diffusers' DDIM from the same noise
and writes golden.npz beside this script: per variant the noise, labels,
diffusers' images, the first step's UNet output, the scheduler's timesteps,
a digest of the exported weights and both configs (JSON), and prints the
largest difference to our images. Not collected by pytest; nothing of ours
imports torch or diffusers.
"""

import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCRATCH = '/tmp/diffusers_export_golden'
BATCH = 4
# name: (config overrides on tests/helpers.tiny_config, classes, num_steps)
VARIANTS = {
    'v_conv': (dict(model__args__ch_mult=(1, 2), model__args__emb_ch=48,
                    model__args__attn_resolutions=(4,)), 1, 4),
    'eps_resblock_classes': (dict(
        model__args__ch_mult=(1, 2), model__args__resblock_resample=True,
        model__args__attn_resolutions=(8, 4), model__args__num_heads=None,
        model__args__head_dim=32, model__mean_type='eps'), 10, 2),
    'x_linear_guided': (dict(
        model__args__ch_mult=(1, 1), model__args__attn_resolutions=(8,),
        model__args__logsnr_input_type='linear', model__mean_type='x',
        model__cond_drop_prob=0.1), 10, 8),
}


# Our embedding evaluated on the timestep grid: sin and cos of arguments up
# to about 1e3 round differently between XLA compilations (1.2e-4 between
# XLA with and without its optimizations), so the digest leaves it out.
COMPUTED = ('time_proj.weight',)


def weights_digest(state: dict) -> str:
  """sha256 over the sorted names, shapes and float32 bytes, but for the
  computed timestep table."""
  digest = hashlib.sha256()
  for name in sorted(set(state) - set(COMPUTED)):
    value = np.ascontiguousarray(state[name], np.float32)
    digest.update(f'{name}{value.shape}'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def export():
  """Our side: the folders, the noise and our sampler's images."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
  import jax  # pylint: disable=import-outside-toplevel
  import helpers  # pylint: disable=import-outside-toplevel
  from diffusion_distillation.models import diffusers_export  # pylint: disable=import-outside-toplevel
  from diffusion_distillation import files  # pylint: disable=import-outside-toplevel
  from diffusion_distillation.diffusion import sampling  # pylint: disable=import-outside-toplevel
  from diffusion_distillation.models import diffusion_model  # pylint: disable=import-outside-toplevel

  for seed, (name, (overrides, classes, steps)) in enumerate(VARIANTS.items()):
    config = helpers.tiny_config(**overrides)
    model = diffusion_model.DiffusionModel.from_config(config, (8, 8, 1),
                                                       classes)
    params = helpers.random_params(model, seed)
    out = os.path.join(SCRATCH, name)
    for path, data in diffusers_export.folder(
        model, params, num_steps=steps, distilled=True).items():
      files.write_bytes(os.path.join(out, path), data)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(seed),
                                         (BATCH, 8, 8, 1)))
    labels = np.arange(BATCH, dtype=np.int32) % classes
    ours = sampling.sample_loop(
        model.bind(params, labels), noise, num_steps=steps,
        logsnr_schedule_fn=model.logsnr_schedule('eval'),
        mean_type=model.mean_type, clip_x=model.clip_x)
    np.savez(os.path.join(out, 'inputs.npz'), noise=noise, labels=labels,
             ours=np.asarray(ours), num_steps=steps,
             extra_class=model.network.extra_class, clip=model.clip_x)
    print(name, 'exported to', out)


def run_diffusers(folder, inputs):
  """diffusers' DDIM from `inputs['noise']` (NHWC); returns NHWC images,
  the first UNet output and the timesteps."""
  import diffusers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder='unet')
  scheduler = diffusers.DDIMScheduler.from_pretrained(folder,
                                                      subfolder='scheduler')
  scheduler.set_timesteps(int(inputs['num_steps']))
  x = torch.from_numpy(np.transpose(inputs['noise'], (0, 3, 1, 2)).copy())
  labels = None
  if unet.config.num_class_embeds:
    labels = torch.from_numpy(inputs['labels'].astype(np.int64) +
                              int(inputs['extra_class']))
  first = None
  with torch.no_grad():
    for t in scheduler.timesteps:
      out = unet(x, t, class_labels=labels).sample
      first = out if first is None else first
      x = scheduler.step(out, t, x, use_clipped_model_output=bool(
          inputs['clip'])).prev_sample
  nhwc = lambda a: np.transpose(a.numpy(), (0, 2, 3, 1))
  return nhwc(x), nhwc(first), scheduler.timesteps.numpy(), unet.state_dict()


def make_golden():
  """diffusers' side: golden.npz from the exported folders."""
  golden = {}
  for name in VARIANTS:
    folder = os.path.join(SCRATCH, name)
    inputs = dict(np.load(os.path.join(folder, 'inputs.npz')))
    images, first, timesteps, state = run_diffusers(folder, inputs)
    diff = np.abs(images - inputs['ours']).max()
    print(f'{name}: timesteps {timesteps.tolist()}, max |diffusers - ours| '
          f'= {diff:.3g} (images in [-1, 1])')
    state = {k: v.numpy() for k, v in state.items()}
    configs = {sub: json.load(open(os.path.join(folder, sub, file)))
               for sub, file in (('unet', 'config.json'),
                                 ('scheduler', 'scheduler_config.json'))}
    golden.update({
        f'{name}/noise': inputs['noise'], f'{name}/labels': inputs['labels'],
        f'{name}/images': images, f'{name}/first_output': first,
        f'{name}/timesteps': timesteps,
        f'{name}/weights_digest': np.array(weights_digest(state)),
        f'{name}/configs': np.array(json.dumps(configs, sort_keys=True)),
    })
  np.savez_compressed(os.path.join(HERE, 'golden.npz'), **golden)


if __name__ == '__main__':
  {'export': export, 'diffusers': make_golden}[sys.argv[1]]()
