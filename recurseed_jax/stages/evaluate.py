"""Stage evaluate: mIoU, per-class IoU and FP / FN of every product -> summary.json and
evaluation.md (the seeds and pseudo masks on train, the predictions on val)."""

import os

from recurseed_jax import confusion
from recurseed_jax import evaluate as eval_lib
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax.stages import products

OUTPUTS = ('summary.json', 'evaluation.md')


def _train_confusions(ctx, train, num_labels, mask_products):
  """Confusion matrices of every seed kind and of the pseudo masks `mask_products` ([(summary
  key, folder)]), on train."""
  bg_power = ctx.config.infer.bg_power

  def one(i):
    image_id = train.ids[i]
    gt = train.mask(i)
    out = {}
    seed = products.load_seed(ctx, image_id)
    for key in products.SEED_KEYS:
      if key in seed:
        pred = infer.host_seed_labels(seed[key], seed['classes'], bg_power)
        out[f'{key}_seed'] = confusion.confusion_matrix(pred, gt, num_labels)
    for key, folder in mask_products:
      path = products.mask_path(ctx, image_id, folder)
      if not os.path.exists(path):
        raise FileNotFoundError(f'missing pseudo mask {path}: run the stage that makes {folder}/'
                                ' (crf or random_walk)')
      out[key] = confusion.confusion_matrix(io_utils.load_mask_png(path), gt, num_labels)
    return out

  return eval_lib.sum_confusions(one, range(len(train)), desc='evaluate train')


def run(ctx):
  num_labels = ctx.num_classes + 1
  results = {}
  train = ctx.data.split('train')
  if train.has_masks:
    # Every kind of pseudo mask that was made (the ablation makes none: seeds only).
    masks = [p for p in products.PSEUDO_MASKS.values() if os.path.isdir(ctx.path(p[1]))]
    if not masks:
      ctx.log('[evaluate] no pseudo masks (neither crf nor random_walk ran): seeds only')
    confs = _train_confusions(ctx, train, num_labels, masks)
    keys = [f'{k}_seed' for k in products.SEED_KEYS] + [key for key, _ in masks]
    results = {key: {**confusion.scores(confs[key]), 'num_images': len(train)}
               for key in keys if key in confs}
  else:
    ctx.log('[evaluate] the train split has no masks: seeds and pseudo masks are not scored')
  val = ctx.data.split('val')
  for key, folder in products.VAL_PREDICTIONS:
    pred_dir = ctx.path('predictions', folder)
    if val.has_masks and (key == 'val' or os.path.isdir(pred_dir)):
      results[key] = eval_lib.evaluate_split(pred_dir, val, num_labels)
  names = ['background'] + list(ctx.class_names)
  io_utils.atomic_write_bytes(ctx.path('evaluation.md'),
                              eval_lib.report(results, names, products.TABLE_TITLES).encode())
  io_utils.save_json(ctx.path('summary.json'),
                     {f'{k}_miou': float(v['miou']) for k, v in results.items()})
  return dict(products=sorted(results))
