"""Tests for diffusion_distillation.data.

The digits dataset is tested for exact determinism, resumption and process
sharding. The TFDS datasets run offline on `tfds.testing.mock_data`, which
generates random examples (random-size JPEGs for ImageNet and LSUN) from each
builder's code without downloading anything.
"""

import itertools
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from diffusion_distillation import data as data_lib
from diffusion_distillation.data import tfds as data_tfds

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture(scope='module')
def digits():
  return data_lib.get_dataset('digits', class_conditional=True)


# --- Digits --------------------------------------------------------------------


def test_digits_shapes_ranges_labels(digits):
  assert digits.data_shape == (8, 8, 1)
  assert digits.num_classes == 10
  batch = next(digits.train_batches(global_batch_size=32, seed=0))
  assert batch['image'].shape == (32, 8, 8, 1)
  assert batch['image'].dtype == np.float32
  assert batch['image'].min() >= 0 and batch['image'].max() <= 255
  assert batch['image'].max() > 200  # Scaled up from [0, 16].
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < 10
  assert len(np.unique(batch['label'])) > 1

  uncond = data_lib.get_dataset('digits')
  assert uncond.num_classes == 1
  batch = next(uncond.train_batches(global_batch_size=8, seed=0))
  assert batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['label'], 0)


def test_digits_values_are_scaled_sklearn_digits(digits):
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  raw = load_digits()
  images = np.concatenate(
      [b['image'] for b in digits.eval_batches(batch_size=1000)])
  np.testing.assert_allclose(images[..., 0], raw.images * 255 / 16, rtol=1e-6)
  # Not whole numbers: they go to the devices as they are (float32).
  batch = {'image': images[:4], 'label': np.zeros(4, np.int32)}
  assert digits.device_batch(batch) is batch


@pytest.mark.parametrize('batch_size', [100, 2000])  # 2000 > 1797 examples.
def test_digits_deterministic_and_resumable(digits, batch_size):
  fresh = take(digits.train_batches(global_batch_size=batch_size, seed=3), 22)
  again = take(digits.train_batches(global_batch_size=batch_size, seed=3), 22)
  assert_batches_equal(fresh, again)
  # Step 17 straddles the first epoch boundary when batch_size == 100.
  for k in (1, 17, 20):
    resumed = take(
        digits.train_batches(global_batch_size=batch_size, seed=3,
                             start_step=k), 22 - k)
    assert_batches_equal(resumed, fresh[k:])
  other = next(digits.train_batches(global_batch_size=batch_size, seed=4))
  assert not np.array_equal(other['image'], fresh[0]['image'])


def test_digits_epoch_is_a_permutation():
  ds = data_lib.get_dataset('digits', class_conditional=True, randflip=False)
  epoch = take(ds.train_batches(global_batch_size=599, seed=0), 3)  # 3 * 599.
  images = np.concatenate([b['image'] for b in epoch]).reshape(1797, -1)
  labels = np.concatenate([b['label'] for b in epoch])
  ref = list(ds.eval_batches(batch_size=1797))[0]
  ref_images = ref['image'].reshape(1797, -1)
  order = np.lexsort(images.T)
  ref_order = np.lexsort(ref_images.T)
  np.testing.assert_array_equal(images[order], ref_images[ref_order])
  np.testing.assert_array_equal(np.sort(labels), np.sort(ref['label']))
  assert not np.array_equal(images, ref_images)  # Shuffled.


@pytest.mark.parametrize('start_step', [0, 17])
def test_digits_process_shards_make_up_the_global_batch(digits, start_step):
  kwargs = dict(global_batch_size=100, seed=7, start_step=start_step)
  single = take(digits.train_batches(**kwargs), 3)
  shards = [
      take(digits.train_batches(**kwargs, process_index=p, process_count=4), 3)
      for p in range(4)
  ]
  for step in range(3):
    for key in ('image', 'label'):
      assert shards[0][step][key].shape[0] == 25
      np.testing.assert_array_equal(
          np.concatenate([shard[step][key] for shard in shards]),
          single[step][key])


def test_digits_random_flip(digits):
  flipped = next(digits.train_batches(global_batch_size=256, seed=1))
  plain_ds = data_lib.get_dataset('digits', class_conditional=True,
                                  randflip=False)
  plain = next(plain_ds.train_batches(global_batch_size=256, seed=1))
  np.testing.assert_array_equal(flipped['label'], plain['label'])
  same = np.all(flipped['image'] == plain['image'], axis=(1, 2, 3))
  mirrored = np.all(flipped['image'] == plain['image'][:, :, ::-1],
                    axis=(1, 2, 3))
  assert np.all(same | mirrored)
  # Roughly half of the images are flipped (ignoring symmetric ones).
  assert 0.3 < np.mean(mirrored & ~same) < 0.7


