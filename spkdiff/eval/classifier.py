"""In-domain classifier for CFD: a small CNN trained on a dataset's training split.

CFD is the Frechet distance between the classifier's penultimate (128-d) features of generated images and of
the test split (KID and precision/recall work on the same features). Weights are safetensors with the training
recipe and the test accuracy in the metadata. Shipped weights live in ``spkdiff/eval/weights/``; weights
trained by users go to ``<cache>/classifiers/``. Train one with::

    python -m spkdiff.eval.classifier --dataset mnist --data-root ../shared/data

(``--out spkdiff/eval/weights/classifier_<dataset>.safetensors`` to ship it; ``cifar10`` uses its own recipe,
see :data:`RECIPES`.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.eval.features import cache_dir, cached_features, canonical_name, load_split
from spkdiff.eval.inception import file_sha256, to_uint8_nchw

FORMAT = "spkdiff-classifier"
WEIGHTS_DIR = Path(__file__).parent / "weights"
FEATURE_DIM = 128


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    hflip: bool = False  # random horizontal flips: natural images only (a mirrored digit or letter is another shape)


# Per-dataset recipes; the rest use TrainRecipe(). Three epochs fit the 10-minute single-thread budget on CIFAR-10.
RECIPES: dict[str, TrainRecipe] = {"cifar10": TrainRecipe(epochs=3, hflip=True)}


def default_recipe(dataset: str) -> TrainRecipe:
    return RECIPES.get(canonical_name(dataset), TrainRecipe())


class SmallCNN(nn.Module):
    """3 x [conv3x3 - ReLU - maxpool2] (32, 64, 64 channels) -> fc 128 (features) -> ReLU -> fc classes.

    Input: float (N, C, H, W) in [0, 1], normalized inside as 2x - 1.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config.in_channels
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = config.image_size // 8
        self.fc1 = nn.Linear(64 * side * side, FEATURE_DIM)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(FEATURE_DIM, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: ReLU(fc1(conv(2x - 1)))."""
        return torch.relu(self.fc1(self.conv(2 * x - 1).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.features(x)))


@dataclass
class Classifier:
    """A trained classifier with its provenance."""

    model: SmallCNN
    dataset: str
    test_accuracy: float
    sha256: str
    path: Path | None
    meta: dict[str, Any]


def _unit(images: torch.Tensor) -> torch.Tensor:
    return to_uint8_nchw(images).float() / 255.0


@torch.inference_mode()
def classifier_features(model: SmallCNN, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Float32 (N, 128) penultimate features; images as in :func:`spkdiff.eval.inception.to_uint8_nchw`."""
    model.eval()
    images = to_uint8_nchw(images)
    out = [model.features(_unit(images[i:i + batch_size])) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)


@torch.inference_mode()
def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    images = to_uint8_nchw(images)
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        correct += int((model(_unit(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum())
    return correct / max(images.shape[0], 1)


def train_classifier(dataset: str, data_root: str | os.PathLike | None = None, *, recipe: TrainRecipe | None = None,
                     out: str | os.PathLike | None = None, progress: bool = True) -> Classifier:
    """Train :class:`SmallCNN` on the training split (Adam, fixed seed), measure test accuracy, save safetensors.

    ``recipe`` defaults to the dataset's :func:`default_recipe`; ``out`` to
    ``<cache>/classifiers/classifier_<dataset>.safetensors``.
    """
    from tqdm.auto import tqdm

    name = canonical_name(dataset)
    recipe = recipe or default_recipe(name)
    x_train, y_train = load_split(name, data_root, "train")
    x_test, y_test = load_split(name, data_root, "test")
    config = ClassifierConfig(in_channels=x_train.shape[1], image_size=x_train.shape[-1],
                              num_classes=int(max(y_train.max(), y_test.max())) + 1)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = SmallCNN(config)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(x_train.shape[0], generator=gen)
        steps = range(0, x_train.shape[0], recipe.batch_size)
        for i in tqdm(steps, desc=f"classifier {name} epoch {epoch + 1}/{recipe.epochs}", disable=not progress):
            idx = order[i:i + recipe.batch_size]
            x = _unit(x_train[idx])
            if recipe.hflip:
                flip = torch.rand(x.shape[0], generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = nn.functional.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    wall = time.perf_counter() - start
    test_acc = accuracy(model, x_test, y_test)
    meta = {"format": FORMAT, "dataset": name, "config": asdict(config), "recipe": asdict(recipe),
            "test_accuracy": test_acc, "train_wall_s": round(wall, 1), "torch": torch.__version__}
    path = Path(out) if out is not None else cache_dir() / "classifiers" / f"classifier_{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={FORMAT: json.dumps(meta)})
    file_sha256.cache_clear()
    model.eval()
    return Classifier(model, name, test_acc, file_sha256(path), path, meta)


def classifier_path(dataset: str, cache: str | os.PathLike | None = None) -> Path | None:
    """The shipped weights for ``dataset``, else user-trained ones in the cache, else None."""
    name = canonical_name(dataset)
    for folder in (WEIGHTS_DIR, cache_dir(cache) / "classifiers"):
        path = folder / f"classifier_{name}.safetensors"
        if path.is_file():
            return path
    return None


def load_classifier(dataset: str, path: str | os.PathLike | None = None,
                    cache: str | os.PathLike | None = None) -> Classifier:
    """Load the classifier for ``dataset`` (from ``path`` or :func:`classifier_path`)."""
    name = canonical_name(dataset)
    found = Path(path) if path is not None else classifier_path(name, cache)
    if found is None:
        raise SpkdiffError(f"no CFD classifier for {name}: train one with "
                           f"`python -m spkdiff.eval.classifier --dataset {name}`")
    try:
        with safe_open(str(found), "pt") as fh:
            meta = json.loads((fh.metadata() or {})[FORMAT])
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise SpkdiffError(f"{found} is not a readable spkdiff classifier ({type(err).__name__})") from None
    if meta["dataset"] != name:
        raise SpkdiffError(f"{found} is a classifier for {meta['dataset']}, not {name}")
    model = SmallCNN(ClassifierConfig(**meta["config"]))
    model.load_state_dict(state)
    model.eval()
    return Classifier(model, name, float(meta["test_accuracy"]), file_sha256(found.resolve()), found, meta)


def real_classifier_features(classifier: Classifier, data_root: str | os.PathLike | None = None, *,
                             split: str = "test", cache: str | os.PathLike | None = None) -> torch.Tensor:
    """Cached (N, 128) classifier features of a real split."""
    key = {"dataset": classifier.dataset, "split": split, "n": "all", "net": "classifier", "protocol": "unit",
           "sha256": classifier.sha256}

    images, _ = load_split(classifier.dataset, data_root, split)
    return cached_features(key, images.shape[0], lambda sl: classifier_features(classifier.model, images[sl]), cache,
                           chunk=images.shape[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the CFD classifier of a dataset.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None, help="output .safetensors (default: the cache's classifiers/)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the dataset's recipe")
    parser.add_argument("--seed", type=int, default=TrainRecipe.seed)
    args = parser.parse_args(argv)
    recipe = default_recipe(args.dataset)
    recipe = replace(recipe, epochs=args.epochs or recipe.epochs, seed=args.seed)
    clf = train_classifier(args.dataset, args.data_root, recipe=recipe, out=args.out)
    print(json.dumps({"path": str(clf.path), "sha256": clf.sha256, **clf.meta}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
