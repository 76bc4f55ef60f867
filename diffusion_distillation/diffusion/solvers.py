"""Training-free ODE solvers for a teacher: the baselines distillation must beat.

DPM-Solver++(2M) and (3M) (Lu et al., 2022), UniPC-bh2 (Zhao et al., 2023),
iPNDM (Zhang & Chen, 2022) and EDM's Heun (Karras et al., 2022), each
written for this process: any logSNR schedule, the x / eps / v / both
predictions through `process.interpret_output`, x clipped as DDIM clips it.
They integrate the probability-flow ODE over the N steps of a grid
(grids.py) from point N (t = 1) to point 0 (t = 0, the schedule's
logsnr_max) and return z there.

Names follow the papers: lambda = logsnr / 2 is DPM-Solver's half log-SNR,
h = lambda_s - lambda_t a step's length; EDM's variables are
sigma / alpha = exp(-lambda) and z / alpha. Every step is linear in z and in
the stored model outputs (x predictions for DPM-Solver++ and UniPC, eps for
iPNDM and Heun), so a step computes a few scalar coefficients from the grid
and makes one weighted sum of images. Orders rise over the first steps as
history arrives and, as in DPM-Solver's and UniPC's samplers
(`lower_order_final`), fall over the last ones. Each step costs one network
evaluation, except that Heun's steps cost two and its last one (an Euler
step, as EDM's) one: 2N - 1.

Checked against the reference implementations (golden arrays in
tests/data/solvers/) and for their order of convergence (tests/
test_solvers.py).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_distillation.diffusion import grids
from diffusion_distillation.diffusion import process

# Adams-Bashforth weights of iPNDM at orders 1-4, newest eps first.
_IPNDM_WEIGHTS = ((1.,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12),
                  (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def network_evaluations(solver: str, num_steps: int) -> int:
  """Network evaluations of `num_steps` steps of `solver`."""
  return 2 * num_steps - 1 if solver == 'heun' else num_steps


class _Grid:
  """Scalars of grid point k = 0 (t = 1) ... N (t = 0); points before the
  start (k < 0, history not yet there) read as point 0."""

  def __init__(self, grid: str, num_steps, logsnr_schedule_fn):
    self.grid, self.num_steps = grid, num_steps
    self.schedule = logsnr_schedule_fn

  def logsnr(self, k):
    return grids.logsnr_at(self.grid, self.num_steps - jnp.maximum(k, 0),
                           self.num_steps, self.schedule)

  def lam(self, k):
    return 0.5 * self.logsnr(k)

  def alpha_ratio(self, k):
    """alpha at k + 1 over alpha at k."""
    return jnp.exp(0.5 * (jax.nn.log_sigmoid(self.logsnr(k + 1)) -
                          jax.nn.log_sigmoid(self.logsnr(k))))

  def sigma_ratio(self, k):
    """sigma at k + 1 over sigma at k."""
    return jnp.exp(0.5 * (jax.nn.log_sigmoid(-self.logsnr(k + 1)) -
                          jax.nn.log_sigmoid(-self.logsnr(k))))

  def alpha(self, k):
    return process.alpha_sigma(self.logsnr(k))[0]

  def sigma(self, k):
    return process.alpha_sigma(self.logsnr(k))[1]


def _order(k, num_steps, top: int, final_below: int):
  """The order of step k: warm-up (k + 1 outputs stored so far) and, with
  fewer than `final_below` steps, lower orders over the last steps
  (`lower_order_final`: step k may use no more than N - k)."""
  order = jnp.minimum(top, k + 1)
  return jnp.where(num_steps < final_below,
                   jnp.minimum(order, num_steps - k), order)


def _weighted_sum(coefficients, images):
  return sum(c * image for c, image in zip(coefficients, images))


def _dpmpp_coefficients(g: _Grid, k, order):
  """DPM-Solver++ multistep (data prediction) from point k to k + 1: the
  weights of x predictions at k, k - 1, k - 2 (Lu et al., 2022, Algorithm
  2, and the third-order multistep update of DPM-Solver's code)."""
  h = g.lam(k + 1) - g.lam(k)
  r0 = jnp.where(order >= 2, (g.lam(k) - g.lam(k - 1)) / h, 1.)
  r1 = jnp.where(order >= 3, (g.lam(k - 1) - g.lam(k - 2)) / h, 1.)
  phi_1 = jnp.expm1(-h)
  phi_2 = phi_1 / h + 1.
  phi_3 = phi_2 / h - 0.5
  alpha_s = g.alpha(k + 1)
  first = jnp.array([-alpha_s * phi_1, 0., 0.])
  d1_0 = jnp.array([1., -1., 0.]) / r0  # (x_k - x_{k-1}) / r0
  d1_1 = jnp.array([0., 1., -1.]) / r1
  second = first - 0.5 * alpha_s * phi_1 * d1_0
  d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
  d2 = (d1_0 - d1_1) / (r0 + r1)
  third = first + alpha_s * phi_2 * d1 - alpha_s * phi_3 * d2
  return jnp.where(order == 1, first, jnp.where(order == 2, second, third))


def _unipc_coefficients(g: _Grid, k, order):
  """UniPC-bh2 (data prediction) from point k to k + 1, orders 1 and 2:
  (the predictor's weights of x at k, k - 1; the corrector's weights of x
  at k, k - 1 and of the new x at k + 1). As UniPC's code: rho = 1/2 for
  the order-2 predictor and the order-1 corrector, the 2x2 system R rho = b
  for the order-2 corrector."""
  h = g.lam(k + 1) - g.lam(k)
  h_phi_1 = jnp.expm1(-h)
  b_h = h_phi_1  # bh2
  alpha_s = g.alpha(k + 1)
  r = jnp.where(order >= 2, (g.lam(k - 1) - g.lam(k)) / h, -1.)
  # D1 = (x_{k-1} - x_k) / r; the predictor adds -alpha_s B_h rho_p D1.
  d1 = jnp.array([-1., 1.]) / r
  base = jnp.array([-alpha_s * h_phi_1, 0.])
  predictor = jnp.where(order >= 2, base - alpha_s * b_h * 0.5 * d1, base)
  hh = -h
  b_1 = (h_phi_1 / hh - 1.) / b_h
  b_2 = ((h_phi_1 / hh - 1.) / hh - 0.5) * 2. / b_h
  # R = [[1, 1], [r, 1]]: rho_0 + rho_1 = b_1, r rho_0 + rho_1 = b_2.
  rho_0 = (b_1 - b_2) / (1. - r)
  rho_1 = b_1 - rho_0
  rho_d1, rho_new = (jnp.where(order >= 2, rho_0, 0.),
                     jnp.where(order >= 2, rho_1, 0.5))
  corrector = (base - alpha_s * b_h * rho_d1 * d1 +
               jnp.array([alpha_s * b_h * rho_new, 0.]))
  return predictor, corrector, -alpha_s * b_h * rho_new


def solve(model_fn, z_init, *, num_steps, solver: str, grid: str,
          logsnr_schedule_fn, mean_type: str, clip_x: bool = True):
  """Integrates the probability-flow ODE from `z_init` at t = 1 to t = 0.

  Args:
    model_fn: the network, `model_fn(z, logsnr [B]) -> output`.
    z_init: pure noise [B, ...].
    num_steps: the steps N; may be traced (one compiled loop for every N).
    solver: 'dpmpp_2m', 'dpmpp_3m', 'unipc', 'ipndm' or 'heun'.
    grid: 'time_uniform', 'logsnr_uniform' or 'karras' (grids.py).
    logsnr_schedule_fn: t -> logSNR, the model's schedule.
    mean_type: what the network predicts: 'x', 'eps', 'v' or 'both'.
    clip_x: clip the x prediction to [-1, 1], as DDIM does.

  Returns:
    z at t = 0 (the schedule's logsnr_max), like z_init.
  """
  loop, top, final_below = _SOLVERS[solver]
  g = _Grid(grid, num_steps, logsnr_schedule_fn)
  batch = z_init.shape[0]

  def denoise(z, k) -> process.Prediction:
    logsnr = jnp.full((batch,), g.logsnr(k))
    return process.interpret_output(model_fn(z, logsnr), z, logsnr,
                                    mean_type, clip_x=clip_x)

  carry, body = loop(g, denoise,
                     lambda k: _order(k, num_steps, top, final_below), z_init)
  return jax.lax.fori_loop(0, num_steps, body, carry)[0]


def _push(history, newest):
  """The stored model outputs, newest first, `newest` in front."""
  return (newest,) + history[:-1]


def _dpmpp_loop(g: _Grid, denoise: Callable, order_of: Callable, z_init,
                stored: int):
  """DPM-Solver++(2M) (`stored` = 2) or (3M) (3): carry (z, x history)."""
  def body(k, carry):
    z, history = carry
    history = _push(history, denoise(z, k).x)
    weights = _dpmpp_coefficients(g, k, order_of(k))  # zip: `stored` of 3
    return g.sigma_ratio(k) * z + _weighted_sum(weights, history), history
  return (z_init, (jnp.zeros_like(z_init),) * stored), body


def _unipc_loop(g: _Grid, denoise: Callable, order_of: Callable, z_init):
  """Step k evaluates the model at the predictor's point k (its only
  network evaluation), then corrects step k - 1 with it and predicts point
  k + 1. The corrected z goes on; the output at the predicted point is the
  one stored, as in UniPC's code. The last prediction is not corrected.
  Carry: (predicted z, corrected z at k - 1, x history)."""
  def body(k, carry):
    predicted, previous, history = carry
    x_new = denoise(predicted, k).x
    # The corrector of step k - 1 (none before the first step).
    _, corrector, new_weight = _unipc_coefficients(
        g, k - 1, order_of(k - 1))
    corrected = (g.sigma_ratio(k - 1) * previous +
                 _weighted_sum(corrector, history) + new_weight * x_new)
    z = jnp.where(k == 0, predicted, corrected)
    history = _push(history, x_new)
    predictor, _, _ = _unipc_coefficients(g, k, order_of(k))
    predicted = g.sigma_ratio(k) * z + _weighted_sum(predictor, history)
    return predicted, z, history
  return (z_init, z_init, (jnp.zeros_like(z_init),) * 2), body


def _ipndm_loop(g: _Grid, denoise: Callable, order_of: Callable, z_init):
  """iPNDM: Adams-Bashforth on eps in EDM's variables; orders rise to 4
  with the history. Carry: (z, eps history)."""
  def body(k, carry):
    z, history = carry
    pred = denoise(z, k)
    history = _push(history, pred.eps)
    order = order_of(k)
    weights = jnp.select(
        [order == o for o in range(1, 5)],
        [jnp.array(w + (0.,) * (4 - len(w))) for w in _IPNDM_WEIGHTS])
    return _euler(g, k, pred, _weighted_sum(weights, history)), history
  return (z_init, (jnp.zeros_like(z_init),) * 4), body


def _euler(g: _Grid, k, pred: process.Prediction, slope):
  """z / alpha += (change of sigma / alpha) * slope, from point k (where
  the model predicted `pred`) to k + 1, in z. Written around the DDIM step
  (slope = eps): z_s = alpha_s x + sigma_s slope + (alpha_s / alpha_t)
  sigma_t (eps - slope), which keeps float32 precision where
  alpha_s / alpha_t is large (near t = 1: thousands on PD's grid)."""
  return (g.alpha(k + 1) * pred.x + g.sigma(k + 1) * slope +
          g.alpha_ratio(k) * g.sigma(k) * (pred.eps - slope))


def _heun_loop(g: _Grid, denoise: Callable, order_of: Callable, z_init):
  """EDM's deterministic sampler (S_churn = 0): an Euler step, then the
  trapezoid with eps at its end; the last step Euler only. Carry: (z,)."""
  del order_of

  def body(k, carry):
    pred = denoise(carry[0], k)
    return (jax.lax.cond(
        k < g.num_steps - 1,
        lambda: _euler(g, k, pred, 0.5 * (
            pred.eps + denoise(_euler(g, k, pred, pred.eps), k + 1).eps)),
        lambda: _euler(g, k, pred, pred.eps)),)
  return (z_init,), body


# name -> (its loop, top order, the step counts below which the last steps
# lower their order). As the references do it: DPM-Solver's sampler lowers
# them below 10 steps only, UniPC's always, diff-sampler's iPNDM never.
_ALWAYS = 2**30
_SOLVERS = {
    'dpmpp_2m': (functools.partial(_dpmpp_loop, stored=2), 2, 10),
    'dpmpp_3m': (functools.partial(_dpmpp_loop, stored=3), 3, 10),
    'unipc': (_unipc_loop, 2, _ALWAYS),
    'ipndm': (_ipndm_loop, 4, 0),
    'heun': (_heun_loop, 2, 0),
}
