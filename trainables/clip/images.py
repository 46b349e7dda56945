"""Labelled images for CLIP prompt learning: one-folder-per-class trees and CoOp's split files, k-shot
sampling, CoOp's preprocessing (centre crop; random resized crop + flip as fixed "views"), and an on-disk
cache of frozen features keyed by content.

An image data spec is a plain dict (it travels in the Tune config):

| key | default | meaning |
|---|---|---|
| ``root`` | required | a folder of class folders, or the folder that ``split_file``'s paths are relative to |
| ``split_file`` | ``None`` | CoOp's split JSON: ``{"train": [[path, label, classname], ...], "val": [...], "test": [...]}`` |
| ``shots`` | 16 | training images per class (k-shot, fixed by ``seed``) |
| ``val_shots`` | ``min(shots, 4)`` | validation images per class (CoOp's rule) |
| ``test_size`` | ``None`` | at most this many test images (stratified); default all |
| ``seed`` | 0 | sampling seed, and the seed of the augmented views |
| ``classnames`` | ``None`` | names to embed instead of the cleaned folder / split names: a list by label, or a dict |

Without a split file the images of each class folder are split here: ``shots`` for training,
``val_shots`` for validation, the rest for test. With one, the few-shot training images are drawn from its
``train`` list, validation from its ``val`` list (or from the rest of ``train``), and test is its ``test``.

Everything that can be wrong with the input (a missing root, an empty class folder, a file that is not an
image, a class with fewer images than ``shots``) raises ``ValueError`` naming the path or value, before any
model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from trainables.shots import SPLITS, LabelledSplits, by_class, stratified, take

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPEC_KEYS = ("root", "split_file", "shots", "val_shots", "test_size", "seed", "classnames")


@dataclass(frozen=True)
class ImageExample:
    path: str  # absolute
    label: int


class ImageDataset(LabelledSplits):
    """Splits of ``ImageExample``; ``classnames[i]`` is what the text encoder reads for class ``i``."""

    @property
    def classnames(self) -> list[str]:
        return self.names


# -- class names --------------------------------------------------------------------------------------------

_NUMBERED = re.compile(r"^\d+\.\s*(?=\D)")  # CUB's "001.Black_footed_Albatross"


def clean_classname(name: str) -> str:
    """What a text encoder should read for a folder or split-file class name.

    >>> clean_classname("001.Black_footed_Albatross")
    'Black footed Albatross'
    >>> clean_classname("golden_retriever")
    'golden retriever'
    >>> clean_classname("  Faces_easy ")
    'Faces easy'

    Anything subtler (EuroSAT's "AnnualCrop", ImageNet's WordNet ids) needs ``data['classnames']``.
    """
    text = _NUMBERED.sub("", name.strip())
    return " ".join(text.replace("_", " ").split())


def _apply_classnames(raw: list[str], override, where: str) -> list[str]:
    if override is None:
        return [clean_classname(n) for n in raw]
    if isinstance(override, dict):
        unknown = sorted(set(map(str, override)) - set(raw))
        if unknown:
            raise ValueError(f"classnames has keys {unknown[:5]} that are not classes of {where}; classes are {raw[:10]}")
        return [str(override.get(n, clean_classname(n))) for n in raw]
    names = [str(n) for n in override]
    if len(names) != len(raw):
        raise ValueError(f"classnames has {len(names)} names but {where} has {len(raw)} classes")
    return names


# -- reading a spec -----------------------------------------------------------------------------------------


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def check_images(examples: Iterable[ImageExample]) -> None:
    """Open each image's header (cheap), raising ``ValueError`` naming the first file that is missing or not an
    image. Truncated pixel data is caught later, when the features are built, also naming the file."""
    from PIL import Image, UnidentifiedImageError

    for e in examples:
        try:
            with Image.open(e.path) as img:
                img.size  # noqa: B018 - the header is parsed lazily
        except FileNotFoundError:
            raise ValueError(f"image file not found: {e.path!r}") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"cannot read image {e.path!r}: {err}") from None


def _folder_classes(root: str) -> tuple[list[str], dict[str, list[str]]]:
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"dataset root {root!r} has no class folders (expected one folder of images per class, "
                         f"or set data['split_file'] to a CoOp split JSON)")
    files: dict[str, list[str]] = {}
    for cls in classes:
        folder = os.path.join(root, cls)
        images = sorted(os.path.join(folder, f) for f in os.listdir(folder) if _is_image_file(f))
        if not images:
            raise ValueError(f"class folder {folder!r} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        files[cls] = images
    return classes, files


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"data['{name}'] must be an integer >= {minimum}, got {value!r}")
    return value


def _load_folder(root: str, spec: dict, shots: int, val_shots: int, rng: random.Random):
    classes, files = _folder_classes(root)
    train: list[ImageExample] = []
    val: list[ImageExample] = []
    test: list[ImageExample] = []
    for cls in classes:  # the training shots first: they are what the user asked for
        if shots > len(files[cls]):
            raise ValueError(f"class folder {os.path.join(root, cls)!r} has {len(files[cls])} images, fewer than "
                             f"shots={shots}; lower data['shots'] or add images")
    for label, cls in enumerate(classes):
        images = files[cls]
        folder = os.path.join(root, cls)
        if shots + val_shots > len(images):
            raise ValueError(f"class folder {folder!r} has {len(images)} images, fewer than shots + val_shots = "
                             f"{shots} + {val_shots} (validation images come from the same folder); lower "
                             f"data['val_shots'] or add images")
        taken, rest = take(images, shots, rng)
        held, rest = take(rest, val_shots, rng)
        train += [ImageExample(p, label) for p in taken]
        val += [ImageExample(p, label) for p in held]
        test += [ImageExample(p, label) for p in sorted(rest)]
    return train, val, test, classes


def _read_split_file(path: str, root: str) -> tuple[dict[str, list[ImageExample]], list[str]]:
    if not os.path.isfile(path):
        raise ValueError(f"split file not found: {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read split file {path!r} as JSON: {e}") from e
    if not isinstance(content, dict) or not isinstance(content.get("train"), list) or not content["train"]:
        raise ValueError(f"split file {path!r} must be a JSON object with a non-empty 'train' list "
                         f"(and 'val', 'test') of [path, label, classname] entries")
    names: dict[int, str] = {}
    raw: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        entries = content.get(split) or []
        if not isinstance(entries, list):
            raise ValueError(f"split file {path!r}: '{split}' must be a list, got {type(entries).__name__}")
        rows = []
        for n, entry in enumerate(entries):
            ok = (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)
                  and isinstance(entry[1], int) and not isinstance(entry[1], bool) and isinstance(entry[2], str))
            if not ok:
                raise ValueError(f"split file {path!r}: {split}[{n}] must be [path, label, classname], got {entry!r:.120}")
            image, label, name = entry
            if names.setdefault(label, name) != name:
                raise ValueError(f"split file {path!r}: label {label} is named both {names[label]!r} and {name!r}")
            rows.append((os.path.join(root, image), label))
        raw[split] = rows
    order = sorted(names)  # labels need not be 0..C-1 in the file; here they are
    remap = {label: i for i, label in enumerate(order)}
    splits = {s: [ImageExample(p, remap[y]) for p, y in rows] for s, rows in raw.items()}
    return splits, [names[label] for label in order]


def _load_split_file(root: str, spec: dict, shots: int, val_shots: int, rng: random.Random):
    path = os.path.abspath(os.path.expanduser(spec["split_file"]))
    splits, raw_names = _read_split_file(path, root)
    groups = by_class(splits["train"])
    train: list[ImageExample] = []
    rest: list[ImageExample] = []
    for label in range(len(raw_names)):
        group = groups.get(label, [])
        if shots > len(group):
            raise ValueError(f"class {raw_names[label]!r} (label {label}) has {len(group)} training images in "
                             f"{path!r}, fewer than shots={shots}; lower data['shots']")
        taken, left = take(group, shots, rng)
        train += taken
        rest += left
    source = splits["val"] or rest  # CoOp: few-shot validation from the val list, min(shots, 4) per class
    val = stratified(source, val_shots, rng)
    if not val:
        raise ValueError(f"split file {path!r} leaves no validation images (its 'val' list is empty and 'train' "
                         f"has no images beyond the {shots} shots per class)")
    return train, val, list(splits["test"]), raw_names


def load_image_dataset(spec: dict, check: Iterable[str] = SPLITS) -> ImageDataset:
    """Splits described by an image data spec (see the module docstring).

    Args:
        spec: the data spec.
        check: splits whose images are opened (header only) to fail early on a missing or non-image file.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"data must be a dict spec with 'root' (and 'split_file', 'shots', ...), got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown image data keys {unknown}; allowed: {list(SPEC_KEYS)}")
    if not spec.get("root"):
        raise ValueError("data['root'] is required: a folder of class folders, or the image folder of a split file")
    root = os.path.abspath(os.path.expanduser(str(spec["root"])))
    if not os.path.isdir(root):
        raise ValueError(f"dataset root does not exist or is not a folder: {root!r}")
    shots = _check_int("shots", spec.get("shots", 16), 1)
    val_shots = _check_int("val_shots", spec.get("val_shots", min(shots, 4)), 1)
    seed = spec.get("seed", 0)
    test_size = spec.get("test_size")
    if test_size is not None:
        _check_int("test_size", test_size, 1)
    rng = random.Random(seed)
    if spec.get("split_file"):
        train, val, test, raw_names = _load_split_file(root, spec, shots, val_shots, rng)
    else:
        train, val, test, raw_names = _load_folder(root, spec, shots, val_shots, rng)
    if len(raw_names) < 2:
        raise ValueError(f"a classifier needs at least 2 classes; {root!r} has {len(raw_names)}: {raw_names}")
    classnames = _apply_classnames(raw_names, spec.get("classnames"), repr(root))
    if test_size is not None and len(test) > test_size:
        test = stratified(test, max(1, test_size // len(classnames)), rng)
    splits = {"train": train, "val": val, "test": test}
    for name in check:
        check_images(splits[name])
    return ImageDataset(train, val, test, classnames,
                        info={"root": root, "shots": shots, "val_shots": val_shots, "seed": seed,
                              "split_file": spec.get("split_file")})


# -- preprocessing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """CoOp's image pipeline for a CLIP model: test views are resized (shorter side) and centre-cropped;
    training views are a random resized crop (scale 0.08-1, ratio 3/4-4/3) and a horizontal flip at p=0.5.
    Both are normalised with the model's mean and std."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def identity(self) -> dict:
        return {"size": self.size, "mean": [round(x, 8) for x in self.mean], "std": [round(x, 8) for x in self.std],
                "interpolation": self.interpolation, "scale": list(self.scale), "ratio": [round(x, 8) for x in self.ratio]}

    def _interp(self):
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)

    def _finish(self, img) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        return TF.normalize(TF.to_tensor(img), self.mean, self.std)

    def center(self, img) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        img = TF.resize(img, self.size, interpolation=self._interp())
        return self._finish(TF.center_crop(img, [self.size, self.size]))

    def augmented(self, img, seed: int) -> torch.Tensor:
        """One random resized crop + flip, fixed by ``seed`` (same seed, same view)."""
        from torchvision.transforms import functional as TF

        rng = random.Random(seed)
        top, left, h, w = _crop_params(img.height, img.width, self.scale, self.ratio, rng)
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], interpolation=self._interp())
        if rng.random() < 0.5:
            img = TF.hflip(img)
        return self._finish(img)


