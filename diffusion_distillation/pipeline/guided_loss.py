"""The training losses of a guided run, stage by stage.

Classifier-free guidance and its distillation (Meng et al., "On Distillation
of Guided Diffusion Models", CVPR 2023, arXiv 2210.03142); the maths is in
`diffusion/guidance.py`:

* GUIDED_TEACHER: the teacher's usual loss, with each label dropped to the "no
  class" label with probability `model.cond_drop_prob` (p_uncond).
* GUIDED_STAGE_ONE: the w-conditioned student, initialized from the
  teacher, matches the guided teacher's x_w at data-noised z_t, with
  w ~ U(w_min, w_max] per example and its w embedding warmed up over
  `guidance.w_warmup_steps` updates.
* GUIDED_DISTILLATION (stage two): progressive distillation of the
  w-conditioned model; teacher and student get the same w per example; the
  target is `distillation.target`'s (two_step: the authors' "nvidia" loss).
"""

import jax

from diffusion_distillation.diffusion import guidance
from diffusion_distillation.diffusion import losses
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.pipeline import stages

KINDS = stages.GUIDED_KINDS


def per_example_loss(model: model_lib.DiffusionModel, kind: str, params,
                     teacher_params, batch, rng, num_steps, *,
                     train: bool = True, microbatch=None, step=None):
  """Loss per example (shape (B,)) of one guided `kind` of stage (above);
  network dropout only when `train`; `microbatch`: see
  `losses.diffusion_loss`; `step`: the stage's update, for stage one's w
  warm-up (None: warmed up, as when evaluating the loss)."""
  if kind not in KINDS:
    raise ValueError(f'unknown guided stage kind {kind!r}; known: {KINDS}')
  labels = batch['label']
  x = model_lib.normalize_images(batch['image'])
  rng_loss, rng_dropout, rng_cond = jax.random.split(rng, 3)
  common = dict(logsnr_schedule_fn=model.logsnr_schedule('train'),
                mean_type=model.mean_type, weight_type=model.weight_type,
                microbatch=microbatch)
  if kind == stages.GUIDED_TEACHER:
    labels = guidance.drop_labels(rng_cond, labels, model.cond_drop_prob,
                                  model.null_label, microbatch)
    return losses.diffusion_loss(
        model.bind(params, labels, train=train, rng=rng_dropout,
                   microbatch=microbatch), x, rng_loss,
        num_steps=num_steps, **common)
  w = guidance.sample_w(rng_cond, labels.shape[0], *model.w_range, microbatch)
  student = model.student()
  if kind == stages.GUIDED_STAGE_ONE:
    student_fn = student.bind(
        params, labels, train=train, rng=rng_dropout, guidance=w,
        w_warmup=guidance.warmup(step, model.w_warmup_steps),
        microbatch=microbatch)
    return guidance.matching_loss(
        student_fn, model.bind(teacher_params, labels, guidance=w), x,
        rng_loss, **common)
  return losses.diffusion_loss(
      student.bind(params, labels, train=train, rng=rng_dropout, guidance=w,
                   microbatch=microbatch), x, rng_loss, num_steps=num_steps,
      teacher_fn=student.bind(teacher_params, labels, guidance=w),
      target=model.distill_target, **common)
