"""Golden losses of the reference's consistency distillation (run once).

Runs `get_consistency_loss_fn` of openai/consistency_models_cifar10
(jcm/losses.py) and the `get_denoiser_fn` / `get_distiller_fn` it calls
(jcm/models/utils.py), their source text read from a local snapshot of that
repository (the `fetch` tool's bare git directory, REFERENCE_GIT below) and
executed unchanged with current jax. The reference's pins (jax 0.3, haiku,
flax 0.6) do not install with Python 3.11, so what it imports is replaced by
the least that its lines need: `hk.PRNGSequence` by a key sequence whose
draws are recorded here, `mutils.get_model_fn` by closed-form networks
F(in_x, cond_t) = tanh(a * in_x + b * cond_t) (the teacher's with its own
a, b), and `sde_lib.KVESDE` by its fields. Writes golden.npz next to this
script: the data, the draws (grid indices and noise) and the loss of each
example (the reference's masked mean with a one-hot mask), for the Heun and
the Euler (DDIM) solver, the l2 distance, uniform weighting.

    python tests/data/consistency/make_golden.py
"""

import os
import subprocess
import types

import jax
import jax.numpy as jnp
import numpy as np

REFERENCE_GIT = ('/work/.mirror/openai+consistency_models_cifar10/repo')
TEACHER = (0.7, 0.3)
STUDENT = (0.9, 0.2)
TARGET = (0.8, 0.25)
SHAPE = (8, 4, 4, 3)
N = 18


def reference_source(path):
  return subprocess.run(['git', f'--git-dir={REFERENCE_GIT}', 'show',
                         f'HEAD:{path}'], check=True, capture_output=True,
                        text=True).stdout


def function_source(text, name):
  """The top-level `def name` of a module's text, up to the next one."""
  start = text.index(f'def {name}(')
  end = text.find('\ndef ', start + 1)
  return text[start:end if end > 0 else None]


def batch_mul(a, b):
  return jax.vmap(lambda a, b: a * b)(a, b)


class KVESDE:
  def __init__(self, t_min=0.002, t_max=80.0, N=1000, rho=7.0,
               data_std=0.5):
    self.t_min, self.t_max, self.N = t_min, t_max, N
    self.rho, self.data_std = rho, data_std


def get_model_fn(model, params, states, train=False):
  del model, train
  a, b = params
  return lambda x, labels, rng=None: (
      jnp.tanh(a * x + b * batch_mul(jnp.ones_like(x), labels)), states)


class KeySequence:
  """hk.PRNGSequence's role: one fresh key per next(), recorded."""

  def __init__(self, key):
    self.keys = list(jax.random.split(key, 3))

  def __next__(self):
    return self.keys.pop(0)


def reference_namespace():
  utils = reference_source('jcm/models/utils.py')
  mutils = types.SimpleNamespace(get_model_fn=get_model_fn)
  space = dict(jax=jax, jnp=jnp, batch_mul=batch_mul,
               get_model_fn=get_model_fn,
               sde_lib=types.SimpleNamespace(KVESDE=KVESDE), mutils=mutils)
  for name in ('get_denoiser_fn', 'get_distiller_fn'):
    exec(function_source(utils, name), space)  # pylint: disable=exec-used
    setattr(mutils, name, space[name])
  space['hk'] = types.SimpleNamespace(PRNGSequence=KeySequence)
  exec(function_source(reference_source('jcm/losses.py'),  # pylint: disable=exec-used
                       'get_consistency_loss_fn'), space)
  return space


def main():
  space = reference_namespace()
  sde = KVESDE(N=N)
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(jax.random.PRNGKey(1), SHAPE, minval=-1., maxval=1.)
  keys = jax.random.split(key, 3)
  indices = jax.random.randint(keys[0], (SHAPE[0],), 0, N - 1)
  noise = jax.random.normal(keys[1], SHAPE)
  out = dict(x=np.asarray(x), indices=np.asarray(indices),
             noise=np.asarray(noise), teacher=np.array(TEACHER),
             student=np.array(STUDENT), target=np.array(TARGET),
             num_scales=N, sigma_min=sde.t_min, sigma_max=sde.t_max)
  for solver in ('heun', 'euler'):
    loss_fn = space['get_consistency_loss_fn'](
        sde, None, TEACHER, {}, None, train=False, loss_norm='l2',
        weighting='uniform', stopgrad=True, solver=solver)
    losses = []
    for row in range(SHAPE[0]):
      mask = jnp.zeros((SHAPE[0],)).at[row].set(1.)
      loss, _ = loss_fn(key, STUDENT, {}, {'image': x, 'mask': mask},
                        target_params=TARGET)
      losses.append(float(loss))
    out[f'loss_{solver}'] = np.array(losses, np.float64)
  np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'golden.npz'), **out)
  print({k: v for k, v in out.items() if k.startswith('loss')})


if __name__ == '__main__':
  main()
