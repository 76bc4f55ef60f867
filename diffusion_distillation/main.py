"""`python -m diffusion_distillation.main`: see cli/main.py."""

from diffusion_distillation.cli import main

if __name__ == '__main__':
  main.run()
