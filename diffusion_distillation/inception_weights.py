"""The `inception_weights` command: see cli/inception_weights.py."""

from diffusion_distillation.cli import inception_weights

if __name__ == '__main__':
  inception_weights.run()
