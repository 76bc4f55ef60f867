"""TRACT: transitive closure time-distillation (Berthelot et al., 2023).

One stage per phase: the student, starting from its teacher (the previous
phase's student), learns to jump from any teacher grid time to the end of
its segment in one DDIM step (`tract.tract_target`), against a target built
from one teacher step and one step of its self-teacher, an EMA of the
student (`TrainState.target_params`, decaying as `tract.self_teacher_ema`).
Its optimizer settings are the `tract` config section's.
"""

import jax

from diffusion_distillation.diffusion import losses
from diffusion_distillation.diffusion import process
from diffusion_distillation.diffusion import tract
from diffusion_distillation.objectives import objective
from diffusion_distillation.parallel.microbatches import BatchKey


class Tract(objective.Objective):
  """A student of `num_steps` DDIM steps from a `teacher_steps` teacher."""
  settings = 'tract'

  def __init__(self, model, *, teacher_steps: int, clip_x: bool):
    super().__init__(model)
    self.teacher_steps = teacher_steps
    self.clip_x = clip_x

  @classmethod
  def target_decay(cls, config):
    """The self-teacher's bias-corrected EMA (ml-tract's `sema`)."""
    return tract.self_teacher_decay(config.tract.self_teacher_ema)

  def draw(self, rng, batch, num_steps) -> dict:
    rng_k, rng_eps, rng_dropout = jax.random.split(rng, 3)
    _, x = self.labels_and_x(batch)
    k, j = tract.draw_segments(rng_k, x.shape[0], num_steps,
                               self.teacher_steps)
    return {'k': k, 'j': j, 'dropout': BatchKey(rng_dropout),
            'eps': jax.random.normal(rng_eps, x.shape, dtype=x.dtype)}

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    del step
    labels, x = self.labels_and_x(batch)
    model, weighting = self.model, self.weighting()
    schedule = weighting['logsnr_schedule_fn']
    k, j = draws['k'], draws['j']
    u, _, _ = tract.segment_times(k, j, num_steps, self.teacher_steps)
    logsnr = schedule(u)
    z = process.diffuse(x, draws['eps'], logsnr)
    x_target = tract.tract_target(
        model.bind(teacher_params, labels), model.bind(target_params, labels),
        z, k, j, num_steps, self.teacher_steps, logsnr_schedule_fn=schedule,
        mean_type=model.mean_type, clip_x=self.clip_x)
    output = model.bind(params, labels, train=train,
                        dropout=draws['dropout'])(z, logsnr)
    pred = process.interpret_output(output, z, logsnr, model.mean_type)
    return losses.weighted_mse(pred, x_target, z, logsnr,
                               weighting['weight_type'])
