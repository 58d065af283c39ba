"""Stage train_seg: the multi-stage segmenter (a DeepLabNet, config.seg) on the pseudo masks of
config.pseudo.method (pseudo_masks/, pseudo_masks_rw/ or pseudo_masks_rw_crf/).

Cross-entropy with 255 ignored, in the same loop as RecurSeed (checkpoints, resume, jit / pmap,
the non-finite guard), in <workdir>/segmenter.
"""

import jax

from recurseed_jax import config_lib
from recurseed_jax import train as train_lib
from recurseed_jax.stages import products

OUTPUTS = (config_lib.SEGMENTER_SUBFOLDER,)


def run(ctx):
  cfg = config_lib.segmenter_config(ctx.config)
  mask_dir = ctx.path(products.pseudo_mask_folder(ctx.config))

  def batches(start_step):
    return ctx.data.train_batches(start_step, process_index=jax.process_index(),
                                  process_count=jax.process_count(), config=cfg,
                                  mask_dir=mask_dir)

  train_lib.train(cfg, ctx.path(config_lib.SEGMENTER_SUBFOLDER), ctx.num_classes,
                  supervision='seg', desc='train segmenter', data_iter_fn=batches)
  return dict(steps=int(cfg.train.steps))
