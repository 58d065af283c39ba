"""Stage crf: DenseCRF of the stored RecurSeed seeds -> pseudo masks (palette PNGs).

Resumable per image. When the seeds stage runs in the same invocation it streams its seeds into
the CRF pool itself (stages/seeds.py) and marks this stage done too.
"""

import numpy as np

from recurseed_jax import crf as crf_lib
from recurseed_jax import infer
from recurseed_jax import processes
from recurseed_jax.stages import products

OUTPUTS = ('pseudo_masks',)


def crf_image(config, image):
  """The image the CRF's bilateral kernel sees (config.crf.image)."""
  return crf_lib.crf_image(image, config.crf.image, config.data.mean, config.data.std)


def seed_item(config, image_id, image, scores, classes):
  """A stored seed's CRF item: (id, CRF image, background + kept-class scores, their labels).

  `scores` is what the seed file holds, so a CRF resumed from disk and one fed straight from
  the device get the same input.
  """
  labels = np.concatenate([[0], np.asarray(classes, np.int64) + 1])
  return (image_id, crf_image(config, image), infer.host_seed(scores, config.infer.bg_power),
          labels)


def pool_kwargs(config, total, desc='crf'):
  """crf.run_crf's keyword arguments from config.crf."""
  return dict(params=crf_lib.crf_params_from_config(config.crf), workers=config.crf.workers,
              queue_size=config.crf.queue_size, desc=desc, total=total)


def run(ctx):
  cfg = ctx.config
  train = ctx.data.split('train')
  todo = products.missing_masks(ctx, train, indices=processes.share(len(train)))

  def items():
    for i in todo:
      seed = products.load_seed(ctx, train.ids[i])
      yield seed_item(cfg, train.ids[i], train.image(i), seed['rs'], seed['classes'])

  crf_lib.run_crf(items(), ctx.path('pseudo_masks'), **pool_kwargs(cfg, len(todo)))
  return dict(images=len(todo))
