"""Progressive distillation (paper Algorithm 2, the target of Appendix G).

The student, a copy of its teacher, learns to take in one DDIM step from
z_t what the teacher takes in two: its target is the x whose single DDIM
step lands where two teacher steps land (`losses.teacher_target`).
"""

import jax

from diffusion_distillation.diffusion import losses
from diffusion_distillation.objectives import objective
from diffusion_distillation.parallel.microbatches import BatchKey


class Progressive(objective.Objective):
  """A student for `num_steps` DDIM steps from its teacher's 2 * num_steps."""
  target = 'progressive'  # `losses.TARGETS`

  def draw(self, rng, batch, num_steps) -> dict:
    rng_loss, rng_dropout = jax.random.split(rng)
    _, x = self.labels_and_x(batch)
    return dict(losses.draw_noise(rng_loss, x, num_steps),
                dropout=BatchKey(rng_dropout))

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    del step, target_params
    labels, x = self.labels_and_x(batch)
    model = self.model
    return losses.diffusion_loss(
        model.bind(params, labels, train=train, dropout=draws['dropout']), x,
        draws['u'], draws['i'], draws['eps'], num_steps=num_steps,
        teacher_fn=model.bind(teacher_params, labels), target=self.target,
        **self.weighting())
