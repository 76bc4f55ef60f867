r"""Writes the FID Inception weights of a `.pb` graph to an `.npz`.

    python -m diffusion_distillation.inception_weights \
        --pb=classify_image_graph_def.pb --npz=inception.npz

The `.npz` holds only the tensors the network needs (smaller and faster to
read than the graph); `--inception_path` / `config.eval.inception_path`
accept either. Neither needs TensorFlow.
"""

from absl import flags

from diffusion_distillation.cli import common
from diffusion_distillation.cli import ending
from diffusion_distillation.evaluation.metrics import inception

FLAGS = flags.FLAGS


def define_flags():
  common.DEFINE_path('pb', None,
                     f'{inception.GRAPH_FILENAME}, the 2015-12-05 Inception '
                     f'graph from {inception.INCEPTION_URL}.', required=True)
  common.DEFINE_path('npz', None, 'Output .npz file.', required=True)


def main(argv):
  del argv  # checked by ending.run
  try:
    print(inception.convert(FLAGS.pb, FLAGS.npz))
  except (FileNotFoundError, inception.InceptionWeightsError) as e:
    common.fail(str(e))


def run():
  define_flags()
  ending.run(main)
