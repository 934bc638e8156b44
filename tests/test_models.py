import pytest
import torch

from derm_core.model.networks import ARCHS, create_model, data_config, get_arch, list_archs

# The big seed-paper networks are only built (not run) to keep the suite quick on 2 cores.
RUN_FORWARD = {"tiny_test", "tf_efficientnet_lite0", "mobilenetv3_large_100"}


@pytest.mark.parametrize("arch", list_archs())
def test_registry_entry_resolves(arch):
    cfg = get_arch(arch)
    model = create_model(arch, 7, use_metadata=True, pretrained="none")
    model.get_submodule(cfg.cam_layer)  # Grad-CAM layer exists
    for name in cfg.freeze:
        model.backbone.get_submodule(name)
    dc = data_config(arch)
    assert len(dc["mean"]) == 3 and dc["input_size"] == list(cfg.input_size)
    if arch in RUN_FORWARD:
        x = torch.randn(2, 3, *cfg.input_size)
        with torch.no_grad():
            assert model(x).shape == (2, 7)
            assert model(x, torch.zeros(2, model.meta[0].in_features)).shape == (2, 7)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        get_arch("resnet9000")


def test_metadata_changes_output_and_missing_metadata_works():
    torch.manual_seed(0)
    m = create_model("tiny_test", 7, use_metadata=True, pretrained="none").eval()
    x = torch.randn(1, 3, 48, 64)
    from derm_core.data.clinical import Clinical, encode
    meta = torch.from_numpy(encode(Clinical(70, "male", "back")))[None]
    with torch.no_grad():
        a, b, c = m(x), m(x, meta), m(x, m.missing_meta[None])
    assert torch.allclose(a, c) and not torch.allclose(a, b)


def test_no_metadata_model_ignores_meta():
    m = create_model("tiny_test", 7, use_metadata=False, pretrained="none").eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m(x, torch.ones(1, 21)))
    assert m.embed(x).shape[1] == m.backbone.num_features


def test_every_arch_has_a_paper_or_purpose():
    assert all(cfg.timm_name for cfg in ARCHS.values())
