"""Image grids: tile a batch of samples into one PNG."""

import io
import math

from etils import epath
import numpy as np
from PIL import Image

from diffusion_distillation import files


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 255] -> uint8, rounded."""
  return np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(
      np.uint8)


def tile(images: np.ndarray, *, pad: int = 1, pad_value: int = 255,
         scale: int = 1) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] into a near-square [rows*H', cols*W', C]."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'expected uint8 [N, H, W, C], got {images.dtype} '
                     f'{images.shape}')
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c),
                   pad_value, np.uint8)
  for k, image in enumerate(images):
    r, q = divmod(k, cols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    canvas[y:y + h, x:x + w] = image
  return canvas


# TensorBoard shows an image at its own width up to about this many pixels
# (a Time Series card) and shrinks a wider one, which aliases thin lines.
DASHBOARD_WIDTH = 200


def dashboard_grid(images: np.ndarray) -> np.ndarray:
  """`tile` for TensorBoard: the largest integer upscaling (separators
  included, as wide as one source pixel) whose grid fits DASHBOARD_WIDTH, so
  that it is shown crisp, pixel for pixel, never resampled."""
  cols = math.ceil(math.sqrt(len(images)))
  scale = max(1, DASHBOARD_WIDTH // (cols * (images.shape[2] + 1) + 1))
  return tile(images, scale=scale, pad=scale)


def save_grid(path, images, *, scale: int = 1) -> epath.Path:
  """Writes a PNG grid of uint8 images to `path` (local or cloud)."""
  grid = tile(images, scale=scale)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(grid).save(buffer, format='PNG')
  return files.write_bytes(path, buffer.getvalue())
