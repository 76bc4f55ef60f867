r"""The embedded default: scikit-learn's 8x8 digits, teacher + distillation 128 -> 1.

Runs offline on 2 CPU cores in about 5 minutes: trains a small teacher in
continuous time, distills its 128-step DDIM sampler stage by stage down to one
step, writes a sample grid per stage and evaluates every stage with the digits
classifier metric (`digits_fd`, not an Inception FID):

    python -m diffusion_distillation.main --config=configs/digits.py \
        --workdir=workdirs/digits

The teacher is the schema's defaults (diffusion_distillation/config/
fields.py: among them `train.substeps=1`, since XLA:CPU runs gradients inside
loops slowly); the students train 150 updates per halving at learning rate
1e-3. Any field can be overridden, e.g. `--config.train.num_train_steps=500`.
"""

from diffusion_distillation import config as config_lib


def get_config():
  """The defaults plus a distillation section 128 -> 1."""
  config = config_lib.default_config()
  return config_lib.add_section(config, 'distillation', steps_per_iter=150,
                                learning_rate=1e-3)
