"""A data set made of the user's own folder of images (local or `gs://`).

Every file is decoded once, before training, into an index (JSON, normally in
the workdir): a broken file, a too-small image or an empty folder stops the run
at its start, in one line, not hours into it. A resumed run reads the index
back and refuses a folder that changed since: its held-out split and the
batches already trained on would no longer be the same. The held-out split is
a fixed random `eval_fraction`, whatever the training seed; training batches
follow `base.train_order`. PIL and etils only: no TensorFlow, no JAX.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import threading
import time

from absl import logging
from etils import epath
import numpy as np

from diffusion_distillation import files
from diffusion_distillation.data import base
from diffusion_distillation.data.image_decoding import decode
from diffusion_distillation.data.image_decoding import probe
from diffusion_distillation.data.image_decoding import reason
from diffusion_distillation.data.image_decoding import square
from diffusion_distillation.data.image_decoding import to_rgb
from diffusion_distillation.errors import first_line
from diffusion_distillation.errors import UserError
from diffusion_distillation.paths import absolute_path
from diffusion_distillation.paths import is_local

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp')
# 2: images as their EXIF orientation shows them (format 1 read the stored
# pixels: portrait photos lay on their side).
INDEX_FORMAT = 2
# Decoded, resized images are kept in memory when all of them fit in this.
CACHE_BYTES = 2 * 2**30

Listing = list[tuple[str, int, int]]  # (relpath, size in bytes, mtime)


class ImageFolderError(UserError):
  """An image folder (or its index) that cannot be trained on as given."""


class ImageFolder(base.IndexedDataset):
  """The images below `path`, as `image_size` x `image_size` RGB squares.

  Nothing is listed or decoded until `prepare()`, which the first use of the
  splits calls. When all images fit in 2 GiB as uint8 squares, each is kept in
  memory after its first decode, so that later epochs decode nothing.
  """

  whole_pixels = True  # batches hold the uint8 values, as float32
  prefetch = 2

  def __init__(self, *, path: str, image_size: int,
               class_conditional: bool = False,
               labels_from_subfolders: bool = False,
               skip_unreadable: bool = False, eval_fraction: float = 0.1,
               randflip: bool = True, index_path: str | None = None,
               write_index: bool = True):
    """Checks the arguments only: building the index is `prepare()`'s job.

    Args:
      path: the folder, searched recursively (hidden files are ignored).
      image_size: the side of the square training images.
      class_conditional: whether batches carry the sub-folder labels.
      labels_from_subfolders: whether each immediate sub-folder is a class.
      skip_unreadable: skip (and log) files PIL cannot decode, not refuse.
      eval_fraction: the share of the images held out, in (0, 0.5].
      randflip: whether training images are randomly flipped left-right.
      index_path: the index's file (`None`: built anew, never written).
      write_index: whether this process writes the index (one per run does).
    """
    if class_conditional and not labels_from_subfolders:
      raise ImageFolderError(
          'dataset.args.class_conditional=true needs class labels: set '
          'dataset.labels_from_subfolders=true (one sub-folder per class)')
    if not isinstance(image_size, int) or image_size < 1:
      raise ImageFolderError(
          f'dataset.image_size={image_size!r} must be a positive integer')
    if not 0 < eval_fraction <= 0.5:
      raise ImageFolderError(
          f'dataset.eval_fraction={eval_fraction!r} must be in (0, 0.5]: at '
          'least one image is held out, and most are trained on')
    self.path, self.image_size, self.randflip = path, image_size, randflip
    self.class_conditional = class_conditional
    self.labels_from_subfolders = labels_from_subfolders
    self.skip_unreadable, self.eval_fraction = skip_unreadable, eval_fraction
    self.index_path, self.write_index = index_path, write_index
    self.data_shape = (image_size, image_size, 3)
    self._root = epath.Path(path)
    self._pool = concurrent.futures.ThreadPoolExecutor(
        os.cpu_count(), 'dd-image-folder')  # threads start on first use
    self._lock = threading.Lock()
    self._files = self._classes = self._splits = None  # see prepare()

  @property
  def num_classes(self) -> int:
    """1 unless class-conditional, else the number of class sub-folders:
    known from the listing alone, so building a model decodes no image."""
    return len(self._class_names()) if self.class_conditional else 1

  def prepare(self) -> None:
    """Builds the index, or reads it back and checks it, once.

    Raises ImageFolderError, in one line, for a folder that cannot be trained
    on: missing, empty, changed since its index, or with unreadable (unless
    `skip_unreadable`) or too small images.
    """
    with self._lock:
      if self._splits is not None:
        return
      start = time.perf_counter()
      entries = self._read_index()
      built = entries is None
      if built:
        entries = self._decode_all()
      readable = _check(self.path, self.image_size, entries,
                        self.skip_unreadable)
      written = built and bool(self.index_path) and self.write_index
      if written:
        self._write_index(entries)
      self._use(readable)
      how = (f'built in {time.perf_counter() - start:.1f}s' if built else
             f'read from {self.index_path}') + (
                 f' -> {self.index_path}' if written else '')
      classes = (f'{len(self._class_names())} classes'
                 if self.labels_from_subfolders else 'unlabelled')
      logging.info('image_folder: %s: %d images (%d train, %d held out), %s, '
                   'index %s', self.path, len(readable),
                   len(self._splits['train']), len(self._splits['eval']),
                   classes, how)

  def _listing(self) -> Listing:
    if self._files is None:
      self._files = _list_images(self.path, self._root, self._pool)
    return self._files

  def _class_names(self) -> list[str]:
    if self._classes is None:
      self._classes = _class_names(self.path, self._listing())
    return self._classes

  def _decode_all(self) -> list[dict]:
    """The index entries of the listed files, each decoded in full."""
    names = self._class_names() if self.labels_from_subfolders else []
    label = {name: i for i, name in enumerate(names)}
    listing = self._listing()
    probes = self._pool.map(probe, (self._root / r for r, _, _ in listing))
    return [dict(relpath=relpath, size=size, mtime=mtime,
                 label=label.get(relpath.split('/')[0], 0), **probe)
            for (relpath, size, mtime), probe in zip(listing, probes)]

  def _read_index(self) -> list[dict] | None:
    """The entries of an index of the folder as it is now; None if none."""
    if not self.index_path or not epath.Path(self.index_path).exists():
      return None
    try:
      index = json.loads(epath.Path(self.index_path).read_text())
      old = [(e['relpath'], e['size'], e['mtime']) for e in index['entries']]
    except (ValueError, KeyError, TypeError) as error:
      raise ImageFolderError(
          f'cannot read the index {self.index_path} of dataset.path '
          f'{self.path}: {first_line(error)}; train with a new --workdir'
      ) from error
    built_for = [index.get(k) for k in ('format', 'path',
                                        'labels_from_subfolders')]
    if built_for[1] and is_local(built_for[1]) and absolute_path(
        built_for[1]) == self.path:  # written relative by an earlier version
      built_for[1] = self.path
    if built_for[0] == 1:
      raise ImageFolderError(
          f'the index {self.index_path} of dataset.path {self.path} was '
          'built by an earlier version, which did not apply the images\' '
          'EXIF orientation (photos taken upright trained on their side); '
          'train with a new --workdir')
    if built_for != [INDEX_FORMAT, self.path, self.labels_from_subfolders]:
      raise ImageFolderError(
          f'the index {self.index_path} (format, dataset.path, '
          f'dataset.labels_from_subfolders) = {tuple(built_for)} does not fit '
          f'({INDEX_FORMAT}, {self.path}, {self.labels_from_subfolders}); keep '
          'the data set of this --workdir or train with a new --workdir')
    changes = _changes(old, self._listing())
    if changes:
      raise ImageFolderError(
          f'dataset.path {self.path} changed since its index '
          f'{self.index_path} was built ({changes}); train on the new '
          'contents with a new --workdir')
    return index['entries']

  def _write_index(self, entries: list[dict]) -> None:
    """Writes the index whole or not at all, so that a run stopped while
    writing it leaves none rather than a broken one."""
    text = json.dumps({
        'format': INDEX_FORMAT, 'path': self.path,
        'labels_from_subfolders': self.labels_from_subfolders,
        'classes': self._class_names() if self.labels_from_subfolders else [],
        'entries': entries})
    files.write_text(self.index_path, text)

  def _use(self, readable: list[dict]) -> None:
    """Sets the splits, labels and memory cache of the readable entries."""
    self._entries = readable
    self._labels = np.array([e['label'] for e in readable], np.int32)
    self._cache = self._cached = None
    count, size = len(readable), self.image_size
    if count * size * size * 3 <= CACHE_BYTES:
      self._cache = np.zeros((count, size, size, 3), np.uint8)
      self._cached = np.zeros(count, bool)
    train, held_out = _held_out(count, self.eval_fraction)
    self._splits = {'train': train, 'eval': held_out}

  def _split_size(self, split):
    self.prepare()
    return len(self._splits[split])

  def _examples(self, split, indices):
    self.prepare()
    rows = self._splits[split][indices]
    images = np.stack(list(self._pool.map(self._image, rows)))
    labels = (self._labels[rows] if self.class_conditional else
              np.zeros(len(rows), np.int32))
    return {'image': images.astype(np.float32), 'label': labels}

  def _image(self, row: int) -> np.ndarray:
    """The uint8 square of readable image `row`, decoded or from the cache."""
    if self._cache is not None and self._cached[row]:
      return self._cache[row]
    entry = self._entries[row]
    file = self._root / entry['relpath']
    try:
      image = decode(file)
      if image.size != (entry['width'], entry['height']):
        raise ValueError(f'it is {image.width}x{image.height} now, '
                         f"{entry['width']}x{entry['height']} in the index")
    except Exception as error:  # pylint: disable=broad-except
      raise ImageFolderError(
          f'cannot read image {file}, which the index of dataset.path '
          f'{self.path} lists: {reason(error)}; restore it, or train on the '
          'new contents with a new --workdir') from error
    pixels = square(to_rgb(image), self.image_size)
    if self._cache is not None:
      self._cache[row] = pixels
      self._cached[row] = True
    return pixels


def _list_images(path: str, root: epath.Path, pool) -> Listing:
  """`(relpath, size, mtime)` of every image file below `root`, by relpath.

  Hidden files and folders (a name starting with '.') are left out: editors',
  file managers' and version control's own files are not training images.
  What else is left out is counted in the log: files of other types,
  symbolic links to folders (not followed), and, in a local folder, image
  names that are no regular file (a dangling link, a pipe).
  """
  if not root.is_dir():
    raise ImageFolderError(
        f'dataset.path {path} does not exist or is not a directory')
  files, left_out = [], collections.Counter()
  local = is_local(path)
  for directory, folders, names in root.walk():  # top-down: prunes in place
    folders[:] = [f for f in folders if not f.startswith('.')]
    if local:
      if linked := [f for f in folders if os.path.islink(directory / f)]:
        left_out['linked folders'] += len(linked)
    for name in names:
      ext = os.path.splitext(name)[1].lower()
      if name.startswith('.'):
        continue
      if local and os.path.isdir(directory / name):  # Python 3.12+'s walk
        left_out['linked folders'] += 1  # lists a link to a folder here
      elif ext not in EXTENSIONS:
        left_out[f'{ext or "no extension"} files'] += 1
      elif local and not os.path.isfile(directory / name):
        left_out['dangling links and non-regular files'] += 1
      else:
        files.append(directory / name)
  if left_out:
    logging.info('image_folder: %s: left out %s', path, ', '.join(
        f'{count} {what}' for what, count in sorted(left_out.items())))
  if not files:
    raise ImageFolderError(
        f'dataset.path {path} holds no image files (read: '
        f"{', '.join(EXTENSIONS)}, in any sub-folder, any case)")
  stats = pool.map(lambda f: f.stat(), files)
  return sorted((f.relative_to(root).as_posix(), int(s.length), int(s.mtime))
                for f, s in zip(files, stats))


def _class_names(path: str, listing: Listing) -> list[str]:
  """The sorted immediate sub-folders that hold images: one class each."""
  loose = [relpath for relpath, _, _ in listing if '/' not in relpath]
  if loose:
    raise ImageFolderError(
        f'dataset.path {path} holds images outside the class sub-folders '
        f"that dataset.labels_from_subfolders=true reads, e.g. {loose[0]!r}; "
        'move them into a sub-folder')
  classes = sorted({relpath.split('/')[0] for relpath, _, _ in listing})
  if len(classes) < 2:
    raise ImageFolderError(
        f'dataset.path {path} has {len(classes)} class sub-folder with images '
        f'({classes[0]!r}), at least 2 are needed for '
        'dataset.labels_from_subfolders=true')
  return classes


def _check(path: str, image_size: int, entries: list[dict],
           skip_unreadable: bool) -> list[dict]:
  """The readable entries, refusing a folder that cannot be trained on."""
  failed = [e for e in entries if e['skipped'] is not None]
  if failed and not skip_unreadable:
    others = f' (and {len(failed) - 1} other files)' if len(failed) > 1 else ''
    raise ImageFolderError(
        f"cannot read image {epath.Path(path) / failed[0]['relpath']}: "
        f"{failed[0]['skipped']}{others}; remove it or set "
        'dataset.skip_unreadable=true')
  if failed:
    logging.warning('image_folder: skipped %d unreadable files (first: %s: '
                    '%s)', len(failed), failed[0]['relpath'],
                    failed[0]['skipped'])
  readable = [e for e in entries if e['skipped'] is None]
  if len(readable) < 2:
    raise ImageFolderError(
        f'dataset.path {path} holds {len(readable)} readable image(s); at '
        'least 2 are needed, one of them held out for evaluation')
  small = [e for e in readable if min(e['width'], e['height']) < image_size]
  if small:
    raise ImageFolderError(
        f'dataset.path {path} holds {len(small)} images whose shorter side is '
        f"smaller than dataset.image_size={image_size}, e.g. "
        f"{small[0]['relpath']!r} ({small[0]['width']}x{small[0]['height']}); "
        'set a smaller dataset.image_size or remove them')
  alpha = sum(bool(e['alpha']) for e in readable)
  converted = sum(e['mode'] != 'RGB' and not e['alpha'] for e in readable)
  if alpha or converted:
    logging.info('image_folder: %d grey-scale / palette images converted to '
                 'RGB, %d with alpha composited over white', converted, alpha)
  return readable


def _changes(old: Listing, new: Listing) -> str:
  """What was added, removed or changed from `old` to `new`; '' if nothing."""
  before = {relpath: (size, mtime) for relpath, size, mtime in old}
  after = {relpath: (size, mtime) for relpath, size, mtime in new}
  groups = (('added', sorted(after.keys() - before.keys())),
            ('removed', sorted(before.keys() - after.keys())),
            ('changed', sorted(r for r in after.keys() & before.keys()
                               if after[r] != before[r])))
  return '; '.join(f'{len(relpaths)} {what}, e.g. {relpaths[0]!r}'
                   for what, relpaths in groups if relpaths)


def _held_out(count: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """`(train, held out)` indices, each sorted: a fixed random choice of
  `max(1, round(fraction * count))` held out, whatever the training seed."""
  held_out = np.sort(np.random.default_rng(0).permutation(count)[
      :max(1, round(fraction * count))])
  return np.setdiff1d(np.arange(count), held_out), held_out
