"""Golden TRACT targets from apple/ml-tract's own code (run once, by hand).

Runs the target part of ml-tract's `TCDistillGoogleModel.train_op`
(tc_distill.py: the statements of its `with torch.no_grad():` block, taken
from the file's source as they are) and its `ModuleEMA` (lib/optim.py), on
closed-form "networks" (an affine function of z and tanh(logsnr / 8), one
for the teacher and one for the self-teacher, predicting x as ml-tract's
CIFAR-10 model does) and fixed draws (its `torch.randint` and
`torch.randn_like` return ours). Writes golden.npz beside this file, read by
tests/test_tract.py. Not collected by pytest; needs torch and a checkout of
github.com/apple/ml-tract:

    python3 -m venv /tmp/ref-tract && /tmp/ref-tract/bin/pip install \
        torch==2.13.0 numpy
    git clone https://github.com/apple/ml-tract /tmp/ml-tract
    /tmp/ref-tract/bin/python tests/data/tract/make_golden.py /tmp/ml-tract
"""

import ast
import importlib.util
import os
import sys
import types
import typing

import numpy as np
import torch

SCHEDULE = (64, 8, 1)  # ml-tract --time_schedule: phases 64 -> 8 -> 1
TIMESTEPS = 64  # ml-tract --timesteps
BATCH, SHAPE = 32, (4, 4, 3)  # per phase; images as NHWC
MOMENTUM, EMA_UPDATES = 0.5, 6  # ModuleEMA's, as tract.self_teacher_ema
NETS = {'teacher': (1.25, 0.4), 'self_teacher': (0.9, -0.3)}  # (a, b)


def reference_methods(source: str):
  """ml-tract's static methods and train_op's no-grad statements."""
  tree = ast.parse(source)
  cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and
             n.name == 'TCDistillGoogleModel')
  methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
  namespace = {'torch': torch, 'Callable': typing.Callable,
               'Optional': typing.Optional}
  for name in ('logsnr_schedule_cosine', 'predict_eps_from_x',
               'post_xt_x0', 'call_model'):
    exec(compile(ast.Module([methods[name]], []), 'tc_distill.py', 'exec'),
         namespace)
  no_grad = next(n for n in methods['train_op'].body if isinstance(n,
                                                                   ast.With))
  block = compile(ast.Module(no_grad.body, []), 'tc_distill.py', 'exec')
  return namespace, block


def network(a, b, bias):
  """x prediction = a z + b tanh(logsnr / 8) + bias (NCHW)."""
  return lambda z, logsnr: (a * z + b * torch.tanh(logsnr / 8).view(
      -1, 1, 1, 1) + bias)


def phase_target(namespace, block, phase, rng, bias):
  """ml-tract's target and its pieces for one batch of `phase`."""
  step = TIMESTEPS // SCHEDULE[phase + 1]
  semi_range = SCHEDULE[phase] // SCHEDULE[phase + 1]
  segments = rng.integers(1, 1 + TIMESTEPS // step, BATCH)
  offsets = rng.integers(0, semi_range, BATCH)
  x = rng.uniform(-1, 1, (BATCH,) + SHAPE)
  eps = rng.standard_normal((BATCH,) + SHAPE)
  to_torch = lambda v: torch.from_numpy(np.moveaxis(v, -1, 1))
  draws = iter([torch.from_numpy(segments), torch.from_numpy(offsets)])
  fake_torch = types.SimpleNamespace(
      randint=lambda *args, **kw: next(draws),
      randn_like=lambda v: to_torch(eps).to(v.dtype), sigmoid=torch.sigmoid)
  model = types.SimpleNamespace(
      time_schedule=SCHEDULE, timesteps=TIMESTEPS, predict_both=False,
      phase=phase, params=None, **{
          name: network(a, b, torch.from_numpy(np.moveaxis(bias[name], -1,
                                                          0)).float())
          for name, (a, b) in NETS.items()})
  for name in ('logsnr_schedule_cosine', 'post_xt_x0', 'call_model'):
    setattr(model, name, types.MethodType(namespace[name], model)
            if name != 'logsnr_schedule_cosine' else namespace[name])
  scope = {'self': model, 'torch': fake_torch, 'int': int, 'print': print,
           'x': to_torch(x).float(), 'y': None, 'device': lambda: 'cpu',
           'info': types.SimpleNamespace(progress=(phase + .5) /
                                         (len(SCHEDULE) - 1))}
  exec(block, scope)
  # The x of the chain's last step, clipped as post_xt_x0 clips it.
  last = scope['semi_index'] + scope['semi'] == scope['step']
  x_teacher = model.call_model(model.teacher, scope['xt0'], scope['logsnr'][0])
  x_self = model.call_model(model.self_teacher, scope['xt1'],
                            scope['logsnr'][1])
  x_last = torch.where(last.view(-1, 1, 1, 1), x_teacher, x_self).clip(-1, 1)
  nhwc = lambda v: np.moveaxis(v.numpy(), 1, -1)
  return {'k': segments - 1, 'j': offsets, 'x': x.astype(np.float32),
          'eps': eps.astype(np.float32), 'target': nhwc(scope['target']),
          'x_last': nhwc(x_last)}


def ema_decays(optim_path):
  """The weights of ModuleEMA's average after each update, as decays."""
  spec = importlib.util.spec_from_file_location('ml_tract_optim', optim_path)
  optim = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(optim)
  source = torch.nn.Linear(1, 1, bias=False)
  with torch.no_grad():
    source.weight.fill_(0.)  # the average starts at 0
  ema = optim.ModuleEMA(source, momentum=MOMENTUM)
  values = []
  for update in range(EMA_UPDATES):
    with torch.no_grad():
      source.weight.fill_(float(update + 1) ** 2)
    ema.update(source)
    values.append(float(ema.module.weight.detach()))
  return np.array(values)


def main(ml_tract: str):
  with open(os.path.join(ml_tract, 'tc_distill.py')) as f:
    namespace, block = reference_methods(f.read())
  rng = np.random.default_rng(0)
  bias = {name: rng.uniform(-0.3, 0.3, SHAPE) for name in NETS}
  out = {f'bias_{name}': bias[name].astype(np.float32) for name in NETS}
  out.update({f'net_{name}': np.array(NETS[name]) for name in NETS})
  for phase in range(len(SCHEDULE) - 1):
    for key, value in phase_target(namespace, block, phase, rng,
                                   bias).items():
      out[f'phase{phase}_{key}'] = value
  out['schedule'] = np.array(SCHEDULE)
  out['ema'] = ema_decays(os.path.join(ml_tract, 'lib', 'optim.py'))
  np.savez(os.path.join(os.path.dirname(__file__), 'golden.npz'), **out)


if __name__ == '__main__':
  main(sys.argv[1])
