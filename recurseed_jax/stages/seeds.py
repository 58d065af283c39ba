"""Stage seeds: seeds of every training image, val / test predictions of the segmentation head.

seeds/train/<id>.npz (stages/products.py) for each training image without one: one decode per
image, every trained network (RecurSeed, and the plain-CAM baseline when trained) on the batch;
predictions/<name>/<id>.png for val (and the upper bound's) and test. Resumable per file. When
the crf stage runs in the same invocation, each seed goes to the CRF pool as it comes off the
device (the CRF works on the host's cores while the device goes on), then the seeds an earlier
run stored; the crf stage is then marked done with this one.
"""

import functools
import os

import numpy as np

from recurseed_jax import crf as crf_lib
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import processes
from recurseed_jax import train as train_lib
from recurseed_jax.stages import crf as crf_stage
from recurseed_jax.stages import products

OUTPUTS = ('seeds', 'predictions/val', 'predictions/val_upper_bound', 'predictions/test')


def engine(ctx, segmenter=False):
  """The inference engine over the networks trained in this workdir."""
  cfg = ctx.config

  def restore(subfolder):
    return train_lib.restore_variables(cfg, ctx.path(subfolder), ctx.num_classes)

  return infer.Engine(cfg, restore, segmenter=segmenter)


def _prediction_targets(config):
  """[(split, {output name: model subfolder})]: the segmentation head(s) on val, and on test."""
  val = {'val': 'train'}
  if config.train.upper_bound:
    val['val_upper_bound'] = 'upper_bound'
  return [('val', val), ('test', {'test': 'train'})]


def _stream(ctx, with_crf):
  """Everything the stage does, resumably; yields CRF items when `with_crf`."""
  cfg = ctx.config
  train = ctx.data.split('train')
  os.makedirs(ctx.path('seeds', 'train'), exist_ok=True)
  mine = processes.share(len(train))  # this process's images (multi-host)
  todo = [i for i in mine if not os.path.exists(products.seed_path(ctx, train.ids[i]))]
  eng = engine(ctx)
  encode = functools.partial(infer.encode_seed, dtype=cfg.infer.seed_dtype)
  with products.Writer(cfg.infer.io_threads) as writer:
    if todo:
      names = {'rs': 'train'}
      if cfg.train.cam_baseline:
        names['cam'] = 'cam_baseline'
      # From every image: the same program whatever the split over processes or the resume.
      num_kept = max(1, int((train.labels > 0).sum(axis=1).max()))
      # The baseline's seeds are its CAM: its segmentation head (half its forward) never runs.
      for i, image, out in eng.run_split(names, train, mine, num_kept, 'seeds', todo=todo,
                                         heads={'cam': ('cam',)}):
        image_id = train.ids[i]
        rs = out['rs']
        arrays = dict(classes=rs['classes'].astype(np.uint8), rs=encode(rs['seg']),
                      rs_cam=encode(rs['cam']))
        if 'cam' in out:
          arrays['cam'] = encode(out['cam']['cam'])
        writer.submit(io_utils.save_npz_compressed, products.seed_path(ctx, image_id), **arrays)
        if with_crf and not os.path.exists(products.mask_path(ctx, image_id)):
          # What was stored, not the float seed: a CRF resumed from disk gives the same masks.
          yield crf_stage.seed_item(cfg, image_id, image, arrays['rs'], arrays['classes'])
    for split_name, names in _prediction_targets(cfg):
      if split_name == 'val':
        split = ctx.data.split('val')
      else:
        split, _ = products.split_or_none(ctx, split_name)  # only some datasets have a test split
        if split is None:
          continue
      dirs = {key: ctx.path('predictions', key) for key in names}
      for d in dirs.values():
        os.makedirs(d, exist_ok=True)
      share = processes.share(len(split))
      todo_p = [i for i in share
                if not all(os.path.exists(os.path.join(d, f'{split.ids[i]}.png'))
                           for d in dirs.values())]
      if not todo_p:
        continue
      for i, _, out in eng.run_split(names, split, share, None, f'predict {split_name}',
                                     todo=todo_p):
        for key, res in out.items():
          path = os.path.join(dirs[key], f'{split.ids[i]}.png')
          if not os.path.exists(path):
            writer.submit(io_utils.save_palette_png, path, res['pred'])
  if with_crf:
    done = set(todo)
    for i in mine:
      image_id = train.ids[i]
      if i not in done and not os.path.exists(products.mask_path(ctx, image_id)):
        seed = products.load_seed(ctx, image_id)
        yield crf_stage.seed_item(cfg, image_id, train.image(i), seed['rs'], seed['classes'])


ALSO_RUNS = ('crf',)  # when the crf stage runs too, the seeds stream into its pool (runner.py)


def run(ctx):
  train = ctx.data.split('train')
  mine = processes.share(len(train))
  images = sum(not os.path.exists(products.seed_path(ctx, train.ids[i])) for i in mine)
  if 'crf' not in ctx.todo:
    for _ in _stream(ctx, with_crf=False):
      pass
    return dict(images=images)
  total = len(products.missing_masks(ctx, train, indices=mine))
  crf_lib.run_crf(_stream(ctx, with_crf=True), ctx.path('pseudo_masks'),
                          **crf_stage.pool_kwargs(ctx.config, total))
  return dict(images=images)
