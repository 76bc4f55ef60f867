r"""`diffusion_distillation.main`, recording which training data it reads.

    DD_SHARD_LOG=/tmp/shards.jsonl python tests/multihost_worker.py \
        --config=configs/digits.py --workdir=... \
        [--coordinator_address=... --num_processes=... --process_id=...]

Exactly the training CLI, except that every call of the digits dataset's
`train_batches` appends one JSON line to $DD_SHARD_LOG: the arguments the
pipeline passed (process index and count, seed, start step, global batch size)
and the first batch it got. tests/test_multihost.py checks from these that each
process of a multi-process run read its own share of every global batch.

With DD_MOCK_TFDS=N, TFDS data sets are `tfds.testing.mock_data` with N
examples per split (deterministic: the same in every process and run).
"""

import itertools
import json
import os

from diffusion_distillation import data as data_lib
from diffusion_distillation.cli import main as main_lib


def _record_train_batches(log_path):
  original = data_lib.Digits.train_batches

  def train_batches(self, **kwargs):
    batches = original(self, **kwargs)
    first = next(batches)
    record = dict(kwargs, pid=os.getpid(),
                  first_images=first['image'].tolist(),
                  first_labels=first['label'].tolist())
    with open(log_path, 'a') as f:  # a local test log, never the workdir
      f.write(json.dumps(record) + '\n')
    return itertools.chain([first], batches)

  data_lib.Digits.train_batches = train_batches


def _main():
  if not os.environ.get('DD_MOCK_TFDS'):
    return main_lib.run()
  _, tfds = data_lib.import_tensorflow()
  with tfds.testing.mock_data(num_examples=int(os.environ['DD_MOCK_TFDS']),
                              policy=tfds.testing.MockPolicy.USE_CODE):
    return main_lib.run()


if __name__ == '__main__':
  if os.environ.get('DD_SHARD_LOG'):
    _record_train_batches(os.environ['DD_SHARD_LOG'])
  _main()
