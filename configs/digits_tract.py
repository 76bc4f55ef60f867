r"""TRACT on the embedded digits: the digits teacher, then 128 -> 16 -> 1 steps.

Runs offline on 2 CPU cores: trains the teacher of configs/digits.py (the
same fields, so the same teacher bit for bit), then distills its 128-step
DDIM sampler with TRACT (docs/methods.md) in two phases of 500 updates, to
16 steps and then to 1, writing a sample grid per stage, then evaluates
every stage with the digits metric (the teacher with DDIM only: the other
samplers are configs/digits.py's to compare, `evaluate --compare`). Each
phase costs what 500 progressive-distillation updates cost.

    python -m diffusion_distillation.main --config=configs/digits_tract.py \
        --workdir=workdirs/digits_tract

To reuse the teacher of a finished configs/digits.py run instead of training
it again:

    python -m diffusion_distillation.main --config=configs/digits_tract.py \
        --workdir=workdirs/digits_tract \
        --config.distillation.teacher_checkpoint_path=runs/digits

ml-tract's recipe otherwise: a constant learning rate (here 1e-3, digits'
students'), the self-teacher's EMA 0.5, and the students' EMA decay
1e-3 ** (1 / updates per phase).
"""

from diffusion_distillation import config as config_lib

UPDATES_PER_PHASE = 500


def get_config():
  """The digits teacher plus distillation by TRACT 128 -> 16 -> 1."""
  config = config_lib.default_config()
  config.eval.samplers = ('ddim',)
  config_lib.add_section(config, 'distillation', method='tract',
                         learning_rate=1e-3)
  return config_lib.add_section(
      config, 'tract', phases=(16, 1), updates_per_phase=UPDATES_PER_PHASE,
      ema_decay=1e-3 ** (1 / UPDATES_PER_PHASE))
