"""Distribution metrics on feature sets and paired image metrics; every value is a plain float.

All distribution metrics take precomputed features, so that one Inception pass serves FID, KID and
precision/recall and real features can be cached. KID and SSIM are torchmetrics' implementations (fed through a
pass-through feature extractor); the Frechet distance is computed here with symmetric eigendecompositions and is
checked against torchmetrics' FrechetInceptionDistance in the tests.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.eval._compat import import_torchmetrics


class PrecomputedFeatures(nn.Module):
    """Identity "feature extractor": torchmetrics receives features we already computed (N, num_features)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}) features, got {tuple(x.shape)}")
        return x


def _check_pair(real: torch.Tensor, fake: torch.Tensor, minimum: int = 2) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise SpkdiffError(f"feature sets must be (N, D) with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if real.shape[0] < minimum or fake.shape[0] < minimum:
        raise SpkdiffError(f"need at least {minimum} samples per set, got {real.shape[0]} real, {fake.shape[0]} fake")


def _trace_sqrt_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Tr((S_a S_b)^(1/2)) for the covariances S_a, S_b of the rows of ``a`` and ``b`` (float64).

    Few samples (n_a, n_b < d): with centred rows, S_a S_b has the same non-zero eigenvalues as M M^T,
    M = A B^T / sqrt((n_a - 1)(n_b - 1)), so the trace is the nuclear norm of M. Otherwise:
    Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), two symmetric eigendecompositions, several times
    faster on CPU than the general eigenvalue problem of S_a S_b that torchmetrics solves.
    """
    ac, bc = a - a.mean(0), b - b.mean(0)
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    if max(na, nb) < d:
        return torch.linalg.svdvals(ac @ bc.T).sum() / ((na - 1) * (nb - 1)) ** 0.5
    sa, sb = ac.T @ ac / (na - 1), bc.T @ bc / (nb - 1)
    w, v = torch.linalg.eigh(sa)
    sa_half = (v * w.clamp(min=0).sqrt()) @ v.T
    return torch.linalg.eigvalsh(sa_half @ sb @ sa_half).clamp(min=0).sqrt().sum()


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of Gaussians fitted to two feature sets.

    S are unbiased (n - 1) covariances, as in pytorch-fid, clean-fid and torchmetrics; computed in float64.
    With Inception pool3 features this is FID; with the in-domain classifier's features it is CFD.
    torchmetrics' FrechetInceptionDistance gives the same value (to 1e-10 on MNIST Inception features) but solves
    a general 2048x2048 eigenproblem: tens of seconds per call on 2 cores, over a minute for few-sample
    (rank-deficient) covariances, where this takes milliseconds. The tests check that the two agree.
    """
    _check_pair(real, fake)
    real, fake = real.double(), fake.double()
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    traces = real.var(0).sum() + fake.var(0).sum()  # Tr(S) = sum of per-dimension variances
    return max(float(mean_term + traces - 2 * _trace_sqrt_product(real, fake)), 0.0)


def frechet_distance_torchmetrics(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The same FD computed by torchmetrics' FrechetInceptionDistance (reference implementation; slow for d=2048)."""
    _check_pair(real, fake)
    import_torchmetrics()
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return max(float(metric.compute()), 0.0)


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with kernel k(x, y) = (x.y / d + 1)^3, mean and std over random subsets.

    ``subset_size`` is capped at the smaller set size; subsets are drawn with a fixed ``seed``.
    """
    _check_pair(real, fake)
    import_torchmetrics()
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subsets=subsets,
                                         subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_radii(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each sample to its k-th nearest other sample (self, at distance 0, is excluded)."""
    radii = torch.empty(feats.shape[0], dtype=feats.dtype)
    for start in range(0, feats.shape[0], chunk):
        dist = torch.cdist(feats[start:start + chunk], feats)
        radii[start:start + chunk] = dist.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Boolean per point: within the radius of at least one centre."""
    inside = torch.empty(points.shape[0], dtype=torch.bool)
    for start in range(0, points.shape[0], chunk):
        dist = torch.cdist(points[start:start + chunk], centres)
        inside[start:start + chunk] = (dist <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019).

    The real manifold is the union of balls around each real feature with radius = distance to its k-th nearest
    real neighbour; precision = fraction of fake samples inside it. Recall swaps the roles of the two sets.
    """
    _check_pair(real, fake, minimum=k + 1)
    real, fake = real.double(), fake.double()
    real_radii = _kth_neighbour_radii(real, k, chunk)
    fake_radii = _kth_neighbour_radii(fake, k, chunk)
    precision = _inside_manifold(fake, real, real_radii, chunk).double().mean()
    recall = _inside_manifold(real, fake, fake_radii, chunk).double().mean()
    return float(precision), float(recall)


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise SpkdiffError(f"expected uint8 or float images, got {images.dtype}")
    return images.float()


def _paired(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _to_unit_float(a), _to_unit_float(b)
    if a.shape != b.shape or a.ndim != 4:
        raise SpkdiffError(f"paired metrics need two (N, C, H, W) batches of one shape, got {tuple(a.shape)} "
                           f"and {tuple(b.shape)}")
    return a, b


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error in [0, 1] pixel space (uint8 inputs are divided by 255): mean((a - b)^2)."""
    a, b = _paired(a, b)
    return float((a - b).square().mean())


def ssim_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - SSIM, SSIM averaged over the batch: 11x11 Gaussian window, sigma 1.5, data range 1, K = (0.01, 0.03)."""
    a, b = _paired(a, b)
    import_torchmetrics()
    from torchmetrics.functional.image import structural_similarity_index_measure

    ssim = structural_similarity_index_measure(a, b, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                               data_range=1.0, k1=0.01, k2=0.03)
    return 1.0 - float(ssim)
