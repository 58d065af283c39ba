"""Stage export: overlays of a sample of training images, report.html, the VOC test submission,
masks in a chosen format.

overlays/<id>.png: image | RecurSeed seed heat | pseudo mask (config.pseudo.method's) | truth,
titled, with a legend of the classes, for export.num_overlays evenly spaced training images.
report.html (export.report): the run on one page (report.py). submission/results/VOC2012/
Segmentation/comp6_test_cls/<id>.png and submission/results.tar.gz when the dataset has a test
split (the multi-stage segmenter's predictions when the predict stage made them).
export/<folder>/<id>.png for each folder of config.export.mask_dirs. Process 0 writes them all.
"""

import os

import numpy as np

from recurseed_jax import export as export_lib
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import panels
from recurseed_jax import processes
from recurseed_jax import report
from recurseed_jax.stages import products

OUTPUTS = ('overlays', 'report.html', 'submission', 'export')


def _overlays(ctx):
  train = ctx.data.split('train')
  n = len(train)
  k = min(ctx.config.export.num_overlays, n)
  sample = sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist())) if k else []
  key, folder = products.PSEUDO_MASKS[ctx.config.pseudo.method]  # what the segmenter trains on
  if not os.path.isdir(ctx.path(folder)):
    key, folder = products.PSEUDO_MASKS['crf']
  names = ('background',) + tuple(ctx.class_names)

  def figures():
    for i in sample:
      image_id = train.ids[i]
      image = train.image(i)
      rs = products.load_seed(ctx, image_id)['rs']
      heat = infer.dequantize(rs).max(axis=-1) if rs.shape[-1] else np.zeros(image.shape[:2])
      pred = io_utils.load_mask_png(products.mask_path(ctx, image_id, folder))
      gt = train.mask(i) if train.has_masks else None
      yield image_id, panels.overlay_figure(
          image, heat, pred, gt, names, caption=image_id,
          heat_title='RecurSeed seed\n(max over classes)', pred_title=products.short_title(key))

  export_lib.write_overlays(ctx.path('overlays'), figures())
  return len(sample)


def run(ctx):
  if not processes.is_lead():  # one writer; every share is complete (the runner's barrier)
    return {}
  cfg = ctx.config
  out = dict(overlays=_overlays(ctx))
  if cfg.export.report:
    out['report'] = report.workdir_report(ctx)
    ctx.log(f'[export] report: {out["report"]}')
  test, why = products.split_or_none(ctx, 'test')
  if cfg.export.submission and test is None:
    ctx.log(f'[export] no test split, VOC submission skipped ({why})')
  elif cfg.export.submission:
    folder = 'seg_test' if os.path.isdir(ctx.path('predictions', 'seg_test')) else 'test'
    tar = export_lib.voc_submission_tree(ctx.path('predictions', folder), ctx.path('submission'),
                                         ids=test.ids)
    ctx.log(f'[export] VOC test submission of predictions/{folder}: {tar}')
    out['submission'] = folder
  for folder in [f.strip() for f in cfg.export.mask_dirs.split(',') if f.strip()]:
    written = export_lib.write_masks(ctx.path(folder), ctx.path('export', folder),
                                     cfg.export.mask_format)
    ctx.log(f'[export] {len(written)} masks of {folder} -> {ctx.path("export", folder)} '
            f'({cfg.export.mask_format})')
  return out
