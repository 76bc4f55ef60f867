"""Reading and writing checkpoints in the layout of the official release.

The authors of Progressive Distillation (Salimans & Ho, 2022) published their
trained models as flax msgpack files, e.g.
`gs://gresearch/diffusion-distillation/cifar_original` (the teacher) and
`.../cifar_8`, `.../imagenet_8` (distilled students). Each file is
`flax.serialization.to_bytes` of the official `TrainState` dataclass, so after
`msgpack_restore` it is a plain dict:

    {'step': int,
     'optimizer': {'target': params,                      # flax.optim
                   'state': {'step': int, 'param_states': ...}},
     'ema_params': params,                                # used for sampling
     'num_sample_steps': int}                             # 0 = not recorded

`params` is the `params` collection of the official Linen UNet, whose module
names (`dense0`, `conv_in`, `down_0.block_0`, `mid.attn_1`, ...) our UNet keeps.

A checkpoint path is either such a file, or a directory of files named
`checkpoint_<step>` (what the official training loop writes); the one with the
highest step is used, as the official `latest_checkpoint_path` does.
Paths go through `etils.epath`, so `gs://` works where the `gcs` extra
(gcsfs) is installed.
"""

import re
from typing import Any, Optional, Tuple

from absl import logging
from etils import epath
from flax import linen as nn
from flax import serialization
import jax
import numpy as np

from diffusion_distillation import files

# File names written by the official `save_checkpoint` (prefix + step).
_CHECKPOINT_FILE_RE = re.compile(
    r'checkpoint_([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)')
# First byte of a msgpack map: fixmap (0x80-0x8f), map16 (0xde), map32 (0xdf).
_MSGPACK_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xde, 0xdf}

# The key of the description that `export` adds (api/exporting.py).
EXPORT_DESCRIPTION = 'diffusion_distillation'

_ARCH_MISMATCH = "does not match the config's architecture"


def _checkpoint_files(directory: epath.Path):
  """(step, path) of the `checkpoint_<step>` files in `directory`."""
  found = []
  for child in directory.iterdir():
    match = _CHECKPOINT_FILE_RE.fullmatch(child.name)
    if match and child.is_file():
      found.append((float(match.group(1)), child))
  return sorted(found, key=lambda sp: sp[0])


def resolve_checkpoint_file(path) -> epath.Path:
  """The checkpoint file `path` names: itself, or a directory's latest one.

  Raises:
    FileNotFoundError: `path` does not exist, or is a directory without any
      `checkpoint_<step>` file.
  """
  p = epath.Path(path)
  if p.is_dir():
    files = _checkpoint_files(p)
    if not files:
      raise FileNotFoundError(
          f'No official checkpoint file (checkpoint_<step>) in directory '
          f'{path}')
    return files[-1][1]
  if not p.exists():
    raise FileNotFoundError(f'Checkpoint not found: {path}')
  return p


def _looks_like_msgpack_map(p: epath.Path) -> bool:
  with p.open('rb') as f:
    head = f.read(1)
  return len(head) == 1 and head[0] in _MSGPACK_MAP_FIRST_BYTES


def is_official_checkpoint(path) -> bool:
  """Whether `path` is an official-layout msgpack checkpoint (file or dir).

  True for a msgpack file, or for a directory holding `checkpoint_<step>`
  msgpack files. False for anything else, in particular an orbax checkpoint
  directory (whose entries are directories and metadata files) and a path
  that does not exist.
  """
  try:
    return _looks_like_msgpack_map(resolve_checkpoint_file(path))
  except (OSError, ValueError):
    return False


def read_official_state(path) -> Tuple[epath.Path, dict]:
  """(resolved file, restored state dict) of the checkpoint at `path`."""
  file = resolve_checkpoint_file(path)
  data = file.read_bytes()
  try:
    state = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated exception types.
    raise ValueError(
        f'{file} is not a flax msgpack checkpoint ({type(e).__name__}: {e})'
    ) from None
  if not isinstance(state, dict):
    raise ValueError(f'{file} is not a flax msgpack checkpoint (top level is '
                     f'{type(state).__name__}, not a dict)')
  logging.info('Read %s %s', 'the exported model' if EXPORT_DESCRIPTION in
               state else 'the official checkpoint', file)
  return file, state


