"""RecurSeed + CertainMix method: seeds, refinement, certainty, mixing, losses.

Small pure jnp functions, jittable with static shapes, NHWC layout.
"""

from recurseed_jax.method.certainty import argmax_labels
from recurseed_jax.method.certainty import hard_labels
from recurseed_jax.method.losses import cam_loss
from recurseed_jax.method.losses import cam_loss_parts
from recurseed_jax.method.losses import multilabel_soft_margin
from recurseed_jax.method.losses import multilabel_soft_margin_parts
from recurseed_jax.method.losses import ratio
from recurseed_jax.method.losses import seg_cross_entropy
from recurseed_jax.method.losses import seg_cross_entropy_parts
from recurseed_jax.method.mix import mix_batch
from recurseed_jax.method.refine import pamr
from recurseed_jax.method.refine import refine_seed
from recurseed_jax.method.refine import scg
from recurseed_jax.method.seeds import cam_seed
from recurseed_jax.method.seeds import resize
from recurseed_jax.method.seeds import seg_seed
from recurseed_jax.method.seeds import select_seed

__all__ = [
    'argmax_labels',
    'cam_loss',
    'cam_loss_parts',
    'cam_seed',
    'hard_labels',
    'mix_batch',
    'multilabel_soft_margin',
    'multilabel_soft_margin_parts',
    'pamr',
    'ratio',
    'refine_seed',
    'resize',
    'scg',
    'seg_cross_entropy',
    'seg_cross_entropy_parts',
    'seg_seed',
    'select_seed',
]
