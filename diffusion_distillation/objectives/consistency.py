"""Consistency distillation (Song et al., 2023, Algorithm 2).

The student, started from its teacher's weights, learns the consistency
function f(z_t, t) -> x of the teacher's probability-flow ODE: at a point of
an N-point Karras grid its f must agree with its target network's f where
the teacher's one ODE step (DDIM or Heun) lands, one grid point less noisy;
f is the identity at sigma_min (diffusion/consistency.py). The target
network theta^- is the state's `target_params`, an EMA of the student with
`consistency.target_ema` (the paper's mu; 0 on CIFAR-10: the student itself,
under stop_gradient). The student then samples in any number of steps
(`consistency.sample`).
"""

import jax

from diffusion_distillation.diffusion import consistency
from diffusion_distillation.diffusion import process
from diffusion_distillation.objectives import objective
from diffusion_distillation.parallel.microbatches import BatchKey


class Consistency(objective.Objective):
  """A consistency model distilled from its teacher (`consistency` section:
  learning rate, anneal, EMA, and the options below)."""
  settings = 'consistency'
  any_steps = True

  def __init__(self, model, *, num_scales: int, sigma_min: float,
               sigma_max: float, solver: str, distance: str):
    super().__init__(model)
    self.num_scales = num_scales
    self.sigma_min, self.sigma_max = sigma_min, sigma_max
    self.solver, self.distance = solver, distance

  @classmethod
  def target_decay(cls, config):
    """The target network follows the student with the paper's mu."""
    mu = float(config.consistency.target_ema)
    return lambda step: mu

  def draw(self, rng, batch, num_steps) -> dict:
    del num_steps  # any: the student samples in as many steps as asked
    rng_i, rng_eps, rng_dropout = jax.random.split(rng, 3)
    _, x = self.labels_and_x(batch)
    return {'i': jax.random.randint(rng_i, (x.shape[0],), 0,
                                    self.num_scales - 1),
            'eps': jax.random.normal(rng_eps, x.shape, dtype=x.dtype),
            'dropout': BatchKey(rng_dropout)}

  def consistency_fn(self, params, labels, *, train: bool = False,
                     dropout=None):
    """`(z, logsnr) -> f` of the parameters (the student's, the target's)."""
    return consistency.consistency_model_fn(
        self.model.bind(params, labels, train=train, dropout=dropout),
        self.model.mean_type, self.sigma_min)

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    del num_steps, step
    labels, x = self.labels_and_x(batch)
    teacher = self.model.bind(teacher_params, labels)
    mean_type = self.model.mean_type

    def denoise(x_ve, sigma):
      z, logsnr = consistency.to_z(x_ve, sigma), consistency.logsnr_of_sigma(
          sigma)
      return process.interpret_output(teacher(z, logsnr), z, logsnr,
                                      mean_type).x

    # As the reference: the target network sees the same dropout masks.
    own = dict(train=train, dropout=draws['dropout'])
    target = params if target_params is None else target_params
    return consistency.consistency_loss(
        self.consistency_fn(params, labels, **own),
        self.consistency_fn(target, labels, **own), denoise, x, draws['i'],
        draws['eps'], num_scales=self.num_scales, sigma_min=self.sigma_min,
        sigma_max=self.sigma_max, solver=self.solver,
        distance_kind=self.distance)
