"""Image datasets for the host: folders, numpy arrays, Fashion-MNIST; stratified K-shot and splits."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl_runtime.errors import DatasetError, InputError
from edgetl_runtime.fewshot import support_indices
from edgetl_runtime.images import IMAGE_SUFFIXES, image_digest, load_image, shrink
from edgetl_runtime.preprocess import as_rgb_uint8

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Shorter side the host keeps of each decoded photo: twice the largest resize side of the presets (256 for
# 224-pixel models), so the antialiased resize to the model sees the same picture within resampling noise,
# while a 12-megapixel JPEG is held as 1.4 MB instead of 36 MB. Pass a larger ``min_side`` for larger models.
HOST_MIN_SIDE = 512
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* IDX payloads: independent of how a mirror or Debian gzipped them.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist"), Path.home() / ".cache" / "edgetl" / "fashion-mnist"]


@dataclass
class ImageDataset:
    """Images (uint8, HxW or HxWx3, any size) with integer labels indexing ``classes``."""

    images: list[np.ndarray] | np.ndarray
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    labelled: bool = True  # False: a folder of images without classes (calibration only; labels all 0)
    # The device's enrolment key of each image (``image_digest`` of its full decode), recorded when files were
    # shrunk on loading; None: the images are the full pixels and their keys are computed from them.
    keys: list[str] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels) or (self.keys is not None and len(self.keys) != len(self.labels)):
            raise InputError(
                f"Got {len(self.images)} images but {len(self.labels)} labels; they must match one to one."
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise InputError(
                f"Labels must index classes 0..{len(self.classes) - 1}, got {self.labels.min()}..{self.labels.max()}."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        idx = np.asarray(indices, dtype=np.int64)
        images = self.images[idx] if isinstance(self.images, np.ndarray) else [self.images[i] for i in idx]
        keys = None if self.keys is None else [self.keys[i] for i in idx]
        return ImageDataset(images, self.labels[idx], list(self.classes), self.labelled, keys)

    def image_keys(self) -> list[str]:
        """The key a device enrols each image under (the runtime's ``image_digest`` of the pixels it decodes)."""
        if self.keys is not None:
            return list(self.keys)
        return [image_digest(as_rgb_uint8(img, i)) for i, img in enumerate(self.images)]

    def select_classes(self, class_ids: Sequence[int]) -> ImageDataset:
        """Keep only ``class_ids`` and renumber them 0..k-1 (e.g. source vs unseen target classes)."""
        keep = np.flatnonzero(np.isin(self.labels, class_ids))
        sub = self.subset(keep)
        remap = {c: i for i, c in enumerate(class_ids)}
        sub.labels = np.array([remap[int(v)] for v in sub.labels], dtype=np.int64)
        sub.classes = [self.classes[c] for c in class_ids]
        return sub

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def require_trainable(self, what: str = "training") -> None:
        """Refuse to train silently on nothing or on a single class."""
        present = int((self.class_counts() > 0).sum())
        if len(self) == 0:
            raise DatasetError(f"The dataset for {what} is empty; give it at least one image per class.")
        if present < 2:
            raise DatasetError(f"The dataset for {what} has {present} class; a classifier needs at least 2 classes.")


def from_arrays(
    images: np.ndarray | Sequence[np.ndarray], labels: Sequence[int] | np.ndarray, classes: Sequence[str] | None = None
) -> ImageDataset:
    """Wrap numpy images. A stacked array must be uint8 ``(N, H, W)`` or ``(N, H, W, 3)``."""
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise InputError(f"Image array must be (N, H, W) or (N, H, W, 3), got shape {images.shape}.")
        if images.dtype != np.uint8:
            raise InputError(f"Image array has dtype {images.dtype}; expected uint8 pixels in 0..255.")
        checked: np.ndarray | list[np.ndarray] = images
    else:
        checked = [as_rgb_uint8(img, i) for i, img in enumerate(images)]
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    return ImageDataset(checked, labels, list(classes) if classes is not None else [str(i) for i in range(n_classes)])


def stack_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack same-size images into one array, or say which sizes differ."""
    shapes = sorted({tuple(np.shape(img)) for img in images})
    if len(shapes) > 1:
        raise InputError(
            f"Images have mixed sizes {shapes[:4]}{'...' if len(shapes) > 4 else ''}; they cannot be stacked. "
            "Keep them as a list (edgetl resizes each image), or resize them to one size first."
        )
    return np.stack(list(images))


SPLIT_NAMES = ("train", "val", "valid", "validation", "test")  # torchvision ImageFolder users' split folders
_VAL_NAMES = ("val", "valid", "validation")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_split(folder: Path) -> bool:
    return folder.name.lower() in SPLIT_NAMES


def folder_layout(root: str | Path) -> str:
    """``"classes"`` (one folder per class) or ``"splits"`` (train/ + val/ and/or test/, each of class folders).

    Refuses the layouts that would silently train on the wrong classes: split folders beside class
    folders, split folders holding images but no class folders, and class folders split inside.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {root} does not exist or is not a folder.")
    dirs = _subdirs(root)
    splits = [d for d in dirs if _is_split(d)]
    fix = (
        "Fix: use one folder per class (DATA/cat/*.jpg, DATA/dog/*.jpg), or split folders each holding one "
        "folder per class (DATA/train/cat/*.jpg, DATA/val/cat/*.jpg, optional DATA/test/...)."
    )
    if splits and len(splits) < len(dirs):
        others = [d.name for d in dirs if not _is_split(d)]
        raise DatasetError(f"{root} mixes split folders {[d.name for d in splits]} with class folders {others}. {fix}")
    if splits:
        flat = [d.name for d in splits if not _subdirs(d)]
        if flat:
            raise DatasetError(
                f"{root}/{flat[0]} holds no class folders, so its images have no labels (the split folders "
                f"{[d.name for d in splits]} would become the classes). {fix}"
            )
        if not any(d.name.lower() == "train" for d in splits):
            raise DatasetError(f"{root} has split folders {[d.name for d in splits]} but no train/. {fix}")
        return "splits"
    inverted = [d.name for d in dirs if _subdirs(d) and all(_is_split(s) for s in _subdirs(d))]
    if inverted:
        raise DatasetError(
            f"The class folders {inverted[:5]} of {root} are themselves split into train/val/test folders. {fix}"
        )
    return "classes"


def load_image_splits(root: str | Path, *, min_side: int | None = HOST_MIN_SIDE) -> dict[str, ImageDataset]:
    """A ``root`` laid out as :func:`folder_layout` ``"splits"``: ``{"train": ..., "val": ..., "test": ...}``.

    Every split is labelled with train's classes (a val/test class train lacks is refused); ``valid`` and
    ``validation`` are read as ``val``.
    """
    root = Path(root)
    if folder_layout(root) != "splits":
        return {"train": load_image_folder(root, min_side=min_side)}
    folders = {("val" if d.name.lower() in _VAL_NAMES else d.name.lower()): d for d in _subdirs(root)}
    train = load_image_folder(folders.pop("train"), min_side=min_side)
    out = {"train": train}
    for name, folder in folders.items():
        part = load_image_folder(folder, require_trainable=False, min_side=min_side)
        unknown = sorted(set(part.classes) - set(train.classes))
        if unknown:
            raise DatasetError(
                f"{folder} has class folders {unknown} that {root}/train lacks; every class needs training images."
            )
        index = [train.classes.index(c) for c in part.classes]
        labels = np.asarray(index, dtype=np.int64)[part.labels]
        out[name] = ImageDataset(part.images, labels, list(train.classes), keys=part.keys)
    return out


def read_image_files(paths: Sequence[Path], min_side: int | None) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Decode files one at a time with the runtime's decoder (EXIF orientation, 16-bit), keeping each shrunk to
    ``min_side``: (images, their device keys, one "path: reason" per unreadable file)."""
    images, keys, bad = [], [], []
    for path in paths:
        try:
            full = load_image(path)  # (H, W, 3) uint8, upright: exactly what a device decodes
        except InputError as exc:
            bad.append(f"{path}: {exc}")
            continue
        keys.append(image_digest(full))
        images.append(full if min_side is None else shrink(full, min_side))
    return images, keys, bad


def load_image_folder(
    root: str | Path, require_trainable: bool = True, *, min_side: int | None = HOST_MIN_SIDE
) -> ImageDataset:
    """One subfolder per class. Reports every unreadable file at once instead of skipping it.

    Files are decoded by the runtime's one decoder (``edgetl_runtime.images.load_image``), so the host sees the
    picture a device sees, and kept shrunk to ``min_side`` (None: full size). A train/val(/test) split layout is
    refused here (its split folders are not classes): use :func:`load_image_splits`.
    """
    root = Path(root)
    if folder_layout(root) == "splits":
        raise DatasetError(
            f"{root} holds split folders {[d.name for d in _subdirs(root)]}, not class folders. Fix: load it with "
            f"load_image_splits() (the CLI does), or pass one split, e.g. {root / 'train'}."
        )
    class_dirs = _subdirs(root)
    images: list[np.ndarray] = []
    labels: list[int] = []
    keys: list[str] = []
    bad: list[str] = []
    for label, cdir in enumerate(class_dirs):
        files = sorted(p for p in cdir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        got, got_keys, failed = read_image_files(files, min_side)
        images += got
        keys += got_keys
        labels += [label] * len(got)
        bad += failed
    if bad:
        raise DatasetError(
            f"{len(bad)} unreadable image file(s) in {root}; fix or remove them:\n  " + "\n  ".join(bad[:10])
        )
    empty = [d.name for d, n in zip(class_dirs, np.bincount(labels, minlength=len(class_dirs)), strict=True) if n == 0]
    if not images:
        raise DatasetError(
            f"No images found under {root}. Expected one subfolder per class holding files with suffixes "
            f"{sorted(IMAGE_SUFFIXES)}."
        )
    if empty:
        raise DatasetError(f"Class folder(s) {empty} in {root} hold no images; add images or remove the folders.")
    dataset = ImageDataset(images, np.asarray(labels), [d.name for d in class_dirs], keys=keys)
    if require_trainable:
        dataset.require_trainable(f"folder {root}")
    return dataset


def k_shot(dataset: ImageDataset, k: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Stratified K-shot sample per class, and the rest. Raises if a class has fewer than K images."""
    if k < 1:
        raise InputError(f"K must be at least 1, got {k}.")
    counts = dataset.class_counts()
    short = [f"{dataset.classes[c]} ({n})" for c, n in enumerate(counts) if 0 < n < k]
    if short:
        raise DatasetError(f"K={k} is larger than the number of images in class(es) {short}; lower K or add images.")
    picked = support_indices(dataset.labels, k, np.random.default_rng(seed))
    rest = np.setdiff1d(np.arange(len(dataset)), picked)
    return dataset.subset(np.sort(picked)), dataset.subset(rest)


def stratified_split(dataset: ImageDataset, fractions: Sequence[float], seed: int = 0) -> list[ImageDataset]:
    """Split into parts with the given fractions (summing to <= 1), keeping class proportions."""
    if any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise InputError(f"Split fractions must be positive and sum to at most 1, got {list(fractions)}.")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for c in range(len(dataset.classes)):
        idx = rng.permutation(np.flatnonzero(dataset.labels == c))
        bounds = np.floor(np.cumsum([0, *fractions]) * len(idx)).astype(int)
        for p in range(len(fractions)):
            parts[p].extend(idx[bounds[p] : bounds[p + 1]].tolist())
    return [dataset.subset(np.sort(np.asarray(p, dtype=np.int64))) for p in parts]


def balanced_subset(dataset: ImageDataset, per_class: int, seed: int = 0) -> ImageDataset:
    """At most ``per_class`` images of each class (small, fast, reproducible runs)."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(dataset.labels == c))[:per_class] for c in range(len(dataset.classes))]
    return dataset.subset(np.sort(np.concatenate(keep)))


# ------------------------------------------------------------------------------------ Fashion-MNIST


def fashion_mnist_dir(search: Sequence[Path] | None = None) -> Path | None:
    """First folder holding all four Fashion-MNIST files ($EDGETL_FASHION_MNIST first), or None."""
    env = os.environ.get("EDGETL_FASHION_MNIST")
    for folder in [Path(env)] if env else list(search or FASHION_MNIST_DIRS):
        if all((folder / name).is_file() for name in FASHION_MNIST_SHA256):
            return folder
    return None


def download_fashion_mnist(dest: Path = FASHION_MNIST_DIRS[-1]) -> Path:
    """Fetch Fashion-MNIST from its official source into ``dest``, verifying every file's checksum."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in FASHION_MNIST_SHA256.items():
        target = dest / name
        if target.is_file() and _idx_sha256(target) == digest:
            continue
        tmp = target.with_suffix(".part")
        urllib.request.urlretrieve(FASHION_MNIST_URL + name, tmp)
        if _idx_sha256(tmp) != digest:
            tmp.unlink()
            raise DatasetError(f"Checksum mismatch for {name} downloaded from {FASHION_MNIST_URL}; retry later.")
        os.replace(tmp, target)
    return dest


def _idx_sha256(path: Path) -> str:
    with gzip.open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST as 28x28 uint8 grayscale images (``split`` is ``train`` or ``test``)."""
    if split not in {"train", "test"}:
        raise InputError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}.")
    folder = Path(root) if root else fashion_mnist_dir()
    if folder is None:
        raise DatasetError(
            "Fashion-MNIST not found in " + ", ".join(str(p) for p in FASHION_MNIST_DIRS) + ". Fix: run `make data` "
            "(apt-get install dataset-fashion-mnist as root, else a verified download), or set EDGETL_FASHION_MNIST."
        )
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return ImageDataset(images, labels, list(FASHION_MNIST_CLASSES))


def load_unlabelled_folder(root: str | Path, *, min_side: int | None = HOST_MIN_SIDE) -> ImageDataset:
    """Every image directly inside ``root``, without classes: enough to calibrate int8 (judged by feature
    agreement with fp32, since accuracy cannot be measured without labels). Decoded as in :func:`load_image_folder`."""
    root = Path(root)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, keys, bad = read_image_files(files, min_side)
    if bad:
        raise DatasetError(
            f"{len(bad)} unreadable image file(s) in {root}; fix or remove them:\n  " + "\n  ".join(bad[:10])
        )
    if not images:
        raise DatasetError(f"No images found in {root}; expected image files with suffixes {sorted(IMAGE_SUFFIXES)}.")
    return ImageDataset(images, np.zeros(len(images), dtype=np.int64), ["unlabelled"], labelled=False, keys=keys)
