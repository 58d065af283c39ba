"""Training curves of the runs' metrics.jsonl as PNG figures, for the report.

train.py logs, every train.log_every steps, the loss terms of the run's objective (objectives.py:
loss, cls, cam, seg and mix_* on the CertainMix batches for RecurSeed; cls for the plain-CAM
baseline; seg for the upper bound and the segmenter; bg_pos, fg_pos, neg for the boundary
network, beside its mean boundary probability), the seed's coverage and precision on the training
batches, the training-seed mIoU over the last window (seed_miou) and the learning rate. Figures are
drawn with matplotlib's Figure and its Agg canvas, not pyplot: no display, no global state, so a
report can be built on any thread.
"""

import io
import math

LOSSES = ('loss', 'cls', 'cam', 'seg', 'bg_pos', 'fg_pos', 'neg')  # and every mix_<term>
SEEDS = ('seed_miou', 'seed_coverage', 'seed_precision')
LABELS = dict(loss='total', cls='classification', cam='CAM', seg='segmentation',
              bg_pos='background pairs', fg_pos='foreground pairs', neg='negative pairs',
              seed_miou='seed mIoU', seed_coverage='seed coverage',
              seed_precision='seed precision', boundary='mean boundary probability',
              lr='learning rate')


def series(records, key):
  """(steps, values) of `key` where it is logged and finite."""
  pts = [(r['step'], float(r[key])) for r in records
         if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
  return [p[0] for p in pts], [p[1] for p in pts]


def _logged(records, keys):
  return [k for k in keys if series(records, k)[0]]


def _png(fig):
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  return buf.getvalue()


def _figure(n, width=11.0, height=2.8, dpi=90):
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=dpi, layout='constrained')
  return fig, fig.subplots(1, n, squeeze=False)[0]


def _plot(ax, lines, title, log_y=False):
  """`lines` [(label, steps, values)] on one axis."""
  for label, steps, values in lines:
    ax.plot(steps, values, marker='o', markersize=2.5, linewidth=1.2, label=label)
  ax.set_title(title, fontsize=10)
  ax.set_xlabel('step', fontsize=9)
  ax.tick_params(labelsize=8)
  ax.grid(alpha=0.3)
  if log_y:
    ax.set_yscale('log')
  ax.legend(fontsize=7)


def _lines(records, keys, scale=1.0):
  out = []
  for key in keys:
    steps, values = series(records, key)
    out.append((LABELS.get(key, key), steps, [scale * v for v in values]))
  return out


def panels(records):
  """[(title, keys, scale, log_y)] of the panels a run's records fill: its loss terms (log scale
  when all positive), its seeds on the training batches (%), the boundary network's mean
  boundary probability, the learning rate."""
  mixes = sorted({k for r in records for k in r if k.startswith('mix_')})
  out = []
  losses = _logged(records, LOSSES + tuple(mixes))
  if losses:
    positive = all(v > 0 for k in losses for v in series(records, k)[1])
    out.append(('losses', losses, 1.0, positive))
  seeds = _logged(records, SEEDS)
  if seeds:
    out.append(('seeds on the training batches (%)', seeds, 100.0, False))
  out += [(LABELS[k], [k], 1.0, False) for k in _logged(records, ('boundary', 'lr'))]
  return out


def run_figure(title, records):
  """PNG bytes of the run's panels side by side, or None when it logged none."""
  spec = panels(records)
  if not spec:
    return None
  fig, axes = _figure(len(spec))
  for ax, (name, keys, scale, log_y) in zip(axes, spec):
    _plot(ax, _lines(records, keys, scale), f'{title}: {name}', log_y)
  return _png(fig)


def seed_miou_figure(runs):
  """PNG bytes: the training-seed mIoU of every run that logs it, on one axis (None if < 2)."""
  logged = {t: r for t, r in runs.items() if series(r, 'seed_miou')[0]}
  if len(logged) < 2:
    return None
  fig, axes = _figure(1, width=7.0, height=3.4)
  lines = [(title, *_lines(records, ['seed_miou'], 100.0)[0][1:])
           for title, records in logged.items()]
  _plot(axes[0], lines, 'training-seed mIoU (%) over steps')
  return _png(fig)


def figures(runs):
  """[(caption, PNG bytes)] for `runs` {title: records}: the comparison, then one per run."""
  out = []
  both = seed_miou_figure(runs)
  if both is not None:
    out.append(('training-seed mIoU of every run', both))
  for title, records in runs.items():
    png = run_figure(title, records)
    if png is not None:
      out.append((title, png))
  return out
