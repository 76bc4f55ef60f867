"""`evaluate --metric=bpd`: the teacher's variational bound in bits per dim.

The bound (`diffusion.likelihood.bpd`) of the workdir's base model on the
first `num_samples` examples of the data set's eval split, on the N-step grid
of the eval logSNR schedule with N the largest teacher step count of the
evaluation (`--teacher_steps`, default `config.eval.teacher_max_steps`).
Students have no likelihood of their own (deterministic samplers), so only
the teacher is scored. Writes WORKDIR/eval/bpd.json (process 0).
"""

import json
import time

from absl import logging
from etils import epath
import jax
import numpy as np

from diffusion_distillation import data as data_lib
from diffusion_distillation.diffusion import likelihood
from diffusion_distillation.evaluation.settings import EvalError
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.parallel import sharding

TERMS = ('bpd', 'prior', 'diffusion', 'decoder')


def _compile(model, mesh, num_steps: int):
  """(params, x, labels, rng) -> the bound's terms per example."""
  rep, split = sharding.replicated(mesh), sharding.batch_sharding(mesh)

  def terms(params, x, labels, rng):
    noise = lambda i: jax.random.normal(jax.random.fold_in(rng, i), x.shape)
    return likelihood.bpd(
        model.bind(params, labels), x, noise, num_steps=num_steps,
        logsnr_schedule_fn=model.logsnr_schedule('eval'),
        mean_type=model.mean_type, variance=model.variance)

  return jax.jit(terms, in_shardings=(rep, split, split, rep),
                 out_shardings=rep)


def _examples(config, num: int, workdir):
  """The first `num` images (in [-1, 1]) and labels of the eval split."""
  dataset = data_lib.from_config(config, workdir, write_index=False)
  batches = dataset.eval_batches(batch_size=min(num, 500))
  images, labels = [], []
  while sum(map(len, labels)) < num:
    batch = next(batches, None)
    if batch is None:
      break
    images.append(batch['image'])
    labels.append(batch['label'])
  images = np.concatenate(images)[:num]
  return (np.asarray(model_lib.normalize_images(images), np.float32),
          np.concatenate(labels)[:num].astype(np.int32))


def run_bpd(workdir, loaded, settings) -> dict:
  """Scores the teacher; returns (and writes) the terms averaged."""
  if not settings.teacher_steps:
    raise EvalError("metric 'bpd' needs a step count: --teacher_steps")
  t0 = time.time()
  num_steps = max(settings.teacher_steps)
  x, labels = _examples(loaded.config, settings.num_samples, workdir)
  params, mesh = loaded.teacher_params(), loaded.mesh
  fn = _compile(loaded.model, mesh, num_steps)
  key = jax.random.PRNGKey(settings.seed)
  out = sharding.map_batches(
      lambda k, batch: fn(params, *batch, jax.random.fold_in(key, k)),
      (x, labels), batch_size=settings.batch_size, mesh=mesh)
  result = {name: float(np.mean(out[name])) for name in TERMS}
  result.update(num_examples=len(x), num_steps=num_steps, split='eval',
                seed=settings.seed, seconds=round(time.time() - t0, 1))
  logging.info('teacher: %.4f bits/dim (prior %.4f, diffusion %.4f, decoder '
               '%.4f) on %d eval examples, %d steps', result['bpd'],
               result['prior'], result['diffusion'], result['decoder'],
               len(x), num_steps)
  if jax.process_index() == 0:
    path = epath.Path(workdir) / 'eval' / 'bpd.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f'teacher variational bound: {result["bpd"]:.4f} bits/dim '
          f'({num_steps} steps, {len(x)} eval examples) -> {path}',
          flush=True)
  return result
