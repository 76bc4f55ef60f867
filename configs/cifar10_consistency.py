r"""CIFAR-10 consistency distillation (Song et al., 2023): the paper's CD.

Distils the released progressive-distillation teacher
`gs://gresearch/diffusion-distillation/cifar_original` (the model of
configs/cifar10_base.py) into one consistency student that samples in 1, 2,
4, ... steps, with the hyperparameters of openai/consistency_models_cifar10
`configs/cifar10_ve_cd.py`: N = 18 Karras points between sigma 0.002 and
80 (rho = 7), Heun's step of the teacher's ODE, the target network mu = 0
(the student itself under stop_gradient), 800k updates at batch 512, learning
rate 4e-4, sampling EMA 0.9999:

    python -m diffusion_distillation.main \
        --config=configs/cifar10_consistency.py \
        --workdir=/path/to/cifar10_consistency

What differs from the paper: its teacher is EDM's network, ours the
progressive-distillation paper's (x-prediction on the cosine logSNR
schedule); its distance is LPIPS, which needs VGG weights this package
cannot ship, so the l2 distance here (`consistency.distance=pseudo_huber`
for iCT's); its optimizer is RAdam with a 10M-image warm-up, here Adam at a
constant rate. Evaluate (off by default) scores the student at 1, 2 and 4
steps, and the teacher's DDIM rows up to 8192 steps (limit them with
`--teacher_steps`).
"""

from diffusion_distillation import config as config_lib
from diffusion_distillation.configs import common
from diffusion_distillation.configs import cifar10_base


def get_config():
  config = common.distill_from(
      cifar10_base.get_config(),
      teacher_checkpoint_path=(
          'gs://gresearch/diffusion-distillation/cifar_original'),
      start_num_steps=8192,  # as configs/cifar10_distill.py (the same teacher)
      learning_rate=4e-4,
  )
  config.distillation.method = 'consistency'
  config.train.batch_size = 512
  return config_lib.add_section(
      config, 'consistency', num_updates=800_000, num_scales=18,
      solver='heun', distance='l2', target_ema=0., sigma_min=0.002,
      sigma_max=80., learning_rate=4e-4, learning_rate_anneal_type='none',
      ema_decay=0.9999, eval_steps=(1, 2, 4))
