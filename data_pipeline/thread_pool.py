"""The host thread pool that lists, parses and scans dataset files: worker count and ordered map.

Decoding images and parsing XML release the GIL or are short, so threads (not processes) keep
all cores busy without pickling splits; config.data.workers = 0 means one per core.
"""

import concurrent.futures as cf
import os

from tqdm import tqdm


def workers_or_default(workers):
  """config.data.workers as a positive count: 0 (or None) means every core."""
  return int(workers) if workers and int(workers) > 0 else (os.cpu_count() or 1)


def parallel_map(fn, items, workers, desc):
  """[fn(x) for x in items] in a thread pool, in order, with a progress bar for long lists."""
  items = list(items)
  with cf.ThreadPoolExecutor(workers_or_default(workers)) as pool:
    return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, dynamic_ncols=True,
                     disable=len(items) < 200, leave=False))
