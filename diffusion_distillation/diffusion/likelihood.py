"""The variational bound on -log p(x), in bits per dimension.

The official code has the pieces (google-research diffusion_distillation:
`utils.normal_kl`, `utils.discretized_gaussian_log_likelihood`,
`dpm.Model.vb`) but no loop that adds them up; `bpd` does, as Ho et al.'s
`calc_bpd_loop` for DDPM: on the N-step grid u_i = i / N of a logSNR
schedule,

    L = KL(q(z_1 | x) || N(0, I))                            prior
      + sum_{i=2..N} KL(q(z_{s} | z_{t}, x) || p(z_{s} | z_{t}))   diffusion
      - log p(x | z_{1/N})                                   decoder

with t = i / N, s = (i - 1) / N, z_t ~ q(z_t | x), each term one noise draw.
As `dpm.Model.vb`, q uses the true posterior variance ('fixed_small') and p
the model's reverse step (`process.posterior` at the predicted, unclipped x,
with the model's `logvar_type`); the decoder is the discretized Gaussian of
that step at s = 0 (data: 256 levels in [-1, 1]). Every term is a mean over
dimensions divided by log 2: bits per dimension.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion.losses import meanflat
from diffusion_distillation.diffusion.losses import ModelFn


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
  return 0.5 * (-1. + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) +
                jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def normal_cdf(x):
  return 0.5 * (1. + jax.lax.erf(x * 2. ** -0.5))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
  """log P(x) of a Gaussian discretized to 256 bins of width 2/255 on [-1, 1].

  The edge bins take the tails (x < -0.999: (-inf, x + 1/255]; x > 0.999:
  [x - 1/255, inf)); `log_scales` are log standard deviations. Logs of
  probabilities below 1e-12 are clamped, as in the official utils.
  """
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = normal_cdf(inv_std * (centered + 1. / 255.))
  cdf_min = normal_cdf(inv_std * (centered - 1. / 255.))
  safe_log = lambda p: jnp.log(jnp.maximum(p, 1e-12))
  return jnp.where(x < -0.999, safe_log(cdf_plus),
                   jnp.where(x > 0.999, safe_log(1. - cdf_min),
                             safe_log(cdf_plus - cdf_min)))


def prior_bpd(x, logsnr_1):
  """KL(q(z_1 | x) || N(0, I)) per example, in bits per dimension."""
  q = process.forward_dist(x, logsnr_1)
  return meanflat(normal_kl(q['mean'], q['logvar'], 0., 0.)) / np.log(2.)


def step_bpd(x, z_t, logsnr_t, logsnr_s, x_pred, variance: str, last):
  """One term per example, bits per dimension: the decoder's -log p(x | z_t)
  where `last` (s = 0), else KL(q(z_s | z_t, x) || p(z_s | z_t)) (`dpm.vb`)."""
  p = process.posterior(x_pred, z_t, logsnr_t, logsnr_s, variance)
  q = process.posterior(x, z_t, logsnr_t, logsnr_s, 'fixed_small')
  kl = normal_kl(q['mean'], q['logvar'], p['mean'], p['logvar'])
  nll = -discretized_gaussian_log_likelihood(
      x, means=p['mean'], log_scales=0.5 * p['logvar'])
  return jnp.where(last, meanflat(nll), meanflat(kl)) / np.log(2.)


def bpd(model_fn: ModelFn, x, noise_fn, *, num_steps: int,
        logsnr_schedule_fn, mean_type: str, variance: str = 'fixed_large'):
  """The bound's terms per example: {'prior', 'diffusion', 'decoder', 'bpd'}.

  `x` is data in [-1, 1]; `noise_fn(i)` gives the noise of term i = 1..N
  (e.g. `jax.random.normal(jax.random.fold_in(rng, i), x.shape)`). The N
  model evaluations run in one `lax.fori_loop`.
  """
  batch = x.shape[0]

  def body(i, sums):
    logsnr_t = jnp.full((batch,), logsnr_schedule_fn(i / num_steps))
    logsnr_s = jnp.full((batch,), logsnr_schedule_fn((i - 1) / num_steps))
    z_t = process.diffuse(x, noise_fn(i), logsnr_t)
    x_pred = process.interpret_output(model_fn(z_t, logsnr_t), z_t, logsnr_t,
                                      mean_type).x
    term = step_bpd(x, z_t, logsnr_t, logsnr_s, x_pred, variance, i == 1)
    return (sums[0] + jnp.where(i == 1, 0., term),
            sums[1] + jnp.where(i == 1, term, 0.))

  zeros = jnp.zeros((batch,), jnp.float32)
  diffusion, decoder = jax.lax.fori_loop(1, num_steps + 1, body,
                                         (zeros, zeros))
  prior = prior_bpd(x, jnp.full((batch,), logsnr_schedule_fn(1.)))
  return {'prior': prior, 'diffusion': diffusion, 'decoder': decoder,
          'bpd': prior + diffusion + decoder}
