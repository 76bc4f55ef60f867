"""`data.image_folder.ImageFolder`: batches, splits, labels, index, refusals."""

import json
import os
import logging

import numpy as np
from PIL import Image
import pytest

from diffusion_distillation.data.image_folder import ImageFolder
from diffusion_distillation.data.image_folder import ImageFolderError

SIZE = 8


def save(path, array, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array, mode).save(path)
  return path


def random_rgb(seed, shape=(10, 12, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def folder(tmp_path, count=10):
  """`count` random 12x10 images, PNG but for one JPEG and one WebP."""
  root = tmp_path / 'images'
  for i in range(count):
    ext = {0: 'jpg', 1: 'WEBP'}.get(i, 'png')
    save(root / f'img{i:02d}.{ext}', random_rgb(i))
  (root / 'notes.txt').write_text('not an image')
  save(root / '.hidden' / 'x.png', random_rgb(99))
  return root


def dataset(root, **kwargs):
  kwargs.setdefault('image_size', SIZE)
  return ImageFolder(path=str(root), **kwargs)


def refusal(make, *words):
  """The one-line message of the ImageFolderError `make()` raises."""
  with pytest.raises(ImageFolderError) as excinfo:
    make()
  message = str(excinfo.value)
  assert '\n' not in message
  for word in words:
    assert word in message, message
  return message


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_batches_have_the_documented_shapes_and_values(tmp_path):
  data = dataset(folder(tmp_path))
  assert data.data_shape == (SIZE, SIZE, 3) and data.whole_pixels
  assert (data.num_train, data.num_eval, data.num_classes) == (9, 1, 1)
  batch = next(data.train_batches(global_batch_size=4, seed=0))
  assert batch['image'].shape == (4, SIZE, SIZE, 3)
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
  assert np.all(batch['image'] == np.round(batch['image']))
  assert batch['image'].min() >= 0 and batch['image'].max() <= 255
  assert np.all(batch['label'] == 0)
  held_out = list(data.eval_batches(batch_size=4))
  assert [len(b['image']) for b in held_out] == [1]
  train = list(data.eval_batches(batch_size=4, split='train'))
  assert [len(b['label']) for b in train] == [4, 4, 1]


def test_training_batches_resume_exactly_on_any_process_count(tmp_path):
  data = dataset(folder(tmp_path))
  batches = take(data.train_batches(global_batch_size=4, seed=3), 6)
  resumed = next(data.train_batches(global_batch_size=4, seed=3, start_step=4))
  np.testing.assert_array_equal(resumed['image'], batches[4]['image'])
  halves = [take(data.train_batches(global_batch_size=4, seed=3,
                                    process_index=p, process_count=2), 6)
            for p in range(2)]
  for step, batch in enumerate(batches):
    np.testing.assert_array_equal(
        np.concatenate([h[step]['image'] for h in halves]), batch['image'])
  again = take(dataset(folder(tmp_path)).train_batches(
      global_batch_size=4, seed=3), 6)
  for a, b in zip(again, batches):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_central_square_crop(tmp_path):
  root = tmp_path / 'wide'
  wide = random_rgb(0, (SIZE, 2 * SIZE, 3))
  save(root / 'a.png', wide)
  save(root / 'b.png', wide)
  data = dataset(root, randflip=False)
  batch = next(data.eval_batches(batch_size=2, split='train'))
  np.testing.assert_array_equal(batch['image'][0],
                                wide[:, SIZE // 2:SIZE // 2 + SIZE])


def test_labels_come_from_the_sub_folders(tmp_path, monkeypatch):
  root = tmp_path / 'classes'
  for name, value in (('cat', 0), ('dog', 255)):
    for i in range(4):
      save(root / name / 'deep' / f'{i}.png', np.full((9, 9, 3), value,
                                                       np.uint8))
  (root / 'empty').mkdir()
  (root / 'empty' / 'readme.txt').write_text('no images here')
  data = dataset(root, class_conditional=True, labels_from_subfolders=True)
  with monkeypatch.context() as patch:  # the class count decodes nothing
    patch.setattr(Image, 'open', lambda *a, **k: 1 / 0)
    assert data.num_classes == 2
  for split in ('train', 'eval'):
    for batch in data.eval_batches(batch_size=3, split=split):
      np.testing.assert_array_equal(batch['label'] * 255,
                                    batch['image'][:, 0, 0, 0])
  unconditional = dataset(root, labels_from_subfolders=True)
  assert unconditional.num_classes == 1
  batch = next(unconditional.train_batches(global_batch_size=8, seed=0))
  assert np.all(batch['label'] == 0)


def test_labels_refuse_loose_images_and_a_single_class(tmp_path):
  root = tmp_path / 'classes'
  save(root / 'cat' / 'a.png', random_rgb(0))
  save(root / 'cat' / 'b.png', random_rgb(1))
  labelled = lambda: dataset(root, labels_from_subfolders=True).prepare()
  refusal(labelled, str(root), 'at least 2', "'cat'")
  save(root / 'loose.png', random_rgb(2))
  save(root / 'dog' / 'c.png', random_rgb(3))
  refusal(labelled, str(root), "'loose.png'")
  refusal(lambda: dataset(root, class_conditional=True),
          'dataset.labels_from_subfolders=true')


def test_the_index_is_written_and_reused_without_decoding(tmp_path,
                                                          monkeypatch):
  root, index = folder(tmp_path), tmp_path / 'wd' / 'index.json'
  first = dataset(root, index_path=str(index))
  first.prepare()
  first.prepare()  # idempotent
  written = json.loads(index.read_text())
  assert written['path'] == str(root) and len(written['entries']) == 10
  assert {'relpath', 'size', 'mtime', 'label', 'width', 'height', 'mode',
          'skipped'} <= set(written['entries'][0])
  assert [p.name for p in (tmp_path / 'wd').iterdir()] == ['index.json']
  monkeypatch.setattr(Image, 'open', lambda *a, **k: 1 / 0)
  second = dataset(root, index_path=str(index))
  assert (second.num_train, second.num_eval) == (first.num_train,
                                                first.num_eval)
  reader = dataset(root, index_path=str(tmp_path / 'other.json'),
                   write_index=False)
  with pytest.raises(ImageFolderError):  # without an index it must decode
    reader.prepare()
  assert not (tmp_path / 'other.json').exists()


def test_a_changed_folder_is_refused(tmp_path):
  root, index = folder(tmp_path), str(tmp_path / 'index.json')
  dataset(root, index_path=index).prepare()
  save(root / 'sub' / 'new.png', random_rgb(20))
  (root / 'img05.png').unlink()
  save(root / 'img06.png', random_rgb(21, (20, 20, 3)))
  refusal(lambda: dataset(root, index_path=index).prepare(), str(root), index,
          "1 added, e.g. 'sub/new.png'", "1 removed, e.g. 'img05.png'",
          "1 changed, e.g. 'img06.png'", '--workdir')
  refusal(lambda: dataset(root, index_path=index,
                          labels_from_subfolders=True).prepare(), index)


def test_refusals_of_unusable_folders(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'a.txt').write_text('text')
  refusal(lambda: dataset(empty).prepare(), str(empty), '.png', '.webp')
  missing = tmp_path / 'missing'
  data = dataset(missing)  # cheap: nothing is listed yet
  refusal(data.prepare, str(missing), 'not a directory')
  one = tmp_path / 'one'
  save(one / 'a.png', random_rgb(0))
  refusal(lambda: dataset(one).prepare(), str(one), 'at least 2')
  small = folder(tmp_path)
  save(small / 'tiny.png', random_rgb(0, (5, 7, 3)))
  refusal(lambda: dataset(small).prepare(), str(small), "'tiny.png' (7x5)",
          'dataset.image_size')
  refusal(lambda: dataset(small, eval_fraction=0.6), 'dataset.eval_fraction')


def test_unreadable_files_are_refused_or_skipped(tmp_path, caplog):
  root = folder(tmp_path)
  (root / 'bad.jpg').write_bytes(b'not a jpeg')
  truncated = (root / 'img03.png').read_bytes()
  (root / 'zcut.png').write_bytes(truncated[:len(truncated) // 2])
  message = refusal(lambda: dataset(root).prepare(), str(root / 'bad.jpg'),
                    'cannot identify image file', '1 other',
                    'dataset.skip_unreadable=true')
  assert 'BytesIO' not in message
  caplog.set_level(logging.INFO)
  data = dataset(root, skip_unreadable=True)
  assert data.num_train + data.num_eval == 10
  assert 'skipped 2 unreadable files (first: bad.jpg: ' in caplog.text


def test_decoded_images_are_kept_in_memory(tmp_path, monkeypatch):
  data = dataset(folder(tmp_path))
  first = list(data.eval_batches(batch_size=4, split='train'))
  monkeypatch.setattr(Image, 'open', lambda *a, **k: 1 / 0)
  again = list(data.eval_batches(batch_size=4, split='train'))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_a_file_that_breaks_during_training_is_named(tmp_path):
  root = folder(tmp_path)
  data = dataset(root)
  data.prepare()
  for path in root.glob('*.png'):
    path.write_bytes(b'broken')
  refusal(lambda: list(data.eval_batches(batch_size=4, split='train')),
          'cannot read image', '--workdir')


def test_grey_16_bit_and_alpha_become_rgb(tmp_path, caplog):
  root = tmp_path / 'modes'
  save(root / 'a_grey.png', np.full((SIZE, SIZE), 100, np.uint8), 'L')
  save(root / 'b_grey16.png', np.full((SIZE, SIZE), 257 * 30, np.uint16))
  rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
  rgba[...] = (10, 20, 30, 255)
  rgba[0, 0] = (10, 20, 30, 0)
  save(root / 'c_rgba.png', rgba, 'RGBA')
  Image.new('RGB', (SIZE, SIZE), (200, 0, 0)).save(root / 'd.webp',
                                                     lossless=True)
  caplog.set_level(logging.INFO)
  data = dataset(root, eval_fraction=0.25, randflip=False)
  images = np.concatenate([b['image'] for split in ('train', 'eval')
                           for b in data.eval_batches(batch_size=4,
                                                      split=split)])
  by_value = {int(image[1, 1, 0]): image for image in images}
  assert np.all(by_value[100] == 100) and np.all(by_value[30] == 30)
  np.testing.assert_array_equal(by_value[200][0, 0], [200, 0, 0])
  alpha = by_value[10]
  np.testing.assert_array_equal(alpha[0, 0], [255, 255, 255])
  np.testing.assert_array_equal(alpha[1, 1], [10, 20, 30])
  assert ('2 grey-scale / palette images converted to RGB, 1 with alpha '
          'composited over white') in caplog.text
  assert f'image_folder: {root}: 4 images (3 train, 1 held out)' in caplog.text


def test_photos_train_as_their_exif_orientation_shows_them(tmp_path):
  root = tmp_path / 'photos'
  root.mkdir()
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to view
  for name in ('a.jpg', 'b.jpg'):  # stored on its side, as phones do
    Image.fromarray(random_rgb(0, (SIZE, 2 * SIZE, 3))).save(
        root / name, exif=exif, quality=100)
  index = tmp_path / 'index.json'
  data = dataset(root, randflip=False, index_path=str(index))
  batch = next(data.eval_batches(batch_size=2, split='train'))
  stored = np.asarray(Image.open(root / 'a.jpg').convert('RGB'))
  upright = np.rot90(stored, k=-1)  # a portrait, 2 * SIZE high
  np.testing.assert_array_equal(
      batch['image'][0], upright[SIZE // 2:SIZE // 2 + SIZE])
  entry = json.loads(index.read_text())['entries'][0]
  assert (entry['width'], entry['height']) == (SIZE, 2 * SIZE)


def test_an_index_of_the_format_without_orientation_is_refused(tmp_path):
  root, index = folder(tmp_path), tmp_path / 'index.json'
  dataset(root, index_path=str(index)).prepare()
  old = json.loads(index.read_text())
  index.write_text(json.dumps(dict(old, format=1)))
  refusal(lambda: dataset(root, index_path=str(index)).prepare(),
          str(index), 'EXIF orientation', 'new --workdir')


def test_links_pipes_and_other_files_are_left_out_and_counted(tmp_path,
                                                              caplog):
  root = folder(tmp_path)  # and its notes.txt
  (root / 'gone.png').symlink_to(tmp_path / 'deleted.png')
  os.mkfifo(root / 'pipe.png')  # would block a reader forever
  save(root / 'anim.gif', random_rgb(1))
  save(tmp_path / 'elsewhere' / 'x.png', random_rgb(2))
  (root / 'linked').symlink_to(tmp_path / 'elsewhere')
  caplog.set_level(logging.INFO)
  data = dataset(root)
  data.prepare()
  assert data.num_train + data.num_eval == 10
  left_out = [r.getMessage() for r in caplog.records if 'left out' in r.message]
  assert left_out == [
      f'image_folder: {root}: left out 1 .gif files, 1 .txt files, '
      '2 dangling links and non-regular files, 1 linked folders']


def test_a_split_smaller_than_the_batch_is_said_once(tmp_path, caplog):
  data = dataset(folder(tmp_path, count=5))
  with caplog.at_level(logging.WARNING):
    for stage in range(3):
      next(data.train_batches(global_batch_size=16, seed=stage))
  said = [r.getMessage() for r in caplog.records
          if 'fewer than the batch' in r.getMessage()]
  assert said == [f'the training split has {data.num_train} images, fewer '
                  'than the batch of 16: every batch repeats them (more '
                  'images, or a smaller --config.train.batch_size)']


def test_a_folder_of_images_only_says_nothing_was_left_out(tmp_path, caplog):
  for i in range(3):
    save(tmp_path / 'images' / f'{i}.png', random_rgb(i))
  caplog.set_level(logging.INFO)
  dataset(tmp_path / 'images').prepare()
  assert not [r for r in caplog.records if 'left out' in r.getMessage()]
