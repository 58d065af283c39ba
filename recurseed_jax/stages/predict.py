"""Stage predict: the multi-stage segmenter on val (and test), as the authors' infer_seg.py.

Scales + flip at config.seg.predict_model (output stride 8, ASPP rates doubled), every label
whose mean softmax reaches config.seg.infer.class_threshold kept, then DenseCRF on those
channels. predictions/seg_<split>/<id>.png: after the CRF (the multi-stage result);
predictions/seg_<split>_nocrf/<id>.png: the argmax over the kept labels. Resumable per image.
"""

import os

from recurseed_jax import config_lib
from recurseed_jax import crf as crf_lib
from recurseed_jax import io_utils
from recurseed_jax import processes
from recurseed_jax.stages import crf as crf_stage
from recurseed_jax.stages import products
from recurseed_jax.stages import seeds as seeds_stage

OUTPUTS = tuple(f'predictions/seg_{s}{x}' for s in ('val', 'test') for x in ('', '_nocrf'))


def _todo(split, *dirs):
  """This process's images (multi-host) without a PNG in every folder."""
  return [i for i in processes.share(len(split))
          if not all(os.path.exists(os.path.join(d, f'{split.ids[i]}.png')) for d in dirs)]


def run(ctx):
  pctx = ctx.replace(config=config_lib.predict_config(ctx.config))
  cfg = pctx.config
  eng = seeds_stage.engine(pctx, segmenter=True)
  images = {}
  for split_name in ('val', 'test'):
    split, why = products.split_or_none(ctx, split_name)
    if split is None:
      if split_name == 'val':
        raise ValueError(f'predict: no val split ({why})')
      continue
    crf_dir = ctx.path('predictions', f'seg_{split_name}')
    raw_dir = ctx.path('predictions', f'seg_{split_name}_nocrf')
    os.makedirs(raw_dir, exist_ok=True)
    todo = _todo(split, crf_dir, raw_dir)
    images[split_name] = len(todo)
    if not todo:
      continue

    def items(split=split, todo=todo, raw_dir=raw_dir, split_name=split_name):
      with products.Writer(cfg.infer.io_threads) as writer:
        for i, image, out in eng.run_split({'seg': config_lib.SEGMENTER_SUBFOLDER}, split,
                                           processes.share(len(split)), None,
                                           f'predict {split_name}', todo=todo):
          res, image_id = out['seg'], split.ids[i]
          raw = os.path.join(raw_dir, f'{image_id}.png')
          if not os.path.exists(raw):
            writer.submit(io_utils.save_palette_png, raw, res['pred'])
          yield image_id, crf_stage.crf_image(cfg, image), res['probs'], res['channels']

    crf_lib.run_crf(items(), crf_dir,
                    **crf_stage.pool_kwargs(cfg, len(todo), f'crf {split_name}'))
  return dict(images=sum(images.values()), per_split=images)