def test_digits_eval_batches(digits):
  batches = list(digits.eval_batches(batch_size=500))
  assert [len(b['label']) for b in batches] == [500, 500, 500, 297]
  shards = [
      list(digits.eval_batches(batch_size=500, process_index=p,
                               process_count=2)) for p in range(2)
  ]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(
        np.concatenate([b[key] for shard in shards for b in shard]),
        np.concatenate([b[key] for b in batches]))


def test_invalid_arguments(digits):
  with pytest.raises(ValueError, match='imagenet32.*known.*cifar10'):
    data_lib.get_dataset('imagenet32')
  with pytest.raises(ValueError, match='divisible'):
    next(digits.train_batches(global_batch_size=10, seed=0, process_count=3))
  with pytest.raises(ValueError, match='process_index'):
    next(digits.train_batches(global_batch_size=10, seed=0, process_index=2,
                              process_count=2))
  with pytest.raises(ValueError, match='class labels'):
    data_lib.get_dataset('lsun_church128', class_conditional=True)


@pytest.mark.heavy  # starts a process
def test_digits_does_not_import_tensorflow():
  # Building a TFDS data set does not import TensorFlow either: only its
  # iterators do.
  code = ('import sys; from diffusion_distillation import data as data_lib; '
          'assert "digits" in data_lib.DATASET_NAMES; '
          '[data_lib.get_dataset(n, tfds_name="mnist", path="/nonexistent", '
          'image_size=32) for n in data_lib.DATASET_NAMES]; '
          'next(data_lib.get_dataset("digits").train_batches('
          'global_batch_size=4, seed=0)); '
          'assert "tensorflow" not in sys.modules, "tensorflow imported"')
  subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, check=True)


def test_tfds_dataset_without_tensorflow_names_the_extra(monkeypatch):
  """Without the tfds extra, asking for its data sets fails in one line."""
  monkeypatch.chdir(REPO_ROOT)  # the checkout this package is installed from
  import importlib.util  # pylint: disable=g-import-not-at-top
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, 'find_spec',
      lambda name, *a: None if name == 'tensorflow_datasets' else find_spec(
          name, *a))
  with pytest.raises(data_tfds.MissingExtraError,
                     match=r"'cifar10' is read with TensorFlow Datasets, but "
                     r"tensorflow_datasets is not installed; install the "
                     r"tfds extra: pip install -e '\.\[tfds\]'"):
    data_lib.get_dataset('cifar10')
  assert isinstance(data_lib.get_dataset('digits'), data_lib.Digits)


def test_from_config():
  config = ml_collections.ConfigDict(dict(dataset=dict(
      name='digits', args=dict(class_conditional=True, randflip=False),
      data_dir='')))
  ds = data_lib.from_config(config)
  assert isinstance(ds, data_lib.Digits)
  assert ds.num_classes == 10 and not ds.randflip
  config.dataset.name = 'cifar10'
  assert data_lib.from_config(config).data_dir is None  # '': the TFDS default.
  config.dataset.data_dir = '/tfds'
  assert data_lib.from_config(config).data_dir == '/tfds'


# --- TFDS datasets (mocked) ---------------------------------------------------


@pytest.fixture(scope='module')
def tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_lib.import_tensorflow()
  return tfds


def mock_data(tfds, num_examples=8):
  # USE_CODE: build the features from the builder class, never look for
  # metadata files (AUTO falls back to it as well; this avoids the lookup).
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def check_batch(batch, batch_size, shape, num_classes):
  assert batch['image'].shape == (batch_size, *shape)
  assert batch['image'].dtype == np.float32
  assert 0 <= batch['image'].min() and batch['image'].max() <= 255
  assert batch['label'].shape == (batch_size,)
  assert batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < num_classes


def test_cifar10(tfds):
  with mock_data(tfds):
    ds = data_lib.get_dataset('cifar10', class_conditional=True,
                              data_dir='/nonexistent')
    assert ds.data_shape == (32, 32, 3) and ds.num_classes == 10
    train = take(ds.train_batches(global_batch_size=8, seed=0, process_index=1,
                                  process_count=2), 6)
    eval_batches = list(ds.eval_batches(batch_size=3))
    again = take(ds.train_batches(global_batch_size=8, seed=0, process_index=1,
                                  process_count=2), 6)
    resumed = next(ds.train_batches(global_batch_size=8, seed=0, start_step=4,
                                    process_index=1, process_count=2))
    whole = next(ds.train_batches(global_batch_size=8, seed=0, start_step=4))
    first = next(ds.train_batches(global_batch_size=8, seed=0, start_step=4,
                                  process_count=2))
  for batch in train:
    check_batch(batch, 4, (32, 32, 3), 10)
    device = ds.device_batch(batch)  # to the devices as uint8, losslessly
    assert device['image'].dtype == np.uint8
    np.testing.assert_array_equal(device['image'], batch['image'])
  assert [len(b['label']) for b in eval_batches] == [3, 3, 2]
  assert_batches_equal(train, again)  # Seeded.
  assert_batches_equal([resumed], train[4:5])  # Resumed exactly.
  for key in whole:  # The processes' shares make up the global batch.
    np.testing.assert_array_equal(whole[key],
                                  np.concatenate([first[key], resumed[key]]))

  # Training images are the eval images (mock splits are identical), some of
  # them flipped.
  ref = np.concatenate([b['image'] for b in eval_batches])
  ref_labels = np.concatenate([b['label'] for b in eval_batches])
  flips = []
  for image, label in zip(np.concatenate([b['image'] for b in train]),
                          np.concatenate([b['label'] for b in train])):
    same = np.all(ref == image, axis=(1, 2, 3))
    mirrored = np.all(ref[:, :, ::-1] == image, axis=(1, 2, 3))
    assert np.any(same | mirrored)
    assert label in ref_labels[same | mirrored]
    flips.append(np.any(mirrored & ~same))
  assert 0 < np.mean(flips) < 1


