r"""`diffusion_distillation.main`, recording which training data it reads.

    python tests/multihost_worker.py --config=configs/digits.py --workdir=... \
        [--coordinator_address=... --num_processes=... --process_id=...]

Exactly the training CLI, except that every call of the digits dataset's
`train_batches` appends one JSON line to $DD_SHARD_LOG: the arguments the
pipeline passed (process index and count, seed, start step, global batch size)
and the first batch it got. tests/test_multihost.py checks from these that each
process of a multi-process run read its own share of every global batch.

$DD_DELAY_PROCESS=`I:SECONDS` makes process I sleep before it asks for its
first batch, i.e. arrive that much later than the others at the first training
step's collectives (XLA:CPU's gloo gives up after 30 s on a group's first
collective unless `distributed.initialize` connected it up front).
"""

import itertools
import json
import os
import time

from absl import app

from diffusion_distillation import datasets
from diffusion_distillation import main as main_lib


def _record_train_batches(log_path, delay_process=None, delay_secs=0.):
  original = datasets.Digits.train_batches
  delayed = []

  def train_batches(self, **kwargs):
    if kwargs['process_index'] == delay_process and not delayed:
      delayed.append(True)
      time.sleep(delay_secs)
    batches = original(self, **kwargs)
    first = next(batches)
    record = dict(kwargs, pid=os.getpid(),
                  first_images=first['image'].tolist(),
                  first_labels=first['label'].tolist())
    with open(log_path, 'a') as f:  # a local test log, never the workdir
      f.write(json.dumps(record) + '\n')
    return itertools.chain([first], batches)

  datasets.Digits.train_batches = train_batches


if __name__ == '__main__':
  delay = os.environ.get('DD_DELAY_PROCESS')
  process, secs = delay.split(':') if delay else (None, 0)
  _record_train_batches(os.environ['DD_SHARD_LOG'],
                        None if process is None else int(process), float(secs))
  app.run(main_lib.main)
