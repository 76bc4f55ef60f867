"""`python -m diffusion_distillation.sample`: see cli/sample.py."""

from diffusion_distillation.cli import sample

if __name__ == '__main__':
  sample.run()
