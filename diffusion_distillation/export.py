"""`python -m diffusion_distillation.export`: see cli/export.py."""

from diffusion_distillation.cli import export

if __name__ == '__main__':
  export.run()
