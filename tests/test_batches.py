"""Training batches: the uint8 cache, whole-batch augmentation, metadata dropout, resume-safe order."""
import numpy as np
import torch

from derm_core.data.clinical import Clinical, encode
from derm_core.data.dataset import load_table
from derm_core.data.images import load_image
from derm_core.fit.batches import BatchAugment, TrainBatches, drop_fields, image_cache, metadata_matrix
from derm_core.model.transforms import ResizeCover

NO_AUG = dict(rotation=0.0, zoom=(1.0, 1.0), aspect=1.0 + 1e-9, elastic_p=0.0, brightness=0, contrast=0,
              saturation=0, hue=0)


def test_cache_holds_each_photo_resized_once(synthetic_data, ham7):
    from torchvision.transforms.v2 import functional as F
    t = load_table(synthetic_data, ham7)
    cache = image_cache(t, (48, 64))
    assert cache.shape == (len(t), 3, 48, 64) and cache.dtype == torch.uint8
    assert torch.equal(cache[3], ResizeCover((48, 64))(F.pil_to_tensor(load_image(t["path"][3]))))


def test_geometry_without_augmentation_is_the_photo_up_to_flips():
    """Checks the affine grid's axis conventions on a non-square image."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 30, 40), dtype=torch.uint8, generator=g)
    out = BatchAugment([0, 0, 0], [1, 1, 1], **NO_AUG)(x, g)
    ref = x.float() / 255
    for i in range(len(x)):
        views = [ref[i], ref[i].flip(2), ref[i].flip(1), ref[i].flip(1, 2)]
        assert min(float((out[i] - v).abs().max()) for v in views) < 1e-4


def test_rotation_keeps_a_disc_round_on_a_non_square_photo():
    """Rotation happens in pixel space: in normalised [-1, 1] coordinates a 4:3 photo would shear."""
    h, w = 60, 80
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = ((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2 <= 15 ** 2)
    x = (disc * 255).to(torch.uint8).expand(16, 3, h, w).contiguous()
    out = BatchAugment([0, 0, 0], [1, 1, 1], **{**NO_AUG, "rotation": 180.0})(x, torch.Generator().manual_seed(0))
    for o in out[:, 0, 10:50, 20:60] > 0.5:    # the centre (reflection padding may mirror the disc into corners)
        rows, cols = o.any(1).nonzero(), o.any(0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert abs(height - width) <= 2 and abs(int(o.sum()) - int(disc.sum())) < 0.05 * int(disc.sum())


def test_batches_are_augmented_normalised_and_differ_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.full((6, 3, 30, 40), 128, dtype=torch.uint8)
    x[:, :, 10:20, 10:30] = 30
    out = BatchAugment([0.5] * 3, [0.25] * 3)(x, g)
    assert out.shape == (6, 3, 30, 40) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= -2 - 1e-5 and out.max() <= 2 + 1e-5   # (0..1 - 0.5) / 0.25
    assert len({round(float(o.sum()), 2) for o in out}) == 6   # own parameters per image


def test_drop_fields_hides_whole_fields():
    meta = torch.from_numpy(np.stack([encode(Clinical(40, "male", "back"))] * 5))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_fields(meta, 0.0, g), meta)
    hidden = drop_fields(meta, 1.0, g)
    assert torch.equal(hidden, torch.from_numpy(encode(Clinical())).expand(5, -1))


def test_order_and_augmentation_depend_only_on_seed_and_epoch(synthetic_data, ham7):
    t = load_table(synthetic_data, ham7)
    images, meta = image_cache(t, (24, 32)), metadata_matrix(t)

    def epoch(e, seed=0):
        b = TrainBatches(images, meta, t["y"].to_numpy(), 8, BatchAugment([0.5] * 3, [0.5] * 3), 0.3, seed=seed)
        b.set_epoch(e)
        return list(b)

    first, again, other = epoch(2), epoch(2), epoch(3)
    assert len(first) == len(t) // 8
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert not torch.equal(first[0][2], other[0][2]) or not torch.equal(first[0][0], other[0][0])
    seen = torch.cat([y for _, _, y, _ in first])
    assert len(seen) == 8 * (len(t) // 8)


def test_ranks_take_disjoint_shares(synthetic_data, ham7):
    t = load_table(synthetic_data, ham7)
    images = torch.arange(len(t), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    ids = []
    for rank in range(2):
        b = TrainBatches(images, metadata_matrix(t), t["y"].to_numpy(), 4, BatchAugment([0] * 3, [1] * 3, **NO_AUG),
                         rank=rank, world=2)
        ids.append({round(float(x[i, 0].mean()) * 255) for x, _, _, _ in b for i in range(len(x))})
    assert not ids[0] & ids[1]


def test_sync_free_elastic_field_touches_only_the_elastic_images():
    """The GPU's way (no host sync: every image draws a field, zeroed where not elastic), tried on
    a CPU against the CPU's way (only the elastic images draw one): the same images are distorted
    and the others get the same affine grid."""
    kw = {**NO_AUG, "rotation": 30.0, "elastic_p": 0.5}
    fast = BatchAugment([0, 0, 0], [1, 1, 1], **kw, sync_free=True).grid(12, 30, 40, torch.Generator().manual_seed(0))
    cpu = BatchAugment([0, 0, 0], [1, 1, 1], **kw).grid(12, 30, 40, torch.Generator().manual_seed(0))
    affine = BatchAugment([0, 0, 0], [1, 1, 1], **{**kw, "elastic_p": 0.0}).grid(12, 30, 40,
                                                                                   torch.Generator().manual_seed(0))
    moved_fast, moved_cpu = ((g - affine).abs().amax((1, 2, 3)) > 1e-6 for g in (fast, cpu))
    assert 0 < int(moved_cpu.sum()) < 12 and torch.equal(moved_fast, moved_cpu)
    assert torch.equal(fast[~moved_fast], cpu[~moved_cpu])
