"""Tests for report.html (recurseed_jax/report.py) and its parts: gallery, panels, curves, and the
export stage that writes it.

The workdir is a fake finished run (report_fixtures.py) whose summary.json is re-derived there
from the files; the page is parsed here (html.parser) and, where Chromium is installed, opened in
it headless: every image must load, the summary figures must show, and a screenshot is taken.
"""

import base64
import io
import os
import shlex
import shutil
import subprocess

import numpy as np
from PIL import Image
import pytest

from recurseed_jax import confusion
from recurseed_jax import curves
from recurseed_jax import gallery
from recurseed_jax import io_utils
from recurseed_jax import metrics
from recurseed_jax import panels
from recurseed_jax import report
from recurseed_jax.stages import export as export_stage
from recurseed_jax.stages import products
import report_fixtures as rf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CI (.ci/run) installs Debian's chromium, /usr/bin/chromium; without one this test skips.
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                  '--no-first-run', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage')


def _png_of(src):
  assert src.startswith('data:image/png;base64,'), src[:40]
  data = base64.b64decode(src.split(',', 1)[1], validate=True)
  with Image.open(io.BytesIO(data)) as img:
    assert img.format == 'PNG'
    img.load()
    return img.size


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A fake workdir, its context and summary, and the page built from it."""
  wd = str(tmp_path_factory.mktemp('report') / 'run')
  ctx, summary = rf.make_workdir(wd)
  path = report.workdir_report(ctx)
  with open(path, encoding='utf-8') as f:
    text = f.read()
  return dict(ctx=ctx, summary=summary, path=path, text=text, page=rf.Page(text))


def test_page_is_self_contained_and_every_image_is_an_inline_png(run):
  page, text, wd = run['page'], run['text'], run['ctx'].workdir
  assert run['path'] == os.path.join(wd, 'report.html')
  assert not [n for n in os.listdir(wd) if io_utils.is_temp_name(n)]
  assert len(page.figures) >= 6 + 6  # 2 x 3 ranked and 2 fixed of 10 train, every one of 6 val
  for a in page.imgs:
    assert _png_of(a['src']) == (int(a['width']), int(a['height']))
  for needle in ('<script', '<link', 'http://', 'https://', 'url(', '@import'):
    assert needle not in text
  for anchor in ('summary', 'curves', 'gallery-train', 'gallery-val', 'config'):
    assert f'<section id="{anchor}">' in text
  for flag in ('--config.train.steps=60', '--config.pseudo.method=random_walk+crf',
               '--config.data.num_classes=3'):  # the reproducing command: the run's overrides
    assert flag in text
  assert '&quot;method&quot;: &quot;random_walk+crf&quot;' in text  # the config itself
  assert [a['alt'] for a in page.imgs if a['section'] == 'curves'] == [
      'training-seed mIoU of every run', 'RecurSeed', 'plain-CAM baseline', 'boundary network',
      'multi-stage segmenter']  # every run that logged, in pipeline order


def test_summary_table_shows_the_figures_of_summary_json(run):
  page, summary = run['page'], run['summary']
  assert page.tables[0][0] == ['product', 'mIoU %', 'FP', 'FN', 'images']
  rows = page.summary_rows()
  keys = [k[:-5] for k in summary if k.endswith('_miou')]
  assert len(rows) == len(keys) == 7  # 3 seeds, 2 kinds of pseudo masks, 2 val products
  for key in keys:
    row = rows[products.TABLE_TITLES[key]]
    assert row[1] == f'{100 * summary[f"{key}_miou"]:.1f}', key
    split = 'val' if 'val' in key else 'train'
    assert row[4] == str(len(run['ctx'].data.split(split)))
  assert 'summary.json says' not in run['text']  # the files agree with it
  # Each product's per-class table (collapsed), then the seconds per stage and the config.
  assert page.details == len(keys) + 2
  assert page.tables[1][0] == ['class', 'IoU (%)', 'FP', 'FN']
  assert [r[0] for r in page.tables[1][1:-1]] == ['background', 'shape0', 'shape1', 'shape2']


def test_a_changed_file_is_noted_against_summary_json(run, tmp_path):
  wd = str(tmp_path / 'changed')
  shutil.copytree(run['ctx'].workdir, wd)
  ctx = run['ctx'].replace(workdir=wd)
  val = ctx.data.split('val')
  for i, image_id in enumerate(val.ids):  # the segmenter's predictions made perfect
    io_utils.save_palette_png(os.path.join(wd, 'predictions', 'seg_val', f'{image_id}.png'),
                              np.where(val.mask(i) == 255, 0, val.mask(i)).astype(np.uint8))
  with open(report.workdir_report(ctx), encoding='utf-8') as f:
    text = f.read()
  assert 'multi-stage segmenter + CRF (val): summary.json says' in text
  assert rf.Page(text).summary_rows()['multi-stage segmenter + CRF (val)'][1] == '100.0'


def _reference_ious(workdir, split, folder):
  out = []
  for i, image_id in enumerate(split.ids):
    pred = io_utils.load_mask_png(os.path.join(workdir, folder, f'{image_id}.png'))
    out.append(confusion.scores(confusion.confusion_matrix(pred, split.mask(i), 4))['miou'])
  return dict(zip(split.ids, out))


def test_gallery_ranks_by_the_final_product(run):
  wd, train = run['ctx'].workdir, run['ctx'].data.split('train')
  # config.pseudo.method's masks (the walk's + CRF), not the CRF's that the workdir also holds.
  ref = _reference_ious(wd, train, 'pseudo_masks_rw_crf')
  other = _reference_ious(wd, train, 'pseudo_masks')
  figs = [f for f in run['page'].figures if f['section'] == 'gallery-train']
  groups = [f['data-group'] for f in figs]
  assert groups[:6] == ['worst'] * 2 + ['median'] * 2 + ['best'] * 2
  assert set(groups[6:]) <= {'fixed'}
  ranked = figs[:6]
  ious = [float(f['data-iou']) for f in ranked]
  assert ious == sorted(ious)
  for f in figs:
    assert float(f['data-iou']) == pytest.approx(ref[f['data-id']], abs=1e-6)
  order = sorted(ref, key=ref.get)
  assert order != sorted(other, key=other.get)  # the two rankings differ: the test can tell
  assert [f['data-id'] for f in ranked[:2]] == order[:2]
  assert [f['data-id'] for f in ranked[-2:]] == order[-2:]
  assert [f['data-id'] for f in ranked[2:4]] == order[4:6]  # the middle of 10
  assert len({f['data-id'] for f in figs}) == len(figs)
  assert 'Ranked by the per-image mIoU of pseudo masks, random walk + CRF' in run['text']
  val = [f for f in run['page'].figures if f['section'] == 'gallery-val']
  assert len(val) == len(run['ctx'].data.split('val'))  # 6 images: every one, ranked
  ref = _reference_ious(wd, run['ctx'].data.split('val'), os.path.join('predictions', 'seg_val'))
  for f in val:
    assert float(f['data-iou']) == pytest.approx(ref[f['data-id']], abs=1e-6)


def test_pick_samples():
  ious = np.array([0.5, np.nan, 0.1, 0.9, 0.3, 0.7, 0.2])
  picks = gallery.pick_samples(ious, per_group=1, num_fixed=2)
  assert picks == [(2, 'worst'), (4, 'median'), (3, 'best'), (0, 'fixed'), (6, 'fixed')]
  picks = gallery.pick_samples(ious, per_group=5, num_fixed=3)  # groups overlap
  ids = [i for i, _ in picks]
  assert len(ids) == len(set(ids)) and set(ids) == {0, 2, 3, 4, 5, 6}  # never the NaN one
  picks = gallery.pick_samples([np.nan, 0.5, 0.1, 0.9], per_group=1, num_fixed=2)
  assert picks == [(2, 'worst'), (1, 'median'), (3, 'best'), (0, 'fixed')]  # NaN: fixed only
  assert gallery.pick_samples([], 2, 2) == []


def test_bad_input_names_the_missing_file_or_folder(run, tmp_path):
  ctx = run['ctx']
  with pytest.raises(FileNotFoundError, match='no workdir .*nope'):
    report.workdir_report(ctx.replace(workdir=str(tmp_path / 'nope')))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='nothing to report in .*empty.*seeds/train'):
    report.workdir_report(ctx.replace(workdir=str(tmp_path / 'empty')))
  wd = str(tmp_path / 'copy')
  shutil.copytree(ctx.workdir, wd)
  ctx = ctx.replace(workdir=wd)
  train, val = ctx.data.split('train'), ctx.data.split('val')
  seed = os.path.join(wd, 'seeds', 'train', f'{train.ids[3]}.npz')
  os.rename(seed, seed + '.away')
  with pytest.raises(FileNotFoundError, match=f'missing seeds {seed}: run the seeds stage'):
    report.workdir_report(ctx)
  os.rename(seed + '.away', seed)
  mask = os.path.join(wd, 'pseudo_masks_rw_crf', f'{train.ids[5]}.png')
  os.remove(mask)
  with pytest.raises(FileNotFoundError, match=f'missing pseudo mask {mask}'):
    report.workdir_report(ctx)
  shutil.copyfile(os.path.join(wd, 'pseudo_masks', f'{train.ids[5]}.png'), mask)
  pred = os.path.join(wd, 'predictions', 'seg_val', f'{val.ids[0]}.png')
  os.remove(pred)
  with pytest.raises(FileNotFoundError, match=f'missing prediction {pred}'):
    report.workdir_report(ctx)
  shutil.copyfile(os.path.join(wd, 'predictions', 'val', f'{val.ids[0]}.png'), pred)
  with open(os.path.join(wd, 'summary.json'), 'w') as f:
    f.write('{"cut')
  with pytest.raises(ValueError, match=r'summary\.json is not valid JSON'):
    report.workdir_report(ctx)


def test_export_stage_writes_report_and_labelled_overlays(run, tmp_path):
  wd = str(tmp_path / 'export')
  shutil.copytree(run['ctx'].workdir, wd)
  ctx = run['ctx'].replace(workdir=wd)
  with ctx.config.unlocked():
    ctx.config.export.num_overlays = 2
  out = export_stage.run(ctx)
  assert out['report'] == os.path.join(wd, 'report.html') and out['overlays'] == 2
  with open(out['report'], encoding='utf-8') as f:
    assert rf.Page(f.read()).tables[0] == run['page'].tables[0]
  train = ctx.data.split('train')
  with Image.open(os.path.join(wd, 'overlays', f'{train.ids[0]}.png')) as img:
    fig = np.asarray(img.convert('RGB'))
  th, tw = panels.display_size(train.image(0).shape[:2])
  assert fig.shape[1] >= 4 * tw and fig.shape[0] > th + 40  # titled, four tiles, a legend
  # No report when export.report is off.
  os.remove(out['report'])
  cfg = ctx.config.copy_and_resolve_references()
  cfg.export.report = False
  assert 'report' not in export_stage.run(ctx.replace(config=cfg))
  assert not os.path.exists(os.path.join(wd, 'report.html'))


def test_overlay_figure_is_labelled_and_checks_shapes():
  image = np.full((20, 30, 3), 100, np.uint8)
  labels = np.zeros((20, 30), np.uint8)
  labels[5:10, 5:20] = 2
  labels[10, :] = 255
  fig = panels.overlay_figure(image, np.linspace(0, 1, 600).reshape(20, 30), labels, labels,
                              names=['background', 'cat', 'dog'], caption='id 7')
  assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[2] == 3
  th, tw = panels.display_size((20, 30))
  assert (th, tw) == (120, 180)  # enlarged 6x: 30 px is far below the floor
  assert fig.shape[1] >= 4 * tw and fig.shape[0] > th + 40  # titles and legend around tiles
  # The label tiles are the VOC colours unblended, enlarged by nearest neighbour.
  want = io_utils.voc_palette()[labels.repeat(6, 0).repeat(6, 1)]
  x = 8 + 2 * (tw + 6)  # the third tile: padding + 2 x (tile + gap)
  assert any(np.array_equal(fig[y:y + th, x:x + tw], want) for y in range(fig.shape[0] - th))
  assert [n for n, _ in panels.legend_entries(['background', 'cat', 'dog'], labels)] == [
      'background', 'dog', 'ignore']
  assert panels.display_size((500, 375)) == (320, 240)
  assert panels.jet(np.array([0.0, 1.0])).tolist() == [[0, 0, 128], [128, 0, 0]]
  with pytest.raises(ValueError, match="tile 'ground truth'"):
    panels.overlay_figure(image, None, labels, labels[:10])


def test_curves_of_every_run_skip_cut_lines(tmp_path):
  records = {}
  for run, terms in rf.RUN_TERMS.items():
    path = str(tmp_path / run / 'metrics.jsonl')
    rf.write_metrics(path, [10, 20, 30], terms)
    records[run] = metrics.read_log(path)
    assert [r['step'] for r in records[run]] == [10, 20, 30]  # the cut line skipped
  spec = {run: [(name, keys) for name, keys, _, _ in curves.panels(r)]
          for run, r in records.items()}
  assert spec['boundary'] == [('losses', ['loss', 'bg_pos', 'fg_pos', 'neg']),
                              ('mean boundary probability', ['boundary']),
                              ('learning rate', ['lr'])]
  assert spec['train'][0] == ('losses', ['loss', 'cls', 'cam', 'seg', 'mix_cls', 'mix_seg'])
  assert spec['train'][1] == ('seeds on the training batches (%)',
                              ['seed_miou', 'seed_coverage', 'seed_precision'])
  assert spec['segmenter'] == [('losses', ['loss', 'seg']), ('learning rate', ['lr'])]
  figs = curves.figures({run: records[run] for run in rf.RUN_TERMS})
  assert [c for c, _ in figs] == ['training-seed mIoU of every run', *rf.RUN_TERMS]
  for _, png in figs:
    with Image.open(io.BytesIO(png)) as img:
      assert img.format == 'PNG' and img.size[0] > 400
  assert metrics.read_log(str(tmp_path / 'missing.jsonl')) == []


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # ml_collections'
def test_reproduce_commands_parse_as_launch_flags():
  from absl import flags
  from ml_collections import config_flags

  from recurseed_jax import config_lib
  config = config_lib.defaults()
  config.train.steps = 7
  config.infer.scales = (1.0, 0.5)
  config.export.mask_dirs = 'pseudo_masks,predictions/val'
  lines = report.reproduce_commands('runs/x y', config)
  argv = shlex.split(lines[1])
  assert argv[:2] == ['python', 'launch.py'] and argv[argv.index('--workdir') + 1] == 'runs/x y'
  overrides = [a for a in argv if a.startswith('--config.')]
  assert sorted(overrides) == ['--config.export.mask_dirs=pseudo_masks,predictions/val',
                               '--config.infer.scales=(1.0, 0.5)', '--config.train.steps=7']
  fv = flags.FlagValues()
  flag_argv = ['launch.py', f'--config={os.path.join(ROOT, "configs", "default.py")}',
               *overrides]
  config_flags.DEFINE_config_file('config', flag_argv[1].split('=', 1)[1], flag_values=fv,
                                  lock_config=True, sys_argv=flag_argv)
  fv(flag_argv)
  assert fv.config.train.steps == 7 and tuple(fv.config.infer.scales) == (1.0, 0.5)
  assert fv.config.export.mask_dirs == 'pseudo_masks,predictions/val'


def _chromium():
  for name in (os.environ.get('CHROMIUM', ''), 'chromium', 'chromium-browser', 'google-chrome'):
    path = shutil.which(name) if name else None
    if path:
      return path
  return None


_PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const d = document.createElement('div');
  d.id = 'probe';
  d.textContent = `images=${imgs.length} broken=${broken}`;
  document.body.appendChild(d);
});</script>"""


