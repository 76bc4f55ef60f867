"""Teacher training: the denoising loss on data (paper Algorithm 1).

`Teacher` is the paper's. `GuidedTeacher` adds the label dropout of
classifier-free guidance (Ho & Salimans, 2022): each label becomes the
"no class" label with probability `model.cond_drop_prob`, so that one
network learns the conditional and the unconditional model.
"""

import jax

from diffusion_distillation.diffusion import guidance
from diffusion_distillation.diffusion import losses
from diffusion_distillation.objectives import objective
from diffusion_distillation.parallel.microbatches import BatchKey


class Teacher(objective.Objective):
  """Base training, in the model's own time (`train_num_steps`, 0:
  continuous)."""
  trains_student = False
  settings = 'train'

  def draw(self, rng, batch, num_steps) -> dict:
    del num_steps  # the model's own
    rng_loss, rng_dropout = jax.random.split(rng)
    _, x = self.labels_and_x(batch)
    return dict(losses.draw_noise(rng_loss, x, self.model.train_num_steps),
                dropout=BatchKey(rng_dropout))

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    del teacher_params, num_steps, step, target_params
    labels, x = self.labels_and_x(batch)
    return self._loss(params, labels, x, draws, train)

  def _loss(self, params, labels, x, draws, train):
    return losses.diffusion_loss(
        self.model.bind(params, labels, train=train, dropout=draws['dropout']),
        x, draws['u'], draws['i'], draws['eps'],
        num_steps=self.model.train_num_steps, **self.weighting())


class GuidedTeacher(Teacher):
  """Base training with label dropout: each label is dropped with
  probability `cond_drop_prob` (`model.cond_drop_prob`, p_uncond)."""

  def __init__(self, model, *, cond_drop_prob: float):
    super().__init__(model)
    self.cond_drop_prob = cond_drop_prob

  def draw(self, rng, batch, num_steps) -> dict:
    del num_steps  # the model's own
    rng_loss, rng_dropout, rng_cond = jax.random.split(rng, 3)
    labels, x = self.labels_and_x(batch)
    return dict(losses.draw_noise(rng_loss, x, self.model.train_num_steps),
                dropout=BatchKey(rng_dropout),
                label_drops=guidance.draw_label_drops(
                    rng_cond, labels, self.cond_drop_prob))

  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    del teacher_params, num_steps, step, target_params
    labels, x = self.labels_and_x(batch)
    labels = guidance.drop_labels(labels, draws['label_drops'],
                                  self.model.null_label)
    return self._loss(params, labels, x, draws, train)
