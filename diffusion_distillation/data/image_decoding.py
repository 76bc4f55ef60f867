"""One image file as training sees it: decoded whole, turned upright, RGB,
the central square at the training size. PIL only."""

import io

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageOps

from diffusion_distillation.errors import first_line

ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')


def decode(file: epath.Path) -> Image.Image:
  """`file` decoded in full, so that a truncated file fails here, not later
  (read whole first: one request per file on a `gs://` folder), and turned
  as its EXIF orientation says (every portrait photo of a phone)."""
  image = Image.open(io.BytesIO(file.read_bytes()))
  image.load()
  return ImageOps.exif_transpose(image)  # as a viewer shows it


def reason(error: BaseException) -> str:
  if isinstance(error, Image.UnidentifiedImageError):
    return 'cannot identify image file'  # PIL's message names a buffer
  return first_line(error)


def probe(file: epath.Path) -> dict:
  """The index fields of an image: its size and mode, or why it failed."""
  try:
    image = decode(file)
  except Exception as error:  # pylint: disable=broad-except
    return dict(width=None, height=None, mode=None, alpha=None,
                skipped=reason(error))
  return dict(width=image.width, height=image.height, mode=image.mode,
              alpha=has_alpha(image), skipped=None)


def has_alpha(image: Image.Image) -> bool:
  return image.mode in ALPHA_MODES or 'transparency' in image.info


def to_rgb(image: Image.Image) -> Image.Image:
  """`image` as 8-bit RGB: alpha composited over white (a transparent
  background reads as white, not as whatever colour it hides), 16-bit grey
  scaled (PIL's conversion would clip it), other modes converted."""
  if has_alpha(image):
    white = Image.new('RGBA', image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert('RGBA')).convert('RGB')
  if image.mode.startswith('I'):
    grey = np.clip(np.round(np.asarray(image, np.float64) / 257), 0, 255)
    return Image.fromarray(grey.astype(np.uint8), 'L').convert('RGB')
  return image if image.mode == 'RGB' else image.convert('RGB')


def square(image: Image.Image, size: int) -> np.ndarray:
  """The central square of `image` (the offsets of the official LSUN
  pipeline), resized to `size` with PIL's bilinear filter, which widens when
  downscaling: the antialiasing of TensorFlow's `antialias=True`."""
  width, height = image.size
  side = min(width, height)
  top, left = height // 2 - side // 2, width // 2 - side // 2
  box = (left, top, left + side, top + side)
  image = (image.crop(box) if side == size else
           image.resize((size, size), Image.Resampling.BILINEAR, box=box))
  return np.asarray(image, np.uint8)