def test_imagenet64(tfds):
  with mock_data(tfds):
    ds = data_lib.get_dataset('imagenet64', class_conditional=True)
    assert ds.data_shape == (64, 64, 3) and ds.num_classes == 1000
    train = next(ds.train_batches(global_batch_size=4, seed=0))
    eval_batch = next(ds.eval_batches(batch_size=8))
  check_batch(train, 4, (64, 64, 3), 1000)
  check_batch(eval_batch, 8, (64, 64, 3), 1000)
  assert len(np.unique(eval_batch['label'])) > 1


@pytest.mark.parametrize('name', ['lsun_church128', 'lsun_bedroom128'])
def test_lsun128(tfds, name):
  with mock_data(tfds):
    ds = data_lib.get_dataset(name)
    assert ds.data_shape == (128, 128, 3) and ds.num_classes == 1
    train = next(ds.train_batches(global_batch_size=4, seed=0))
    eval_batch = next(ds.eval_batches(batch_size=8))
  check_batch(train, 4, (128, 128, 3), 1)
  check_batch(eval_batch, 8, (128, 128, 3), 1)
  assert eval_batch['image'].std() > 10  # Not a blank image.


def test_central_square_crop(tfds):
  del tfds
  tf, _ = data_lib.import_tensorflow()
  # A 6x10 image whose columns 2..7 (the central square) are white.
  image = np.zeros((6, 10, 3), np.uint8)
  image[:, 2:8] = 255
  jpeg = tf.io.encode_jpeg(image, quality=100)
  crop = data_tfds.decode_and_central_square_crop(jpeg).numpy()
  assert crop.shape == (6, 6, 3)
  assert crop.min() > 200
  tall = data_tfds.decode_and_central_square_crop(
      tf.io.encode_jpeg(np.transpose(image, (1, 0, 2)), quality=100)).numpy()
  assert tall.shape == (6, 6, 3) and tall.min() > 200


@pytest.mark.parametrize('source', ['memory', 'random_access'])
def test_tfds_sources_read_by_index_resume_exactly(tfds, source):
  with mock_data(tfds, num_examples=10):
    ds = data_lib.get_dataset('imagenet64', class_conditional=True,
                              source=source)
    train = take(ds.train_batches(global_batch_size=4, seed=1), 4)
    resumed = next(ds.train_batches(global_batch_size=4, seed=1,
                                    start_step=3))
    evals = list(ds.eval_batches(batch_size=4))
  for batch in train:
    check_batch(batch, 4, (64, 64, 3), 1000)
  assert_batches_equal([resumed], train[3:])
  assert [len(b['label']) for b in evals] == [4, 4, 2]


def test_tfds_stream_fallback_says_resume_is_not_exact(tfds, caplog):
  with mock_data(tfds), caplog.at_level('WARNING'):
    ds = data_lib.get_dataset('cifar10', source='tf_data')
    check_batch(next(ds.train_batches(global_batch_size=4, seed=0)), 4,
                (32, 32, 3), 1)
  assert 'does NOT replay' in caplog.text


def test_any_tfds_builder_by_name(tfds):
  config = ml_collections.ConfigDict(data_lib_config(
      'tfds', tfds_name='oxford_flowers102', image_size=16))
  with mock_data(tfds, num_examples=6):
    ds = data_lib.from_config(config)
    assert ds.num_classes == 102 and ds.data_shape == (16, 16, 3)
    batches = take(ds.train_batches(global_batch_size=4, seed=0), 3)
    assert ds.num_train == 6
  for batch in batches:
    check_batch(batch, 4, (16, 16, 3), 102)
  with pytest.raises(ValueError, match="no class feature 'kind'"):
    data_lib.get_dataset('tfds', tfds_name='oxford_flowers102', image_size=16,
                         class_conditional=True, label_key='kind').num_classes


def data_lib_config(name, **dataset):
  """A config's dataset section (class-conditional) with these fields."""
  from diffusion_distillation import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  config.dataset.name = name
  config.dataset.args.class_conditional = True
  config.dataset.update(dataset)
  return config.to_dict()
