"""Stage random_walk: pseudo masks by IRN's random walk over the boundary network's affinities.

pseudo_masks_rw/<id>.png for every training image (walk.py: the stored RecurSeed seed at stride
4 propagated, upsampled, background config.random_walk.bg, argmax); with config.pseudo.method
'random_walk+crf' also pseudo_masks_rw_crf/<id>.png, DenseCRF (config.crf) of the walk's scores.
Images are padded to config.random_walk.size squared (IRN: 512; 0: the split's largest side,
rounded up to 16) so the step compiles once; resumable per image; every PNG written atomically.
"""

import os

import jax
import numpy as np
from tqdm import tqdm

from recurseed_jax import config_lib
from recurseed_jax import crf as crf_lib
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import parallel
from recurseed_jax import processes
from recurseed_jax import train as train_lib
from recurseed_jax import walk
from recurseed_jax.stages import crf as crf_stage
from recurseed_jax.stages import products

RW, RW_CRF = products.PSEUDO_MASKS['random_walk'][1], products.PSEUDO_MASKS['random_walk+crf'][1]


OUTPUTS = (RW, RW_CRF)


def pad_size(config, split, indices):
  """The square the images are padded to: config.random_walk.size or the largest side, to 16."""
  if config.random_walk.size:
    return int(config.random_walk.size)
  side = max(max(split.size(i)) for i in indices)
  return -(-side // 16) * 16


def _batches(ctx, split, indices, todo, size, num_kept, batch_size):
  """Padded images, valid sizes, the stored seeds (padded) and their classes, batch by batch:
  the batches of `indices` (as infer.run_split's) that hold an image of the set `todo`."""
  plan = infer.plan_batches(split, indices, [(size, size)], batch_size)
  for bucket, idx in plan:
    if not todo.intersection(idx):
      continue
    batch = infer.load_batch(split, idx, bucket, batch_size, with_labels=False)
    seeds = np.zeros((batch_size, size, size, num_kept), np.float32)
    classes = np.full((batch_size, num_kept), -1, np.int32)
    for j, i in enumerate(idx):
      seed = products.load_seed(ctx, split.ids[i])
      h, w = batch['valid_hw'][j]
      k = seed['classes'].size
      seeds[j, :h, :w, :k] = infer.dequantize(seed['rs'])
      classes[j, :k] = seed['classes']
    yield dict(batch, seeds=seeds, classes=classes)


def run(ctx):
  cfg = ctx.config
  with_crf = cfg.pseudo.method == 'random_walk+crf'
  folders = [RW] + ([RW_CRF] if with_crf else [])
  train = ctx.data.split('train')
  share = processes.share(len(train))
  todo = products.missing_masks(ctx, train, *folders, indices=share)
  if not todo:
    return dict(images=0)
  for folder in folders:
    os.makedirs(ctx.path(folder), exist_ok=True)
  bcfg = config_lib.boundary_config(cfg)
  model, variables = train_lib.restore_variables(bcfg, ctx.path(config_lib.BOUNDARY_SUBFOLDER),
                                                 ctx.num_classes)
  w = cfg.random_walk
  step = walk.make_walk_step(model, cfg.data.mean, cfg.data.std, beta=float(w.beta),
                             exp_times=int(w.exp_times), radius=int(w.radius), bg=float(w.bg),
                             with_scores=with_crf)
  mesh = parallel.make_mesh(jax.local_devices())
  if w.batch_size % mesh.size:
    raise ValueError(f'config.random_walk.batch_size={w.batch_size} must be a multiple of the '
                     f'{mesh.size} local devices')
  put = lambda a: a
  if mesh.size > 1:
    variables = parallel.replicate(variables, mesh)
    sharding = parallel.batch_sharding(mesh)
    put = lambda a: jax.device_put(a, sharding)
  # From every image, not this share's: the same program whatever the split or the resume.
  size = pad_size(cfg, train, range(len(train)))
  num_kept = max(1, int((train.labels > 0).sum(axis=1).max()))

  def items():
    with products.Writer(cfg.infer.io_threads) as writer, tqdm(
        total=len(todo), desc='random walk', unit='img', dynamic_ncols=True) as bar:
      wanted = set(todo)
      batches = _batches(ctx, train, share, wanted, size, num_kept, w.batch_size)
      for batch in io_utils.background_iter(batches, cfg.infer.prefetch):
        out = jax.device_get(step(variables, put(batch['images']), put(batch['valid_hw']),
                                  put(batch['seeds']), put(batch['classes'])))
        for j, i in enumerate(batch['indices']):
          if i not in wanted:  # done by an earlier run; in the batch for its companions' values
            continue
          image_id = train.ids[i]
          h, w_ = (int(v) for v in batch['valid_hw'][j])
          path = products.mask_path(ctx, image_id, RW)
          if not os.path.exists(path):
            writer.submit(io_utils.save_palette_png, path, out['labels'][j, :h, :w_])
          if with_crf:
            k = 1 + int((batch['classes'][j] >= 0).sum())
            yield (image_id, crf_stage.crf_image(cfg, batch['images'][j, :h, :w_]),
                   out['scores'][j, :h, :w_, :k], out['lut'][j, :k])
        bar.update(len(wanted.intersection(batch['indices'])))

  if with_crf:
    crf_lib.run_crf(items(), ctx.path(RW_CRF),
                    **crf_stage.pool_kwargs(cfg, len(todo), 'random walk + crf'))
  else:
    for _ in items():
      pass
  return dict(images=len(todo), size=size)
