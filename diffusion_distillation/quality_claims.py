"""The `quality_claims` command: see cli/quality_claims.py."""

from diffusion_distillation.cli import quality_claims

if __name__ == '__main__':
  quality_claims.run()
