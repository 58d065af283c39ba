"""The ablation on the synthetic benchmark: what each part of the method buys, on 2 CPU cores.

Command (one command, about 25 minutes on 2 CPU cores):
    python launch.py --config configs/synthetic_ablation.py --workdir runs/ablation

Writes runs/ablation/ablation.md (the table) and runs/ablation/ablation_seed_miou.png (the
training seed's mIoU over the steps, one line per variant); each variant's own run (summary.json,
metrics.jsonl, seeds) is in runs/ablation/<variant>/. Every variant is the demo
(configs/default.py) with the overrides listed here, through train_rs, seeds and evaluate (no CRF:
the table compares seeds and the segmentation head). Expected figures: docs/results.md.
"""

import ml_collections

from configs import default


def _variant(title, **sections):
  return ml_collections.ConfigDict(dict(title=title, overrides=sections))


def get_config():
  c = default.get_config()
  c.stages = 'train_rs,seeds,evaluate'
  c.train.cam_baseline = False
  c.train.upper_bound = False
  c.ablation = ml_collections.ConfigDict()
  c.ablation.variants = ml_collections.ConfigDict(dict(
      # The full method; its workdir also trains the plain-CAM baseline (CAM only) and the fully
      # supervised upper bound, which give their own rows.
      rs_certainmix=_variant('RecurSeed + CertainMix, SCG', train=dict(
          cam_baseline=True, upper_bound=True)),
      rs_nomix=_variant('RecurSeed, no mixing', mix=dict(kind='none')),
      rs_classmix=_variant('RecurSeed + ClassMix', mix=dict(kind='classmix')),
      rs_edgepredictmix=_variant('RecurSeed + EdgePredictMix', mix=dict(kind='edgepredictmix')),
      rs_certainmix_pamr=_variant('RecurSeed + CertainMix, PAMR', rs=dict(refine='pamr')),
      rs_certainmix_norefine=_variant('RecurSeed + CertainMix, no refinement',
                                      rs=dict(refine='none')),
  ))
  c.ablation.order = ('rs_certainmix', 'rs_nomix', 'rs_classmix', 'rs_edgepredictmix',
                      'rs_certainmix_pamr', 'rs_certainmix_norefine')  # runs and table rows
  return c
