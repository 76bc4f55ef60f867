"""The training-free solvers (diffusion/solvers.py) and step grids (grids.py).

Two kinds of evidence:

* Equal to the reference implementations. tests/data/solvers/golden.npz
  holds, in float64, what each reference produced on one model function
  (the Gaussian-data posterior mean, scaled by 1.5 and clipped to [-1, 1]
  so that clipping acts) from one z_1, on our cosine schedule and grids:
  DPM-Solver++(2M, 3M) from LuChengTHU/dpm-solver's `dpm_solver_pytorch.py`
  (its JAX file has no `lower_order_final`), UniPC-bh2 from wl-zhao/UniPC's
  `uni_pc.py`, iPNDM from zju-pi/diff-sampler's `solvers.py`, Heun from
  NVlabs/edm's `edm_sampler`. `tests/data/solvers/make_golden.py` made it,
  once, in a scratch venv with torch (its docstring gives the commits and
  what was patched: only the grids and t_end, never the maths). Compared
  here in float64 (`jax.enable_x64`) at 1e-6: the one difference left is t
  = j / N, which our grids compute in float32.
* Their order of convergence on a problem with an exact answer: data from a
  Gaussian, whose probability-flow ODE has a closed-form solution. The
  error's slope against the step count (8-64 steps, log-log) is each
  solver's order, and a wrong coefficient lowers it (the mutation tests).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation.config import choices
from diffusion_distillation.diffusion import grids
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.diffusion import schedules
from diffusion_distillation.diffusion import solvers

GOLDEN = os.path.join(os.path.dirname(__file__), 'data', 'solvers',
                      'golden.npz')
COSINE = schedules.get_logsnr_schedule('cosine', logsnr_min=-20.,
                                       logsnr_max=20.)


def _gaussian_denoiser(mu, s, scale=1., clip=False):
  """E[x | z] for data x ~ N(mu, s^2) per dimension (times `scale`)."""

  def model_fn(z, logsnr):
    logsnr = logsnr[:, None]
    alpha = jnp.sqrt(jax.nn.sigmoid(logsnr))
    sigma = jnp.sqrt(jax.nn.sigmoid(-logsnr))
    x = scale * (mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) *
                 (z - alpha * mu))
    return jnp.clip(x, -1., 1.) if clip else x

  return model_fn


@functools.lru_cache(maxsize=None)
def _compiled(model_fn, sampler, schedule, clip_x):
  """One program per sampler: the step count is data."""
  return jax.jit(lambda z, n: sampling.sample_loop(
      model_fn, z, num_steps=n, logsnr_schedule_fn=schedule, mean_type='x',
      sampler=sampler, clip_x=clip_x))


def _run(model_fn, z, sampler, schedule, num_steps, clip_x=False):
  return np.asarray(_compiled(model_fn, sampler, schedule, clip_x)(
      jnp.asarray(z), jnp.int32(num_steps)))


_GOLDEN_MODEL = _gaussian_denoiser(*[np.load(GOLDEN)[k] for k in ('mu', 's')],
                                   scale=1.5, clip=True)


def _golden_cases():
  golden = np.load(GOLDEN)
  return sorted({tuple(k.split('/')) for k in golden.files
                 if k.count('/') == 2 and k.split('/')[0] in choices.SOLVERS})


def test_golden_holds_every_solver_and_grid():
  cases = _golden_cases()
  assert {c[0] for c in cases} == set(choices.SOLVERS)
  assert {c[1] for c in cases} == set(choices.GRIDS)


@pytest.mark.parametrize('solver', choices.SOLVERS)
def test_solvers_equal_their_reference_implementations(solver):
  golden = np.load(GOLDEN)
  with jax.enable_x64(True):
    model_fn = _GOLDEN_MODEL
    for name, grid, steps in _golden_cases():
      if name != solver:
        continue
      got = _run(model_fn, golden['z1'], f'{solver}:{grid}', COSINE,
                 int(steps), clip_x=True)
      np.testing.assert_allclose(got, golden[f'{solver}/{grid}/{steps}'],
                                 atol=1e-6, err_msg=f'{solver}:{grid} {steps}')
      assert (solvers.network_evaluations(solver, int(steps)) ==
              golden[f'nfe/{solver}/{grid}/{steps}'])


@pytest.mark.parametrize('grid', choices.GRIDS)
def test_grids_equal_the_references(grid):
  """DPM-Solver's 'logSNR' time steps and EDM's karras sigmas, as the
  references computed them (float32 here: 1e-3 near t = 1, where tan is
  ill-conditioned)."""
  golden = np.load(GOLDEN)
  for steps in (1, 2, 3, 8, 16):
    ours = [grids.logsnr_at(grid, steps - k, steps, COSINE)
            for k in range(steps + 1)]
    np.testing.assert_allclose(ours, golden[f'grid/{grid}/{steps}'],
                               atol=2e-3)


# --- Order of convergence ---------------------------------------------------

# A narrower schedule than the default's [-20, 20], so that 8-64 steps reach
# the asymptotic regime (at [-20, 20] the first step alone spans 15 logSNR).
NARROW = schedules.get_logsnr_schedule('cosine', logsnr_min=-6.,
                                       logsnr_max=6.)
MU, S = np.linspace(-0.5, 0.5, 6), np.linspace(0.5, 1., 6)
# sampler -> the least slope it must show: its order less a margin for the
# pre-asymptotic 8 steps (measured: DDIM 0.96; DPM-Solver++(2M) 1.65; Heun
# 2.0; DPM-Solver++(3M) 2.75 and UniPC 2.85 on their logSNR grid). iPNDM's
# fixed Adams-Bashforth weights assume equal steps in sigma / alpha, which
# no grid here has: it measures 2.51 on PD's grid, 1.92 held at order 2.
MIN_SLOPES = {'ddim': 0.8, 'dpmpp_2m': 1.5, 'heun:karras': 1.8,
              'dpmpp_3m:logsnr_uniform': 2.5, 'unipc:logsnr_uniform': 2.5,
              'ipndm': 2.3}

def _exact(z1, schedule):
  """z at t = 0 on the exact ODE path from z1 at t = 1: in EDM's variables
  (y = z / alpha, sigma_e = sigma / alpha), y - mu scales with
  sqrt(s^2 + sigma_e^2)."""
  logsnr_1, logsnr_0 = float(schedule(1.)), float(schedule(0.))
  alpha = lambda logsnr: np.sqrt(1. / (1. + np.exp(-logsnr)))
  sigma_e = lambda logsnr: np.exp(-logsnr / 2.)
  y1 = z1 / alpha(logsnr_1)
  y0 = MU + (y1 - MU) * np.sqrt((S**2 + sigma_e(logsnr_0)**2) /
                                (S**2 + sigma_e(logsnr_1)**2))
  return alpha(logsnr_0) * y0, logsnr_0


def _measured_order(sampler):
  with jax.enable_x64(True):
    z1 = np.random.default_rng(0).standard_normal((4, 6))
    exact, logsnr_0 = _exact(z1, NARROW)
    model_fn = _gaussian_denoiser(MU, S)  # new: compiled afresh (mutations)
    if sampler == 'ddim':  # returns its last x prediction, not z at t = 0
      exact = np.asarray(model_fn(jnp.asarray(exact),
                                  jnp.full((4,), logsnr_0)))
    steps = np.array([8, 16, 32, 64])
    errors = [np.abs(_run(model_fn, z1, sampler, NARROW, n) - exact).max()
              for n in steps]
  return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize('sampler', sorted(MIN_SLOPES))
def test_error_falls_at_the_solvers_order(sampler):
  order = _measured_order(sampler)
  assert MIN_SLOPES[sampler] < order < MIN_SLOPES[sampler] + 2, order


def _with_wrong_corrector(coefficients):
  def wrong(g, k, order):
    predictor, corrector, new_weight = coefficients(g, k, order)
    return predictor, corrector, 1.1 * new_weight
  return wrong


@pytest.mark.parametrize('sampler, name, wrong', [
    ('ipndm', '_IPNDM_WEIGHTS', ((1.,), (3 / 2, -1 / 2), (3 / 2, -1 / 2, 0.),
                                 (3 / 2, -1 / 2, 0., 0.))),
    ('unipc:logsnr_uniform', '_unipc_coefficients',
     _with_wrong_corrector(solvers._unipc_coefficients)),  # pylint: disable=protected-access
])
def test_a_wrong_coefficient_lowers_the_measured_order(sampler, name, wrong,
                                                       monkeypatch):
  """The order test can fail: iPNDM held at second order, UniPC's corrector
  weight of the new x off by 10%."""
  monkeypatch.setattr(solvers, name, wrong)
  assert _measured_order(sampler) < MIN_SLOPES[sampler]


# --- Network evaluations and names ------------------------------------------


def test_heun_costs_two_evaluations_per_step_but_the_last():
  assert [solvers.network_evaluations('heun', n) for n in (1, 2, 8)] == [
      1, 3, 15]
  assert solvers.network_evaluations('dpmpp_3m', 8) == 8
  # A guided teacher evaluates the network twice (with and without labels).
  assert sampling.network_evaluations('heun:karras', 4) == 7
  assert sampling.network_evaluations('heun:karras', 4,
                                      guided_teacher=True) == 14
  assert sampling.network_evaluations('ddim', 4, guided_teacher=True) == 8


@pytest.mark.parametrize('bad', ['euler', 'unipc:', 'unipc:cosine',
                                 'karras', 'ddim:karras:x'])
def test_an_unknown_sampler_or_grid_is_one_line(bad):
  with pytest.raises(ValueError, match=r"sampler: must be one of .*grid"):
    sampling.sample_loop(lambda z, logsnr: z, jnp.zeros((1, 2)),
                         num_steps=2, logsnr_schedule_fn=COSINE,
                         mean_type='x', sampler=bad)
