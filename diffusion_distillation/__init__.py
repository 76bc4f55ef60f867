"""Progressive Distillation for Fast Sampling of Diffusion Models, in JAX/Flax.

A faithful, runnable port of the official google-research code (Salimans & Ho,
ICLR 2022): train a diffusion teacher, then halve its DDIM sampler's steps stage
by stage with a student that matches two teacher steps in one.
"""

__version__ = '0.1.0'
