"""RecurSeed + CertainMix on VOC 2012, then a DeepLabv3+ ResNet-101 trained on its pseudo masks.

The paper's multi-stage setting (METHOD.md sections 1 and 5) in one command: train_rs, seeds,
crf (configs/voc12_rs50.py's single stage), then train_seg, predict, evaluate, export:

    python launch.py --config configs/voc12_multistage_v3p.py --workdir runs/voc12_multistage_v3p \
        --config.data.root=/data/VOC2012 --config.model.init=imagenet:/weights/resnet50.pth \
        --config.seg.init=imagenet:/weights/resnet101.pth

The segmenter's recipe and the source of each value: configs/common.py, multistage(). The VOC
test submission (export) uses the segmenter's test predictions.

Expected (not yet reproduced with this code, no GPU run here): the paper's multi-stage
DeepLabv3+ ResNet-101 reaches 72.4 mIoU on VOC val (RS+CM, v1) and 74.4 / 73.6 val / test
(RS+EPM); DeepLabv2 is the older peers' segmenter (docs/results.md).
"""

from configs import common
from configs import voc12_rs50


def get_config():
  return common.multistage(voc12_rs50.get_config(), 'v3plus', num_train=voc12_rs50.NUM_TRAIN)
