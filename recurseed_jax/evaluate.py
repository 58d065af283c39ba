"""The evaluation CLI: a folder of predicted label PNGs against a folder of masks.

  python -m recurseed_jax.evaluate --pred DIR --gt DIR [--num-classes 20] [--out scores.json]
      [--report report.html [--images DIR]]

The class count is read off the masks unless given; the scoring is scoring.py's. --report also
writes a self-contained page of the scores and a gallery of the worst, median and best images
(report.py), with the images of --images beside the masks when given.
"""

import argparse
import math
import os
import shlex
import sys

from recurseed_jax import cli
from recurseed_jax import io_utils
from recurseed_jax import report
from recurseed_jax import scoring

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')


def _json_safe(obj):
  # NaN is not valid JSON; absent classes become null.
  if isinstance(obj, float) and math.isnan(obj):
    return None
  if isinstance(obj, list):
    return [_json_safe(x) for x in obj]
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  return obj


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pred', required=True, help='folder of predicted label PNGs')
  parser.add_argument('--gt', required=True, help='folder of ground-truth label PNGs')
  parser.add_argument('--num-classes', type=int, default=None,
                      help='foreground classes (labels = N + 1 with background); default: the '
                      'largest label found')
  parser.add_argument('--ids', help='optional text file of image ids, one per line')
  parser.add_argument('--out', help='optional JSON file for the scores')
  parser.add_argument('--workers', type=int, default=None, help='reader threads (default: cores)')
  parser.add_argument('--report', help='optional HTML page: scores and a gallery of the images')
  parser.add_argument('--images', help='with --report: folder of the images (<id>.jpg / .png)')
  args = parser.parse_args(argv)
  if args.images and not args.report:
    raise ValueError('--images is only read with --report')
  for flag, folder in (('--pred', args.pred), ('--gt', args.gt), ('--images', args.images)):
    if folder is not None and not os.path.isdir(folder):
      raise FileNotFoundError(f'{flag} {folder}: no such folder')
  ids = None
  if args.ids:
    with open(args.ids) as f:
      ids = [line.strip() for line in f if line.strip()]
  num_labels = None if args.num_classes is None else args.num_classes + 1
  per_image = {} if args.report else None
  result = scoring.evaluate_dirs(args.pred, args.gt, num_labels, ids=ids, workers=args.workers,
                                 per_image=per_image)
  n = len(result['iou'])
  names = VOC_CLASSES if n == len(VOC_CLASSES) else (
      ['background'] + [f'class {i}' for i in range(1, n)])
  print(scoring.format_table(result, names))
  print(f"mIoU {100 * result['miou']:.2f}  pixel acc {100 * result['pixel_acc']:.2f}  "
        f"FP {result['mean_fp']:.3f}  FN {result['mean_fn']:.3f}  ({result['num_images']} images, "
        f'{n} labels)')
  if args.out:
    io_utils.save_json(args.out, _json_safe(result))
  if args.report:
    command = shlex.join(['python', '-m', 'recurseed_jax.evaluate',
                          *(sys.argv[1:] if argv is None else argv)])
    print('report:', report.folder_report(args.pred, args.gt, args.report, result,
                                          per_image.get('conf', {}), names[1:],
                                          image_dir=args.images, command=command))


def cli_main():
  """The `recurseed-evaluate` command (pyproject.toml)."""
  cli.run(main)


if __name__ == '__main__':
  cli_main()
