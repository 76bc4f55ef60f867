"""Stage two of guided distillation (Meng et al., CVPR 2023, Sec. 4.2).

Progressive distillation of the w-conditioned student: teacher and student
take the same w ~ U(w_min, w_max] per example. The target is progressive
(`GuidedProgressive`) or the authors' two-step one (`GuidedTwoStep`, see
two_step.py).
"""

from diffusion_distillation.diffusion import losses
from diffusion_distillation.objectives import objective
from diffusion_distillation.objectives.guided_stage_one import draw_guided


class GuidedProgressive(objective.Objective):
  w_conditioned = True
  target = 'progressive'  # `losses.TARGETS`

  def draw(self, rng, batch, num_steps) -> dict:
    return draw_guided(self, rng, batch, num_steps)

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    del step, target_params
    labels, x = self.labels_and_x(batch)
    student, w = self.model.student(), draws['w']
    return losses.diffusion_loss(
        student.bind(params, labels, train=train, dropout=draws['dropout'],
                     guidance=w), x, draws['u'], draws['i'], draws['eps'],
        num_steps=num_steps,
        teacher_fn=student.bind(teacher_params, labels, guidance=w),
        target=self.target, **self.weighting())


class GuidedTwoStep(GuidedProgressive):
  target = 'two_step'
