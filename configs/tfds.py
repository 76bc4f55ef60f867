r"""Any TFDS image data set by name: configs/image_folder.py's run on it.

    python -m diffusion_distillation.main --config=configs/tfds.py \
        --config.dataset.tfds_name=oxford_flowers102 \
        --config.dataset.image_size=64 --workdir=workdirs/flowers

Needs the `tfds` extra. The image feature is `dataset.image_key` ('image'),
the class feature `dataset.label_key` ('label', read with
`--config.dataset.args.class_conditional=true`), the splits
`dataset.train_split` ('train') and `dataset.eval_split` ('test'). Images are
cropped to their central square and resized as LSUN's (antialiased
bilinear). A split up to 4 GiB is read into memory, a larger one by index
when prepared as array_record; either resumes exactly. A larger TFRecord one
falls back to a tf.data stream, said in the log (`dataset.source`). The FID
statistics are the train split's, as for the paper's data sets.
"""

from diffusion_distillation.configs import image_folder


def get_config():
  config = image_folder.get_config()
  config.dataset.name = 'tfds'
  return config
