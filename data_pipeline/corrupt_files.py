"""config.data.skip_corrupt: find the examples whose files do not decode, and leave them out.

Real dumps of VOC and COCO hold the odd truncated JPEG; failing a day into training on one is
worse than skipping it, so the scan runs once up front (in the thread pool, cached) and the
number skipped is logged with the first message.
"""

from data_pipeline import json_cache
from data_pipeline import splits
from data_pipeline import thread_pool


def find_corrupt(split, workers=0):
  """[(index, message)] of the examples whose image or mask file does not decode.

  Masks with wrong values or sizes are not 'corrupt': they raise, skip_corrupt or not.
  """
  def one(i):
    try:
      split.check(i)
    except splits.CorruptFileError as e:
      return i, str(e)
    return None

  found = thread_pool.parallel_map(one, range(len(split)), workers, 'scanning for corrupt files')
  return [r for r in found if r is not None]


def drop_corrupt(split, cache_dir, key, workers=0, log=print, where=''):
  """The split without its corrupt examples (config.data.skip_corrupt); the scan is cached."""
  bad = json_cache.cached(cache_dir, 'corrupt', key,
                          lambda: [list(r) for r in find_corrupt(split, workers)])
  if not bad:
    return split
  drop = {i for i, _ in bad}
  log(f'data: skipped {len(bad)} corrupt file(s) of {len(split)} in {where} '
      f'(data.skip_corrupt): {bad[0][1]}' + (' ...' if len(bad) > 1 else ''))
  return split.subset([i for i in range(len(split)) if i not in drop])
