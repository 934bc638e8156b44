"""bench/gpu_lease.py: the weight stand-in a GPU machine imports instead of the missing package
gives the same backbone (to float16 precision), and the runs it brings back unpack only into runs/."""
from __future__ import annotations

import importlib
import io
import sys
import tarfile
from pathlib import Path

import pytest
import timm
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_lease  # noqa: E402

from derm_core.model import networks as N  # noqa: E402

ARCH = "tf_efficientnet_lite0"


def _features(state_dict) -> torch.Tensor:
    """ARCH's headless backbone with a package-layout state dict (mapped by position, as
    :func:`derm_core.model.networks.imagenet_state_dict` maps it), on a fixed input."""
    backbone = N.DermNet(ARCH, 7).backbone.eval()
    ref = dict(zip(timm.create_model(N.get_arch(ARCH).timm_name).state_dict(), state_dict.values()))
    backbone.load_state_dict({k: v for k, v in ref.items() if k in backbone.state_dict()})
    torch.manual_seed(0)
    with torch.no_grad():
        return backbone(torch.randn(2, 3, 150, 200))


def test_the_standin_gives_the_packages_backbone_at_about_half_the_size(tmp_path, monkeypatch):
    real_path = N.offline_weights_path(ARCH)
    if real_path is None:
        pytest.skip("the Lite0 weight package is not installed")
    pkg = N.get_arch(ARCH).offline_package
    size = gpu_lease.pack_weights(ARCH, tmp_path / "site")
    assert size < 0.6 * Path(real_path).stat().st_size
    monkeypatch.syspath_prepend(str(tmp_path / "site"))        # found before the installed package
    monkeypatch.delitem(sys.modules, pkg, raising=False)
    mod = importlib.import_module(pkg)
    assert Path(mod.__file__).parent == tmp_path / "site" / pkg
    assert N.offline_weights_path(ARCH) == str(tmp_path / "site" / pkg / "imagenet.pth")   # what training loads
    rebuilt = torch.load(N.offline_weights_path(ARCH), weights_only=True)
    real = torch.load(real_path, weights_only=True)
    assert list(rebuilt) == list(real)                          # the package's layout, in its order
    a, b = _features(real), _features(rebuilt)
    assert ((a - b).norm() / a.norm()).item() < 0.01
    sys.modules.pop(pkg, None)


def test_unpack_joins_the_parts_and_never_writes_outside_runs(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("gpu_a/model.json", b"{}"), ("gpu_a/log.jsonl", b"x" * 5000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    parts = [tmp_path / f"runs.tar.part-a{c}" for c in "abc"]
    cut = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    for p, (i, j) in zip(parts, zip(cut, cut[1:])):
        p.write_bytes(blob[i:j])
    gpu_lease.main(["unpack", *map(str, reversed(parts)), "--runs", str(tmp_path / "runs")])   # joined in name order
    assert (tmp_path / "runs" / "gpu_a" / "log.jsonl").read_bytes() == b"x" * 5000

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"!"))
    (tmp_path / "evil.part-aa").write_bytes(evil.getvalue())
    with pytest.raises(tarfile.TarError):
        gpu_lease.main(["unpack", str(tmp_path / "evil.part-aa"), "--runs", str(tmp_path / "runs")])
    assert not (tmp_path / "outside.txt").exists()
