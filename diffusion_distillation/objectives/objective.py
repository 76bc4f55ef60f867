"""What an objective is: the per-example loss of one kind of stage.

The update (pipeline/update.py) calls every objective the same way, once per
batch:

    draws = objective.draw(rng, batch, num_steps)
    losses = objective.loss(params, teacher_params, batch, draws,
                            num_steps=num_steps, step=step,
                            target_params=target_params)

`draw` makes every random quantity of the whole batch from one key (times,
noise, label dropout, w, and the `BatchKey` of the network's dropout masks);
`loss` is a deterministic function of arrays. Gradient accumulation slices
`batch` and `draws` by rows (parallel/microbatches.py), so an objective never
sees a microbatch.

The class attributes say what the rest of the pipeline needs to know of a
stage, so that nothing else branches on which objective it is.

An objective that learns against a moving copy of its own student (TRACT's
self-teacher, consistency distillation's target network) says how that copy
follows the parameters (`target_decay`); the state then carries it
(`TrainState.target_params`), the update keeps it, and `loss` reads it as
`target_params` (None for every other objective).
"""

import abc
from typing import Callable, Optional

from diffusion_distillation.models import diffusion_model as model_lib


class Objective(abc.ABC):
  """The loss of one kind of stage for `model` (the stage's: its dropout).

  Subclasses set the attributes below and define `draw` and `loss`; the
  settings only training needs (label dropout, the w warm-up) are their
  constructor's keyword arguments, which the stage plan gives
  (`stages.Stage.options`).
  """
  # Starts from the previous stage's parameters, which stay its frozen
  # teacher (a student); False: a fresh model trained on data (a teacher).
  trains_student = True
  # The config section of its learning rate, anneal and EMA: 'train',
  # 'distillation' or 'guidance' (stage one of guided distillation).
  settings = 'distillation'
  # Its model takes the guidance strength w as an input.
  w_conditioned = False
  # Its student samples in any number of steps (consistency models), not
  # only in the steps of its stage.
  any_steps = False

  def __init__(self, model: model_lib.DiffusionModel):
    self.model = model

  @abc.abstractmethod
  def draw(self, rng, batch, num_steps) -> dict:
    """Every random array of the batch's loss, from `rng` (its update's key).

    `num_steps`: the sampler steps the stage trains for (the state's, traced).
    """

  @classmethod
  def target_decay(cls, config) -> Optional[Callable]:
    """`step -> decay` of the EMA of the parameters that `loss` reads as
    `target_params` (updated after each update, as the parameter average);
    None: the objective has no such target (the default)."""
    del config
    return None

  @abc.abstractmethod
  def loss(self, params, teacher_params, batch, draws, *, num_steps,
           step=None, train: bool = True, target_params=None):
    """Loss per example, shape (B,). `teacher_params`: the frozen teacher's
    (None when not `trains_student`); `step`: the stage's update, for
    schedules inside the loss (None: at their end); dropout when `train`;
    `target_params`: the student's moving target (see `target_decay`), else
    None."""

  def labels_and_x(self, batch):
    """The batch's labels and its images as data in [-1, 1]."""
    return batch['label'], model_lib.normalize_images(batch['image'])

  def weighting(self) -> dict:
    """The model's schedule and loss weighting, as the maths takes them."""
    model = self.model
    return dict(logsnr_schedule_fn=model.logsnr_schedule('train'),
                mean_type=model.mean_type, weight_type=model.weight_type)
