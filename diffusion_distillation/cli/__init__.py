"""Command-line tools: `python -m diffusion_distillation.<tool>`."""
