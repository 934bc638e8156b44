"""The orthogonal (Hadamard + foldover) LIME sampling design: balanced, uncorrelated, seeded."""
import numpy as np

from conftest import lesion_image
from derm_core.explain import maps as E


def _design(seed, n=30, samples=256):
    seg = np.repeat(np.arange(n), 4).reshape(n, 4)
    img, fudged = np.zeros((n, 4, 3)), np.ones((n, 4, 3))
    calls = []

    def clf(batch):
        calls.append(len(batch))
        m = batch[..., 0].mean((1, 2))
        return np.c_[m, 1 - m]

    data, labels = E.OrthogonalLimeExplainer(random_state=seed).data_labels(img, fudged, seg, clf, samples, 16)
    return data, labels, calls


def test_design_is_balanced_uncorrelated_paired_and_seeded():
    data, labels, calls = _design(0)
    assert data.shape == (256, 30) and sum(calls) == 256 and max(calls) == 16
    assert (data[0] == 1).all()                                    # the photo itself first
    assert (data[1::2] == 1 - data[0::2]).all()                    # each pattern followed by its complement
    assert np.allclose(data.mean(0), 0.5)                          # every superpixel on in half the samples
    corr = np.corrcoef(data.T) - np.eye(30)
    assert np.abs(corr).max() < 0.07                               # (only the all-on first row breaks exactness)
    rnd = E.PairedLimeExplainer(random_state=0).data_labels(
        np.zeros((30, 4, 3)), np.ones((30, 4, 3)), np.repeat(np.arange(30), 4).reshape(30, 4),
        lambda b: np.c_[b[..., 0].mean((1, 2)), 1 - b[..., 0].mean((1, 2))], 256, 16)[0]
    assert np.abs(corr).max() < np.abs(np.corrcoef(rnd.T) - np.eye(30)).max()   # less chance correlation than paired
    # labels follow the patterns: the photo with superpixels switched off is the 'fudged' (all-ones) photo
    assert np.allclose(labels[:, 0], 1 - data.mean(1))
    assert np.array_equal(_design(0)[0], data) and not np.array_equal(_design(1)[0], data)


def test_orthogonal_lime_runs_and_is_reproducible(tiny_predictor):
    photo = lesion_image((90, 50, 40), size=(120, 90), seed=3)
    a = E.lime_explanation(tiny_predictor, photo, num_samples=64, sampling="orthogonal", seed=2)
    b = E.lime_explanation(tiny_predictor, photo, num_samples=64, sampling="orthogonal", seed=2)
    assert a.weights == b.weights and len(a.weights) == a.segments.max() + 1
