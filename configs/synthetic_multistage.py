"""The whole paper on the synthetic benchmark, on CPU: RecurSeed, pseudo masks, then a segmenter.

Command:
    python launch.py --config configs/synthetic_multistage.py --workdir runs/multistage

The single-stage demo (configs/default.py) and then its multi-stage step: a DeepLabv3+ segmenter
trained from scratch on the CRF pseudo masks (stage train_seg), predicting val with scales + flip,
classes kept at max probability >= 0.05, and the CRF (stage predict). summary.json adds
multistage_val_nocrf_miou and multistage_val_miou beside the single-stage val_miou.
Expected: docs/results.md.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.stages = 'train_rs,seeds,crf,train_seg,predict,evaluate,export'
  c.train.cam_baseline = False       # the demo's baseline rows are not part of this comparison
  s = c.seg
  s.model.segmenter_head = 'v3plus'
  # The fields listed in c.seg can be set on the command line (--config.seg.train.steps=...);
  # those not listed are the run's (c.train, c.optim, ...).
  s.train.steps = 600                # as many steps as the RecurSeed network, same batch
  s.train.batch_size = 16
  s.train.log_every = 50
  s.train.checkpoint_every = 200
  s.optim.lr = 0.1                   # the demo's schedule (poly, Nesterov, wd 1e-4)
  s.data.crop_size = 64
  s.infer.class_threshold = 0.05     # METHOD.md section 5 (multi-stage)
  return c