def _browse(chromium, profile, *args):
  cmd = [chromium, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', *args]
  try:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)
  except (OSError, subprocess.TimeoutExpired) as e:
    pytest.skip(f'chromium cannot run here: {e}')


@pytest.mark.slow  # a browser start; the module keeps fast tests
def test_report_in_headless_chromium(run, tmp_path):
  chromium = _chromium()
  if chromium is None:
    pytest.skip('no chromium (Debian: apt-get install -y chromium)')
  # The probe goes into a copy: the product page itself has no script.
  probe = tmp_path / 'probe.html'
  probe.write_text(run['text'].replace('</body>', _PROBE + '</body>'), encoding='utf-8')
  r = _browse(chromium, tmp_path / 'profile1', '--virtual-time-budget=10000', '--dump-dom',
              probe.as_uri())
  if 'id="probe"' not in r.stdout and (r.returncode != 0 or not r.stdout.strip()):
    pytest.skip(f'chromium did not render the page (rc {r.returncode}): {r.stderr[-500:]}')
  assert f'images={len(run["page"].imgs)} broken=0' in r.stdout, r.stdout[-300:]
  dom = rf.Page(r.stdout)
  assert dom.tables[0] == run['page'].tables[0]  # the summary figures, as rendered
  for key, value in run['summary'].items():
    if key.endswith('_miou'):
      assert f'<td class="num">{100 * value:.1f}</td>' in r.stdout
  shot = tmp_path / 'report.png'
  r = _browse(chromium, tmp_path / 'profile2', '--window-size=1280,2000',
              f'--screenshot={shot}', f'file://{run["path"]}')
  assert shot.exists(), r.stderr[-500:]
  with Image.open(shot) as img:
    pixels = np.asarray(img.convert('RGB'))
  assert pixels.shape[:2] == (2000, 1280)
  assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # text, tables, figures: not blank
