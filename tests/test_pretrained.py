"""The offline ImageNet weights map onto timm by position: proven by a real photo."""
import pytest
import timm
import torch
from skimage.data import chelsea
from torchvision.transforms.v2 import functional as F

from derm_core.model.networks import create_model, imagenet_state_dict, offline_weights_path

CATS = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx


LITES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
NATIVE = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}


@pytest.mark.parametrize("arch", LITES)
def test_lite_weights_ship_with_package(arch):
    assert offline_weights_path(arch).endswith(".pth")


def test_arch_without_package_has_no_offline_weights():
    assert offline_weights_path("resnet50") is None


@pytest.mark.parametrize("arch", LITES)
def test_chelsea_top5_are_cats(arch):
    """A wrong positional mapping (or a package with another layout) gives no cats."""
    net = timm.create_model(arch, pretrained=False)
    net.load_state_dict(imagenet_state_dict(arch))
    img = torch.from_numpy(chelsea()).permute(2, 0, 1)
    side = NATIVE[arch]
    x = F.normalize(F.to_dtype(F.center_crop(F.resize(img, round(side / 0.875), antialias=True), side), torch.float32,
                               scale=True), [0.5] * 3, [0.5] * 3)
    with torch.no_grad():
        top5 = net.eval()(x[None]).softmax(1)[0].topk(5).indices.tolist()
    assert top5[0] in {281, 282, 285}
    assert len(CATS.intersection(top5)) >= 4


def test_dermnet_backbone_gets_the_weights():
    m = create_model("tf_efficientnet_lite0", 7, pretrained="offline")
    ref = imagenet_state_dict("tf_efficientnet_lite0")
    assert torch.equal(m.backbone.conv_stem.weight, ref["conv_stem.weight"])
    assert torch.equal(m.backbone.bn2.running_var, ref["bn2.running_var"])


def test_arch_without_offline_weights_warns():
    with pytest.warns(UserWarning, match="from scratch"):
        create_model("tiny_test", 7, pretrained="offline")