def _crop_params(height: int, width: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawn from ``rng`` instead of torch's global generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_seed(seed: int, view: int, path: str) -> int:
    """Seed of augmented view ``view`` of one image: fixed by the data seed, the view and the file, so a
    view's crop of an image does not depend on which other images were sampled."""
    digest = hashlib.sha256(f"{seed}:{view}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def load_rgb(path: str):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as e:  # truncated or corrupt pixel data
        raise ValueError(f"cannot decode image {path!r}: {e}") from None


class ViewsDataset(torch.utils.data.Dataset):
    """Item ``i``: ``[len(views), 3, S, S]``, each image decoded once for all its views.

    ``views`` holds ``None`` for the centre view and integers for augmented views."""

    def __init__(self, examples: list[ImageExample], preprocess: Preprocess, views: list[int | None], seed: int):
        self.examples, self.preprocess, self.views, self.seed = examples, preprocess, list(views), seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.examples[i].path
        img = load_rgb(path)
        out = [self.preprocess.center(img) if v is None else
               self.preprocess.augmented(img, view_seed(self.seed, v, path)) for v in self.views]
        return torch.stack(out)


def files_digest(examples: list[ImageExample]) -> str:
    """Content identity of an ordered list of image files: path, size and modification time of each."""
    h = hashlib.sha256()
    for e in examples:
        try:
            st = os.stat(e.path)
        except FileNotFoundError:
            raise ValueError(f"image file not found: {e.path!r}") from None
        h.update(f"{e.path}\t{e.label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