def _num_sample_steps(state: dict) -> Optional[int]:
  value = state.get('num_sample_steps')
  if value is None:
    return None
  value = int(np.asarray(value))
  return value if value > 0 else None


def _ema_params(file, state: dict) -> dict:
  params = state.get('ema_params')
  if not isinstance(params, dict) or not params:
    raise ValueError(
        f"{file} has no 'ema_params' parameter tree; top-level keys are "
        f'{sorted(state)}')
  return params


def _flatten_file_tree(tree, prefix=()):
  """{path tuple: leaf} of a restored msgpack tree (nested str-keyed dicts)."""
  flat = {}
  for key, value in tree.items():
    path = prefix + (str(key),)
    if isinstance(value, dict):
      flat.update(_flatten_file_tree(value, path))
    else:
      flat[path] = value
  return flat


def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _path_str(path) -> str:
  # Official module names contain dots ('down_0.block_0'), so use '/'.
  return '/'.join(path)


def _shape(x) -> Tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, 'shape') else tuple(np.shape(x))


def _mismatches(expected: dict, got: dict) -> list[str]:
  """Missing, extra and incompatibly shaped parameters, in path order."""
  problems = []
  for path in sorted(set(expected) | set(got)):
    name = _path_str(path)
    if path not in got:
      problems.append(
          f"parameter '{name}' is missing from the checkpoint (the model "
          f'expects shape {_shape(expected[path])})')
    elif path not in expected:
      problems.append(
          f"parameter '{name}' (shape {_shape(got[path])}) is in the "
          'checkpoint but not in the model')
    else:
      want, have = _shape(expected[path]), _shape(got[path])
      if want != have and int(np.prod(want)) != int(np.prod(have)):
        problems.append(
            f"parameter '{name}' has shape {have} in the checkpoint but shape "
            f'{want} in the model')
  return problems


def _model_leaves(abstract_params):
  """([(path, leaf)] of a model's parameter pytree, its treedef, {path tuple:
  leaf})."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(
      nn.meta.unbox(abstract_params))
  return with_path, treedef, {tuple(_key_name(e) for e in path): leaf
                              for path, leaf in with_path}


def parameter_mismatches(abstract_params, saved: dict) -> list[str]:
  """How a saved nested dict of arrays (or of their metadata) differs from a
  model's parameter tree: missing, extra, incompatibly shaped parameters."""
  return _mismatches(_model_leaves(abstract_params)[2],
                     _flatten_file_tree(saved))


def map_onto(loaded: dict, abstract_params, *, source: str = 'checkpoint'):
  """Maps a restored parameter tree onto the structure of `abstract_params`.

  Args:
    loaded: nested dict of arrays, as restored from msgpack.
    abstract_params: the model's parameter pytree (arrays or
      `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape` of `init`).
    source: how to name the loaded tree in error messages.

  Returns:
    A pytree with the structure of `abstract_params` holding float32 numpy
    arrays. A leaf whose shape differs but whose size is equal is reshaped
    (old flax `DenseGeneral` kernels were stored flattened; the official
    loader does the same `reshape`).

  Raises:
    ValueError: naming the first (in sorted path order) parameter that is
      missing, extra, or of an incompatible shape.
  """
  with_path, treedef, expected = _model_leaves(abstract_params)
  got = _flatten_file_tree(loaded)
  # Tolerate a variables dict ({'params': ...}) for the model.
  if (all(p[0] == 'params' for p in expected) and
      not any(p[0] == 'params' for p in got)):
    got = {('params',) + p: v for p, v in got.items()}

  problems = _mismatches(expected, got)
  if problems:
    more = f' (and {len(problems) - 1} more mismatches)' if len(
        problems) > 1 else ''
    raise ValueError(f'The {source} {_ARCH_MISMATCH}: {problems[0]}{more}')

  leaves, reshaped = [], 0
  for path, _ in with_path:
    key = tuple(_key_name(e) for e in path)
    want = _shape(expected[key])
    value = np.array(got[key], dtype=np.float32)
    if value.shape != want:
      value = value.reshape(want)
      reshaped += 1
    leaves.append(value)
  if reshaped:
    logging.info('Reshaped %d parameters to the model layout', reshaped)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def load_official_checkpoint(path, abstract_params) -> Tuple[Any,
                                                             Optional[int]]:
  """Loads the EMA parameters of an official checkpoint.

  Args:
    path: an official msgpack checkpoint file, or a directory of
      `checkpoint_<step>` files (the latest is used). Local or `gs://`.
    abstract_params: the model's parameter pytree, e.g.
      `jax.eval_shape(model.init, ...)['params']`.

  Returns:
    (params, num_sample_steps): `params` has the structure of
    `abstract_params` with float32 numpy arrays; `num_sample_steps` is the
    sampler step count stored in the file, or None when not recorded (0).

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: not a msgpack checkpoint, no `ema_params`, or parameters that
      do not match `abstract_params` (the first mismatching path is named).
  """
  file, state = read_official_state(path)
  return params_of_state(file, state, abstract_params)


