"""Stage evaluate: mIoU, per-class IoU and FP / FN of every product -> summary.json and
evaluation.md (the seeds and pseudo masks on train, the predictions on val).

Multi-host: each process counts its share of the images; the confusion matrices are summed over
processes and process 0 writes the tables.
"""

import os

import numpy as np

from recurseed_jax import confusion
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import processes
from recurseed_jax import scoring
from recurseed_jax.stages import products

OUTPUTS = ('summary.json', 'evaluation.md')


def train_label_maps(ctx, image_id, mask_products):
  """{summary key: uint8 [H, W] label map} of one training image: each seed kind it has (the
  argmax with background) and the pseudo masks `mask_products` ([(summary key, folder)])."""
  out = {}
  seed = products.load_seed(ctx, image_id)
  for key in products.SEED_KEYS:
    if key in seed:
      out[f'{key}_seed'] = infer.host_seed_labels(seed[key], seed['classes'],
                                                  ctx.config.infer.bg_power)
  for key, folder in mask_products:
    path = products.mask_path(ctx, image_id, folder)
    if not os.path.exists(path):
      raise FileNotFoundError(f'missing pseudo mask {path}: run the stage that makes {folder}/'
                              ' (crf or random_walk)')
    out[key] = io_utils.load_mask_png(path)
  return out


def train_confusions(ctx, train, num_labels, mask_products, indices, per_image=None):
  """Confusion matrices of every seed kind and of the pseudo masks `mask_products`, on train
  (scoring.sum_confusions, with its per_image by index)."""

  def one(i):
    gt = train.mask(i)
    return {key: confusion.confusion_matrix(labels, gt, num_labels)
            for key, labels in train_label_maps(ctx, train.ids[i], mask_products).items()}

  return scoring.sum_confusions(one, indices, desc='evaluate train', per_image=per_image)


def _summed_over_processes(confs, keys, num_labels, timeout):
  """{key: int64 [L, L]} summed over every process's share (zeros where a share was empty)."""
  mine = {k: np.asarray(confs.get(k, np.zeros((num_labels,) * 2, np.int64))).tolist()
          for k in keys}
  parts = processes.gather('evaluate/confusions', mine, timeout)
  return {k: np.sum([np.asarray(p[k], np.int64) for p in parts], axis=0) for k in keys}


def run(ctx):
  num_labels = ctx.num_classes + 1
  counts, confs = {}, {}
  train = ctx.data.split('train')
  if train.has_masks:
    masks = products.made_pseudo_masks(ctx)  # the ablation makes none: seeds only
    if not masks:
      ctx.log('[evaluate] no pseudo masks (neither crf nor random_walk ran): seeds only')
    seed_keys = [f'{k}_seed' for k in products.SEED_KEYS
                 if k in products.load_seed(ctx, train.ids[0])] if len(train) else []
    confs.update(train_confusions(ctx, train, num_labels, masks, processes.share(len(train))))
    counts.update({key: len(train) for key in seed_keys + [key for key, _ in masks]})
  else:
    ctx.log('[evaluate] the train split has no masks: seeds and pseudo masks are not scored')
  val = ctx.data.split('val')
  mine = [val.ids[i] for i in processes.share(len(val))]
  for key, folder in products.VAL_PREDICTIONS:
    pred_dir = ctx.path('predictions', folder)
    if val.has_masks and (key == 'val' or os.path.isdir(pred_dir)):
      confs[key] = scoring.split_confusion(pred_dir, val, num_labels, ids=mine)
      counts[key] = len(val)
  totals = _summed_over_processes(confs, list(counts), num_labels,
                                  ctx.config.parallel.barrier_timeout_s)
  results = {key: {**confusion.scores(totals[key]), 'num_images': counts[key]} for key in counts}
  if processes.is_lead():
    names = ['background'] + list(ctx.class_names)
    io_utils.atomic_write_bytes(ctx.path('evaluation.md'),
                                scoring.report(results, names, products.TABLE_TITLES).encode())
    io_utils.save_json(ctx.path('summary.json'),
                       {f'{k}_miou': float(v['miou']) for k, v in results.items()})
  return dict(images=len(processes.share(len(train))) + len(mine), products=sorted(results))
