"""`python -m diffusion_distillation.evaluate`: see cli/evaluate.py."""

from diffusion_distillation.cli import evaluate

if __name__ == '__main__':
  evaluate.run()
