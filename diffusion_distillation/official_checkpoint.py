"""The `official_checkpoint` command: see cli/official_checkpoint.py."""

from diffusion_distillation.cli import official_checkpoint

if __name__ == '__main__':
  official_checkpoint.run()
