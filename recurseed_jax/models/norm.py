"""BatchNorm that keeps its running statistics exactly as PyTorch's BatchNorm2d does.

flax.linen.BatchNorm folds the biased batch variance into `var`; torch folds the unbiased one
(times n / (n - 1), n = values per channel over the whole, possibly cross-replica, batch). The
difference is small for big batches but real (the ASPP image-pooling branch sees n = batch size),
and imported checkpoints keep training from torch-made statistics, so ours matches torch.
Everything else (normalisation with the biased variance, float32 statistics, one collective for
cross-replica statistics, variable names scale / bias / mean / var) is what flax does.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
  """Batch normalisation over every axis but the last (channels).

  Attributes:
    use_running_average: eval mode (normalise with, and leave alone, the running statistics).
    momentum: decay of the running statistics, flax's convention: running = momentum * running +
      (1 - momentum) * batch. PyTorch's `momentum=0.1` is `momentum=0.9` here.
    epsilon: added to the variance (torch: eps=1e-5).
    dtype: output dtype; statistics and normalisation are computed in float32.
    axis_name: named axis (pmap / vmap) over which batch statistics are averaged, or None.
  """
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      mean_sq = jnp.mean(jnp.square(x32), axes)
      count = 1
      for size in x.shape[:-1]:
        count *= size
      if self.axis_name is not None and not self.is_initializing():
        moments = jax.lax.pmean(jnp.concatenate([mean, mean_sq]), self.axis_name)
        mean, mean_sq = moments[:features], moments[features:]
        count = count * jax.lax.psum(1, self.axis_name)
      # One pass (E[x^2] - E[x]^2), like flax's default: one fused reduction.
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      if not self.is_initializing():
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
        ra_var.value = m * ra_var.value + (1.0 - m) * unbiased

    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    return ((x32 - mean) * mul + bias).astype(self.dtype)
