"""configs/voc12_multistage_v3p.py with a DeepLabv2 ResNet-101 segmenter instead of DeepLabv3+.

    python launch.py --config configs/voc12_multistage_v2.py --workdir runs/voc12_multistage_v2 \
        --config.data.root=/data/VOC2012 --config.model.init=imagenet:/weights/resnet50.pth \
        --config.seg.init=imagenet:/weights/resnet101.pth

DeepLabv2 (output stride 8, ASPP-L summed branches) is the segmenter of the older WSSS papers
the RecurSeed paper compares with; its recipe (kazuto1011/deeplab-pytorch, VOC) and sources are
in configs/common.py, SEGMENTER_RECIPES. The paper reports no DeepLabv2 figure for RecurSeed.
"""

from configs import common
from configs import voc12_rs50


def get_config():
  return common.multistage(voc12_rs50.get_config(), 'v2', num_train=voc12_rs50.NUM_TRAIN)
