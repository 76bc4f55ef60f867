r"""CIFAR-10 TRACT, 1024 -> 32 -> 1 steps: apple/ml-tract's recipe, ported.

Distils the released teacher of configs/cifar10_distill.py
(`gs://gresearch/diffusion-distillation/cifar_original`, sampled with 1024
DDIM steps) with TRACT (docs/methods.md) in two phases, to 32 steps and then
to 1, as ml-tract's `tc_distill.py --dataset=cifar10
--time_schedule=1024,32,1 --train_len=96M` (the paper's 3.8 FID at 1 step):

    python -m diffusion_distillation.main \
        --config=configs/cifar10_tract.py --workdir=/path/to/cifar10_tract

ml-tract's values: batch 256; Adam at a constant 2e-4, gradients clipped to
norm 1; no dropout; the self-teacher's EMA 0.5; the students' EMA decay
1e-3 ** (1 / updates per phase); 96M samples split over the two phases,
196,608 updates each; x predictions clipped in the target; the loss weight
max(SNR, 1) (`snr_trunc`). Cost: each example costs what it costs in
progressive distillation (a student forward+backward and two teacher-sized
forwards, configs/cifar10_distill.py), and TRACT trains on 96M examples to
its 83M (650k updates of 128): about 1.2 times its compute.

Memory (`benchmark --memory`, XLA's estimate on CPU, float32): 1.6 GB (the
student's state, the teacher and the self-teacher) plus 161 MB per image per
device, 42.8 GB at batch 256 on one device: one 80 GB GPU, or 8 devices.
"""

from diffusion_distillation import config as config_lib
from diffusion_distillation.configs import cifar10_distill

UPDATES_PER_PHASE = 96 * 2**20 // (256 * 2)  # ml-tract's train_len=96M


def get_config():
  config = cifar10_distill.get_config()
  config.distillation.start_num_steps = 1024
  config.distillation.method = 'tract'
  config.train.batch_size = 256
  config.train.learning_rate = 2e-4
  return config_lib.add_section(
      config, 'tract', phases=(32, 1), updates_per_phase=UPDATES_PER_PHASE,
      self_teacher_ema=0.5, clip_x=True, learning_rate=2e-4,
      learning_rate_anneal_type='none',
      ema_decay=1e-3 ** (1 / UPDATES_PER_PHASE))