def params_of_state(file, state: dict, abstract_params,
                    source: str = 'official checkpoint'):
  """(params, num_sample_steps) of a state read by `read_official_state`.

  For callers that look at the state's other entries before mapping its
  parameters (an exported model's description), so the file is read once.
  """
  params = map_onto(_ema_params(file, state), abstract_params,
                    source=f'{source} {file}')
  return params, _num_sample_steps(state)


def to_numpy_tree(params) -> dict:
  """Parameters as nested dicts of numpy arrays, the form msgpack stores."""
  params = serialization.to_state_dict(jax.device_get(params))
  return jax.tree.map(np.asarray, params)


def write_official_checkpoint(path, params, num_sample_steps: Optional[int],
                              step: int = 0, *, adam_state: bool = False
                              ) -> str:
  """Writes `params` as a checkpoint file in the official layout.

  The file holds `params` as both `ema_params` and `optimizer.target`, with a
  fresh optimizer state, so the official code can read it back
  (`restore_from_path(path, target=None)['ema_params']`).

  Args:
    path: file to write; if it is an existing directory, the file
      `checkpoint_<step>` inside it.
    params: parameter pytree (nested dicts / FrozenDict of arrays).
    num_sample_steps: sampler steps the parameters are meant for (None -> 0,
      which the official loader reads as "not recorded").
    step: training step to record.
    adam_state: write zero Adam moments (`grad_ema`, `grad_sq_ema`) as the
      optimizer's `param_states`, so that the file also restores into an
      official `TrainState` with a `flax.optim.Adam` optimizer. Off by
      default: it adds twice the size of `params`.

  Returns:
    The path of the file written.
  """
  p = epath.Path(path)
  if p.is_dir():
    p = p / f'checkpoint_{int(step)}'
  p.parent.mkdir(parents=True, exist_ok=True)
  params = to_numpy_tree(params)
  if adam_state:
    param_states = jax.tree.map(
        lambda x: {'grad_ema': np.zeros_like(x),
                   'grad_sq_ema': np.zeros_like(x)}, params)
  else:
    param_states = {}
  state = {
      'step': int(step),
      'optimizer': {
          'target': params,
          'state': {'step': 0, 'param_states': param_states},
      },
      'ema_params': params,
      'num_sample_steps': int(num_sample_steps or 0),
  }
  write_state(p, state)
  logging.info('Wrote official checkpoint %s', p)
  return str(p)


def write_state(path, state: dict):
  """Writes a msgpack state atomically: a reader never sees half a file."""
  files.write_bytes(path, serialization.msgpack_serialize(state))


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def describe(path) -> str:
  """A short human-readable summary of the checkpoint at `path`."""
  file, state = read_official_state(path)
  params = _ema_params(file, state)
  leaves = _flatten_file_tree(params).values()
  count = sum(int(np.size(x)) for x in leaves)
  num_sample_steps = _num_sample_steps(state)
  step = state.get('step')
  modules = sorted(params, key=_natural_key)
  lines = [
      f'checkpoint: {file}',
      f'step: {int(np.asarray(step)) if step is not None else "unknown"}',
      'num_sample_steps: '
      f'{num_sample_steps if num_sample_steps else "not recorded"}',
      f'parameters: {count:,} in {len(leaves)} arrays (ema_params)',
      f'optimizer state: '
      f'{"present" if state.get("optimizer") is not None else "absent"}',
      f'top-level modules ({len(modules)}): {", ".join(modules)}',
  ]
  return '\n'.join(lines)
