"""The ablation on the synthetic benchmark: what each part of the method buys, on 2 CPU cores.

Command (one command, about 25 minutes on 2 CPU cores):
    python launch.py --config configs/synthetic_ablation.py --workdir runs/ablation

Writes runs/ablation/ablation.md (the table) and runs/ablation/ablation_seed_miou.png (the
training seed's mIoU over the steps, one line per variant); each variant's own run (summary.json,
metrics.jsonl, seeds) is in runs/ablation/<variant>/. Every variant is the demo
(configs/default.py, with configs/synthetic_multistage.py's segmenter fields) with the overrides
listed here. The single-stage rows run train_rs, seeds and evaluate (no CRF: they compare seeds
and the segmentation head); the multi-stage rows share the first row's RecurSeed run (its stages
hard-linked, not rerun) and compare the pseudo masks of DenseCRF, the random walk and both, and a
segmenter trained on each. Expected figures: docs/results.md.
"""

import ml_collections

from configs import synthetic_multistage

# The multi-stage rows: RecurSeed's seeds -> pseudo masks (DenseCRF, or relation labels -> the
# boundary network -> the random walk) -> the segmenter trained on them, predicting val.
_MULTI = 'train_rs,seeds,crf,ir_labels,train_boundary,random_walk,train_seg,predict,evaluate'
# What the multi-stage rows share: the demo's RecurSeed run, then every kind of pseudo mask.
_RECURSEED = ('train_rs', 'seeds')
_PSEUDO = _RECURSEED + ('crf', 'ir_labels', 'train_boundary', 'random_walk')


def _variant(title, reuse=None, **sections):
  spec = dict(title=title, overrides=sections)
  if reuse is not None:
    spec['reuse'] = dict(variant=reuse[0], stages=reuse[1])
  return ml_collections.ConfigDict(spec)


def get_config():
  # The multi-stage config: the demo plus the segmenter's fields (configs/synthetic_multistage.py).
  c = synthetic_multistage.get_config()
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
      # Pseudo masks for the multi-stage segmenter, from the first row's RecurSeed network.
      ms_random_walk_crf=_variant('multi-stage on random walk + CRF masks', ('rs_certainmix',
                                                                             _RECURSEED),
                                  stages=_MULTI, pseudo=dict(method='random_walk+crf')),
      ms_crf=_variant('multi-stage on CRF masks', ('ms_random_walk_crf', _PSEUDO), stages=_MULTI,
                      pseudo=dict(method='crf')),
      ms_random_walk=_variant('multi-stage on random walk masks', ('ms_random_walk_crf', _PSEUDO),
                              stages=_MULTI, pseudo=dict(method='random_walk')),
  ))
  c.ablation.order = ('rs_certainmix', 'rs_nomix', 'rs_classmix', 'rs_edgepredictmix',
                      'rs_certainmix_pamr', 'rs_certainmix_norefine', 'ms_random_walk_crf',
                      'ms_crf', 'ms_random_walk')  # runs and table rows
  return c
