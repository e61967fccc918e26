"""Metrics for digits generated at s× the training resolution (examples/digits_diffusion.py).

- **Fréchet distance** (:func:`frechet_distance`): between Gaussians fitted to the features of a
  small digits classifier (:class:`FeatureNet`, trained here at the native 16×16 resolution on the
  same split as the diffusion model) for the generated samples, area-downsampled to 16×16
  (:func:`to_native`), and for the held-out real digits. The FID recipe with a network that knows
  digits instead of Inception. Its small-sample bias is not removed: compare numbers at the same N
  and against :meth:`Metrics.real_floor` (held-out real digits against the training digits, same N).
- **Class alignment** (:meth:`Metrics.report`): the classifier's accuracy on the requested class.
- **Duplication rate** (:func:`count_digits`, :func:`duplication_rate`): the fraction of samples
  with more than one digit-like object, defined at the sample's own resolution, scale s:
    1. ink: pixels ≥ ``INK`` (0.5 on the [0, 1] scale, background 0);
    2. objects: ink pixels separated by at most s background pixels (one native pixel) belong to
       one object — a broken stroke stays one digit; in practice: dilate the ink by an
       (s+1)×(s+1) square and take 8-connected components;
    3. digit-like: an object with at least ``MIN_AREA`` ink pixels (in the sample's pixels, at any
       s). ``MIN_AREA`` = 12 is below a quarter of the smallest ink area of a real digit at 16×16
       (training split: min 55, median 81 px), so a digit drawn at the native size — what direct
       inference duplicates — counts at every s, and specks of noise (a few pixels) do not.
  A sample with two or more digit-like objects is duplicated (duplicates, or a digit broken into
  large fragments: both are the failure the papers describe); one with none is empty.

Everything is seeded and runs on one torch thread (examples/digits.py's ``deterministic``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import accuracy, deterministic, fit, load_digits_split, seeded_init  # noqa: E402

SEED = 0
NATIVE = 16  # the diffusion model's training resolution
FEATURES = 16  # few features: the Fréchet distance's small-sample bias grows with the dimension
INK = 0.5
MIN_AREA = 12


class FeatureNet(nn.Module):
    """conv3×3(1→16) → ReLU → maxpool 2 → conv3×3(16→32) → ReLU → maxpool 2 → Linear(512→16) → ReLU
    (the features) → Linear(16→10) (the logits), on (N, 1, 16, 16) images in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(32 * (NATIVE // 4) ** 2, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 16, 16) → (N, FEATURES)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def native_digits(split: str, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of examples/digits.py's ``"train"`` (75 %) or ``"test"`` (25 %) split, bicubic-upsampled
    to 16×16 and clamped to [0, 1], as the diffusion model was trained."""
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    if split not in ("train", "test"):
        raise ValueError(f"native_digits: split must be 'train' or 'test', got {split!r}")
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return F.interpolate(x, size=(NATIVE, NATIVE), mode="bicubic", align_corners=False).clamp(0, 1), y


def train_classifier(epochs: int = 30, seed: int = SEED) -> FeatureNet:
    """:class:`FeatureNet` fitted on the training split at 16×16 (examples/digits.py's ``fit``:
    seeded initialisation and order, one thread); eval mode. Held-out accuracy: see the tests."""
    x, y = native_digits("train", seed)
    return fit(seeded_init(FeatureNet(), seed), x, y, epochs, seed)


def to_native(images: torch.Tensor, native: int = NATIVE) -> torch.Tensor:
    """Area-downsample (N, 1, s·n, s·n) images to (N, 1, n, n), n = ``native``, s a positive integer
    (each native cell is the mean of its s×s fine cells, DESIGN §2's grid). ValueError otherwise."""
    size = images.shape[-1]
    if images.ndim != 4 or images.shape[-2] != size or size % native:
        raise ValueError(f"to_native: expected (N, C, s·{native}, s·{native}) images, got shape {tuple(images.shape)}")
    return F.avg_pool2d(images, size // native) if size != native else images


def gaussian_frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, cov1) and N(mu2, cov2):
    ‖mu1 − mu2‖² + tr(cov1) + tr(cov2) − 2 tr((cov1^½ cov2 cov1^½)^½), in float64. The square
    roots go through symmetric eigendecompositions (eigenvalues clipped at 0: covariances are PSD
    up to rounding)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    values, vectors = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`gaussian_frechet` between the Gaussians fitted (mean, unbiased covariance) to the
    rows of ``a`` (N, D) and ``b`` (M, D); N, M ≥ 2."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: expected (N, D) and (M, D) with N, M ≥ 2, got {a.shape} and {b.shape}")
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def count_digits(image: torch.Tensor | np.ndarray, scale: int) -> int:
    """The number of digit-like objects in one (H, W) or (1, H, W) image in [0, 1] sampled at
    ``scale``× the native resolution (the module docstring's definition)."""
    from scipy import ndimage

    if scale < 1 or int(scale) != scale:
        raise ValueError(f"count_digits: scale must be a positive integer, got {scale}")
    ink = np.asarray(image, dtype=np.float64).squeeze() >= INK
    if ink.ndim != 2:
        raise ValueError(f"count_digits: expected one (H, W) image, got shape {np.shape(image)}")
    grown = ndimage.binary_dilation(ink, structure=np.ones((int(scale) + 1,) * 2, bool))
    labels, count = ndimage.label(grown, structure=np.ones((3, 3), bool))
    if count == 0:
        return 0
    areas = np.bincount(labels[ink], minlength=count + 1)[1:]
    return int((areas >= MIN_AREA).sum())


def duplication_rate(images: torch.Tensor, scale: int) -> float:
    """Fraction of (N, 1, H, W) images with more than one digit-like object (:func:`count_digits`)."""
    return float(np.mean([count_digits(image, scale) > 1 for image in images]))


def empty_rate(images: torch.Tensor, scale: int) -> float:
    """Fraction of (N, 1, H, W) images with no digit-like object."""
    return float(np.mean([count_digits(image, scale) == 0 for image in images]))


@dataclass(frozen=True)
class Report:
    """One set of samples: Fréchet distance to the held-out digits, accuracy on the requested
    class, duplication and empty rates, number of samples."""

    fd: float
    accuracy: float
    duplication: float
    empty: float
    n: int

    def line(self, label: str) -> str:
        return (f"{label}: FD {self.fd:.2f}, class accuracy {self.accuracy:.3f}, duplication rate "
                f"{self.duplication:.3f}, empty {self.empty:.3f} (n = {self.n})")


class Metrics:
    """The classifier and the held-out real digits' features, ready to score sample sets."""

    def __init__(self, classifier: FeatureNet, real: torch.Tensor):
        self.classifier = classifier.eval()
        self.real = real
        self.real_features = self.features(real)

    @classmethod
    def fit(cls, seed: int = SEED) -> "Metrics":
        """Train the classifier (:func:`train_classifier`) and take the held-out split as the real set."""
        return cls(train_classifier(seed=seed), native_digits("test", seed)[0])

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, FEATURES) float64 classifier features of (N, 1, s·16, s·16) images, downsampled first."""
        with deterministic():
            return self.classifier.features(to_native(images)).double().numpy()

    def report(self, images: torch.Tensor, labels: torch.Tensor, scale: Optional[int] = None) -> Report:
        """Score (N, 1, s·16, s·16) samples in [0, 1] generated for ``labels`` (N,); ``scale``
        defaults to the images' size / 16."""
        scale = scale or images.shape[-1] // NATIVE
        with deterministic():
            acc = accuracy(self.classifier, to_native(images), labels)
        return Report(fd=frechet_distance(self.features(images), self.real_features), accuracy=acc,
                      duplication=duplication_rate(images, scale), empty=empty_rate(images, scale), n=len(images))

    def real_floor(self, n: int, seed: int = SEED) -> float:
        """FD between ``n`` held-out real digits (a seeded subset) and the training digits: the
        floor a perfect generator reaches at this sample size."""
        order = torch.randperm(len(self.real), generator=torch.Generator().manual_seed(seed))[:n]
        return frechet_distance(self.features(self.real[order]), self.features(native_digits("train")[0]))
