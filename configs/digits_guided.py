r"""Guided distillation on the embedded digits: class-conditional, 128 -> 1.

The embedded demo of *On Distillation of Guided Diffusion Models* (Meng et
al., CVPR 2023, arXiv 2210.03142) on scikit-learn's 8x8 digits with their
class labels, offline on 2 CPU cores:

    python -m diffusion_distillation.main --config=configs/digits_guided.py \
        --workdir=workdirs/digits_guided

1. `base`: a class-conditional teacher trained with classifier-free guidance:
   each label is dropped to the "no class" label with probability
   `model.cond_drop_prob` (p_uncond = 0.1 as in the paper's ImageNet 64
   teacher); sampled at guidance w it costs two network evaluations per step.
2. `guided_128` (stage one): one w-conditioned student, initialized from the
   teacher, learns the guided teacher's x_w = (1 + w) x_cond - w x_uncond at
   data-noised z_t for w ~ U(guidance.w_min, guidance.w_max] (the authors'
   ImageNet 64 range, (0, 4]), its w embedding (`w_dense0`, `w_dense1`, the
   authors' 'inv_cos' input) warmed up over the first 120 updates; one
   evaluation per step.
3. `distill_64` ... `distill_1` (stage two): progressive distillation of that
   student, w drawn per example, 150 updates per halving as configs/digits.py.

Then every stage is evaluated at each w of `eval.guidance` (`digits_fd` and
the class accuracy of the samples under the digits classifier): students with
DDIM and with the stochastic sampler, the guided teacher with DDIM at 4 and
128 steps. Sample any w of the trained range with, e.g.,

    python -m diffusion_distillation.sample --workdir=workdirs/digits_guided \
        --num_steps=4 --guidance=2 --output=guided.npz

Cost, measured on the 2-core development machine (see docs/guided.md): 5 min
51 s end to end including evaluation (11 min 18 s while other jobs loaded the
machine).
"""

from diffusion_distillation import config as config_lib
from diffusion_distillation.configs import digits


def get_config():
  """configs/digits.py with labels, label dropout and guided distillation."""
  config = digits.get_config()
  config.dataset.args.class_conditional = True
  config.model.cond_drop_prob = 0.1
  # w in (0, 4]; stage one 600 updates, the w embedding warmed up over the
  # first fifth (the authors' ImageNet 64 stage one: 10k of its updates).
  # Ours: the authors give no digits setting.
  config_lib.add_section(config, 'guidance', num_updates=600,
                         w_warmup_steps=120)
  config.eval.guidance = (0., 1., 2.)
  config.eval.student_samplers = ('ddim', 'stochastic')
  config.eval.samplers = ('ddim',)
  config.eval.teacher_steps = (4, 128)
  return config
