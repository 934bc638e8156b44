"""The inference fast paths agree with the eager fp32 network."""
import numpy as np
import pytest
import torch

from derm_core.data.clinical import Clinical, encode
from derm_core.model.inference import Runner, TTAForward, cpu_has_bf16, fast_path
from derm_core.model.networks import create_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny_test", 7, use_metadata=True, pretrained="none").eval()


def _batch(n=6, size=(48, 64)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, *size, generator=g).contiguous(memory_format=torch.channels_last)
    meta = torch.from_numpy(encode(Clinical(50, "female", "back"))).expand(n, -1)
    return x, meta


def test_tta_averages_the_four_flips(tiny):
    x, meta = _batch()
    z, e = TTAForward(tiny, tta=True)(x, meta)
    with torch.no_grad():
        views = [x, x.flip(3), x.flip(2), x.flip(2, 3)]
        want = torch.stack([tiny.embed(v, meta) for v in views]).mean(0)
    assert torch.allclose(e, want, atol=1e-5)
    assert torch.allclose(z, tiny.head(want), atol=1e-5)


def test_frozen_fp32_copy_equals_eager(tiny):
    x, meta = _batch()
    runner = Runner(tiny, True, CPU, (48, 64), path="fp32")
    runner.chunk = 5   # 24 views fed 5 at a time, the last call with 4
    z, e = runner(x, meta)
    with torch.no_grad():
        z0, e0 = TTAForward(tiny, True)(x, meta)
    assert torch.allclose(z, z0, atol=1e-4) and torch.allclose(e, e0, atol=1e-4)
    z1, _ = Runner(tiny, True, CPU, (48, 64), path="fp32")(x[:3], meta[:3])   # another batch size
    assert torch.allclose(z1, z[:3], atol=1e-4)


def test_bf16_copy_agrees_with_fp32(tiny):
    x, meta = _batch(16)
    zf, _ = Runner(tiny, True, CPU, (48, 64), path="fp32")(x, meta)
    zb, eb = Runner(tiny, True, CPU, (48, 64), path="cpu-bf16")(x, meta)
    assert zb.dtype == torch.float32 and eb.dtype == torch.float32
    assert (zf.softmax(1) - zb.softmax(1)).abs().max() < 0.02
    assert not torch.equal(zf, zb)   # it really ran in bf16


def test_fast_path_switch(monkeypatch):
    monkeypatch.delenv("DERMTRIAGE_FAST_PATH", raising=False)
    assert fast_path(CPU) == ("cpu-bf16" if cpu_has_bf16() else "fp32")
    monkeypatch.setenv("DERMTRIAGE_FAST_PATH", "fp32")
    assert fast_path(CPU) == "fp32"


def test_shipped_model_bf16_agrees_on_real_photos(ham_dir):
    """On 64 test-split photos the bf16 path keeps the most-likely class with |dp| <= 0.02."""
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import get_splits
    from derm_core.model.checkpoint import load_model
    from derm_core.model.predictor import Predictor

    model, card = load_model()
    table = load_table(ham_dir, card.taxonomy)
    table = table[(get_splits(table, card.split_file) == "test").to_numpy()].iloc[:64].reset_index(drop=True)
    assert card.tta
    ref = Predictor(model, card, CPU, fast_path="fp32").predict_table(table, progress=False)["logits"]
    got = Predictor(model, card, CPU, fast_path="cpu-bf16").predict_table(table, progress=False)["logits"]
    pr, pg = [np.exp(v - v.max(1, keepdims=True)) for v in (ref, got)]
    pr, pg = pr / pr.sum(1, keepdims=True), pg / pg.sum(1, keepdims=True)
    assert (pr.argmax(1) == pg.argmax(1)).mean() >= 0.98
    assert np.abs(pr - pg).max() <= 0.02
