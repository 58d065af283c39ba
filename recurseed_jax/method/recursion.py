"""The RecurSeed seed of a training step (METHOD.md section 2, step 3), from one forward pass.

Recursion switch (CAM seed, then the segmentation head's), refinement at a reduced resolution
(SCG on backbone features, PAMR on the image, or none), back to the crop, absent classes zeroed,
and the certainty filter to hard labels. Pure, stop-gradient and per image, so it needs no
collectives under pmap.
"""

import jax
import jax.numpy as jnp

from recurseed_jax.method import certainty
from recurseed_jax.method import refine
from recurseed_jax.method import seeds


def recurseed_seed(out, images, labels, valid, step, *, cam_only_steps, seed_mix, refine_kind,
                   refine_stride, scg_kwargs, scg_levels, pamr_kwargs, certain, uncertain):
  """Returns (soft seed at crop size [B,H,W,C], hard labels [B,H,W]).

  Args:
    out: the network's outputs (cam, seg, features) of the clean batch.
    images: [B,H,W,3] the batch's (normalised) crops; valid: [B,H,W] their valid pixels.
    labels: [B,C] multi-hot image labels. step: the training step (traced).
    cam_only_steps, seed_mix: the recursion switch (config.rs).
    refine_kind, refine_stride: 'scg' | 'pamr' | 'none', and the stride it runs at.
    scg_kwargs, scg_levels: SCG's knobs and the backbone stages feeding it (config.rs.scg).
    pamr_kwargs: PAMR's knobs (config.rs.pamr). certain, uncertain: the certainty filter.
  """
  out = jax.lax.stop_gradient(out)
  crop = images.shape[1:3]
  size = (crop[0] // refine_stride, crop[1] // refine_stride)
  cs = seeds.resize(seeds.cam_seed(out['cam'], labels), size)
  ss = seeds.resize(seeds.seg_seed(out['seg'], labels), size)
  seed = seeds.select_seed(step, cs, ss, cam_only_steps, seed_mix)
  if refine_kind == 'scg':
    feats = [seeds.resize(out['features'][f'stage{level}'].astype(jnp.float32), size)
             for level in scg_levels]
    seed = refine.refine_seed('scg', seed, features=feats, scg_kwargs=scg_kwargs)
  elif refine_kind == 'pamr':
    small = seeds.resize(images, size)
    seed = refine.refine_seed('pamr', seed, image=small, pamr_kwargs=pamr_kwargs)
  else:
    seed = refine.refine_seed(refine_kind, seed)
  seed = seeds.resize(seed, crop) * labels[:, None, None, :]
  hard = certainty.hard_labels(seed, certain, uncertain, valid=valid)
  return seed, hard
