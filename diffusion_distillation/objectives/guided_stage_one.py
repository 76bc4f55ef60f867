"""Stage one of guided distillation (Meng et al., CVPR 2023, Sec. 4.1).

The w-conditioned student, initialized from the guided teacher, matches the
teacher's guided x_w = (1 + w) x_cond - w x_uncond at data-noised z_t, in
continuous time, with w ~ U(w_min, w_max] per example
(`guidance.matching_loss`). Its w embedding is warmed up over
`guidance.w_warmup_steps` updates, so that it starts as the teacher's
conditional model.
"""

import jax

from diffusion_distillation.diffusion import guidance
from diffusion_distillation.diffusion import losses
from diffusion_distillation.objectives import objective
from diffusion_distillation.parallel.microbatches import BatchKey


def draw_guided(student: objective.Objective, rng, batch, num_steps) -> dict:
  """The draws of a w-conditioned `student`'s loss: times and noise on
  `num_steps`' grid (0: continuous), dropout, and w ~ U(w_min, w_max]."""
  rng_loss, rng_dropout, rng_cond = jax.random.split(rng, 3)
  labels, x = student.labels_and_x(batch)
  return dict(losses.draw_noise(rng_loss, x, num_steps),
              dropout=BatchKey(rng_dropout),
              w=guidance.sample_w(rng_cond, labels.shape[0],
                                  *student.model.w_range))


class GuidedStageOne(objective.Objective):
  """The w-conditioned student; its w embedding ramps up over
  `w_warmup_steps` updates (`guidance.w_warmup_steps`)."""
  settings = 'guidance'
  w_conditioned = True

  def __init__(self, model, *, w_warmup_steps: int):
    super().__init__(model)
    self.w_warmup_steps = w_warmup_steps

  def draw(self, rng, batch, num_steps) -> dict:
    del num_steps  # continuous time
    return draw_guided(self, rng, batch, 0)

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    del num_steps, target_params
    labels, x = self.labels_and_x(batch)
    model, w = self.model, draws['w']
    student_fn = model.student().bind(
        params, labels, train=train, dropout=draws['dropout'], guidance=w,
        w_warmup=guidance.warmup(step, self.w_warmup_steps))
    return guidance.matching_loss(
        student_fn, model.bind(teacher_params, labels, guidance=w), x,
        draws['u'], draws['eps'], **self.weighting())
