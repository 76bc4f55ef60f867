r"""Consistency distillation of the embedded digits teacher (Song et al., 2023).

Trains configs/digits.py's teacher (the same fields, so the same teacher bit
for bit), then distills it into one consistency student that samples in any
number of steps, and evaluates it at 1, 2 and 4 steps (`digits_fd`):

    python -m diffusion_distillation.main \
        --config=configs/digits_consistency.py --workdir=workdirs/digits_cd

To distill the teacher of an existing digits workdir instead of training it
again:

    python -m diffusion_distillation.main \
        --config=configs/digits_consistency.py --workdir=workdirs/digits_cd \
        --config.distillation.teacher_checkpoint_path=workdirs/digits

The student keeps the paper's CIFAR-10 choices (Heun's step, the target
network mu = 0, sigma in [0.002, 80]) with the l2 distance (LPIPS is not
available), N = 10 Karras points instead of 18 (measured: digits_fd 5.14,
3.92, 4.68 at 1, 2, 4 steps against 35.29, 34.57, 30.76 with 18, see
docs/methods.md), and a shorter run: 1500 updates at learning rate 5e-4 and
the teacher's sampling EMA, 0.995, instead of 800k at 4e-4 and 0.9999. The
evaluation's teacher rows are DDIM's only (the other samplers are
configs/digits.py's to compare).
"""

from diffusion_distillation import config as config_lib


def get_config():
  """configs/digits.py's teacher, then the consistency student."""
  config = config_lib.default_config()
  config.eval.samplers = ('ddim',)
  config_lib.add_section(config, 'distillation', method='consistency')
  return config_lib.add_section(config, 'consistency', num_updates=1500,
                                num_scales=10, learning_rate=5e-4,
                                ema_decay=0.995)
