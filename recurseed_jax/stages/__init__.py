"""The pipeline's stages, one module each (IRN's step/ folder), and the runner.

Every stage module has `run(ctx) -> dict` (ctx: context.Context); runner.run_stages runs them in
pipeline order, resumably. products.py says what each writes where.

  train_rs   RecurSeed (+ plain-CAM baseline, upper bound)    train_rs.py
  seeds      seeds of the training images, val/test predictions seeds.py
  crf        DenseCRF of the seeds -> pseudo masks              crf.py
  ir_labels  relation labels of the seeds (IRN)                 ir_labels.py
  train_boundary  the random walk's boundary network            train_boundary.py
  random_walk  the random walk's pseudo masks (+ CRF)           random_walk.py
  train_seg  the multi-stage segmenter on the pseudo masks      train_seg.py
  predict    the segmenter's val/test predictions (+ CRF)       predict.py
  evaluate   mIoU tables of every product                       evaluate.py
  export     overlays, VOC submission, masks in a format        export.py
"""

from recurseed_jax.stages.context import Context
from recurseed_jax.stages.runner import ALIASES
from recurseed_jax.stages.runner import STAGES
from recurseed_jax.stages.runner import finalize_summary
from recurseed_jax.stages.runner import format_summary
from recurseed_jax.stages.runner import link_stages
from recurseed_jax.stages.runner import parse_stages
from recurseed_jax.stages.runner import run_stages

__all__ = ['ALIASES', 'Context', 'STAGES', 'finalize_summary', 'format_summary', 'link_stages',
           'parse_stages', 'run_stages']
