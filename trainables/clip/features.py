"""Frozen image features: encoded once per (model, weights, split, view), cached on disk (``FeatureCache``) and
checked against the model, files and views they were built for."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainables.clip.backbone import ClipBackbone
from trainables.clip.images import ImageDataset, ViewsDataset, files_digest

logger = logging.getLogger(__name__)


@dataclass
class SplitFeatures:
    """Frozen, L2-normalised image features of one split: ``features[v, i]`` is view ``v`` of image ``i``."""

    features: np.ndarray  # [V, N, E] float16
    labels: np.ndarray  # [N] int64
    keys: list[str]  # the cache key of each view


@dataclass
class FeatureSet:
    """Features of some splits of one dataset under one model: what ``clip_trainable`` puts in the object store."""

    splits: dict[str, SplitFeatures]
    classnames: list[str]

    @property
    def nbytes(self) -> int:
        return sum(s.features.nbytes + s.labels.nbytes for s in self.splits.values())


def _views_of(split: str, views: int) -> list[int | None]:
    return list(range(views)) if split == "train" else [None]


def feature_fields(backbone: ClipBackbone, dataset: ImageDataset, split: str, view: int | None,
                   digest: str | None = None) -> dict:
    """The content key's fields: model and weights, preprocessing, the view, and the files (paths, sizes, mtimes)."""
    return {
        "model": backbone.identity,
        "preprocess": backbone.preprocess.identity(),
        "split": split,
        "files": digest or files_digest(dataset.split(split)),
        "view": "center" if view is None else {"augmented": view, "seed": dataset.info.get("seed", 0)},
    }


def feature_keys(backbone: ClipBackbone, dataset: ImageDataset, split: str, views: int) -> list[str]:
    digest = files_digest(dataset.split(split))
    return [FeatureCache.key(feature_fields(backbone, dataset, split, v, digest)) for v in _views_of(split, views)]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def encode_images(backbone: ClipBackbone, dataset: ImageDataset, split: str, views: list[int | None],
                  batch_size: int = 128, workers: int | None = None) -> list[torch.Tensor]:
    """``[N, E]`` float16 normalised features of each requested view of a split (each image decoded once)."""
    examples = dataset.split(split)
    backbone.model.visual.to(backbone.device)  # a no-op unless loaded with image_tower=False
    if workers is None:
        workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if backbone.device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(
        ViewsDataset(examples, backbone.preprocess, views, dataset.info.get("seed", 0)),
        batch_size=max(1, batch_size // len(views)), num_workers=workers, shuffle=False,
        pin_memory=backbone.device.type == "cuda")
    out: list[list[torch.Tensor]] = [[] for _ in views]
    for batch in loader:
        b, v = batch.shape[:2]
        x = batch.flatten(0, 1).to(backbone.device, non_blocking=True)
        with _autocast(backbone.device):
            feats = backbone.model.encode_image(x)
        feats = F.normalize(feats.float(), dim=-1).view(b, v, -1).half().cpu()
        for i in range(v):
            out[i].append(feats[:, i])
    return [torch.cat(o) for o in out]


def split_features(backbone: ClipBackbone, dataset: ImageDataset, split: str, views: int, cache: FeatureCache,
                   batch_size: int = 128, workers: int | None = None) -> SplitFeatures:
    """Features of one split from the cache, building (and caching) the views that are missing."""
    if not dataset.split(split):
        raise ValueError(f"split {split!r} of {dataset.info.get('root')!r} has no images")
    wanted = _views_of(split, views)
    digest = files_digest(dataset.split(split))
    fields = [feature_fields(backbone, dataset, split, v, digest) for v in wanted]

    def build(missing: list[int]) -> list[torch.Tensor]:
        logger.info("encoding %d images x %d views of split %r with %s", len(dataset.split(split)), len(missing),
                    split, backbone.name)
        return encode_images(backbone, dataset, split, [wanted[i] for i in missing], batch_size, workers)

    tensors = cache.get_or_build(fields, build)
    labels = np.asarray([e.label for e in dataset.split(split)], dtype=np.int64)
    return SplitFeatures(torch.stack(tensors).numpy(), labels, [FeatureCache.key(f) for f in fields])


def _resolve(features):
    try:
        import ray

        if isinstance(features, ray.ObjectRef):
            return ray.get(features)
    except ImportError:
        pass
    return features


def check_features(features: FeatureSet, backbone: ClipBackbone, dataset: ImageDataset, views: int,
                   splits=("train", "val")) -> None:
    """``ValueError`` unless ``features`` were built for this model, these files and views."""
    if not isinstance(features, FeatureSet):
        raise ValueError(f"features must be a FeatureSet from prepare_features, got {type(features).__name__}")
    for split in splits:
        if split not in features.splits:
            raise ValueError(f"features lack split {split!r}; they hold {sorted(features.splits)}")
        if features.splits[split].keys != feature_keys(backbone, dataset, split, views):
            raise ValueError(f"features for split {split!r} were built for another model, data, files or number of "
                             f"views than this config; build them with prepare_features(config)")


# -- the on-disk feature cache ------------------------------------------------------------------------------

CACHE_FORMAT = 1


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy()).hexdigest()


class FeatureCache:
    """Frozen features on disk, one file per content key, each with a SHA-256 of its tensor.

    The key is a hash of ``fields`` (model, weights, preprocessing, view, the files' paths, sizes and mtimes):
    anything that changes the features changes the key, so a stale entry is never read; it is only left
    behind (delete the folder to reclaim space). A file that cannot be read, holds another key, or whose
    tensor does not match its checksum is logged, removed and rebuilt. Concurrent builders of the same entry
    on one machine wait on a file lock instead of duplicating the work.

    ``stats`` counts ``hit``, ``miss`` and ``corrupt`` lookups in this process.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = os.path.abspath(os.path.expanduser(
            directory or os.path.join("~", ".cache", "ray_llm_search", "clip_features")))
        self.stats: dict[str, int] = {"hit": 0, "miss": 0, "corrupt": 0}

    @staticmethod
    def key(fields: dict) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.pt")

    def load(self, key: str) -> torch.Tensor | None:
        """The cached tensor, or ``None`` when absent or corrupt (a corrupt file is removed)."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            problem = None
            if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT or saved.get("key") != key:
                problem = "not a cache entry for this key"
            elif not isinstance(saved.get("features"), torch.Tensor) or _digest(saved["features"]) != saved.get("sha256"):
                problem = "checksum mismatch"
        except Exception as e:  # truncated zip, foreign pickle, disk error
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem:
            logger.warning("feature cache file %s is corrupt (%s); rebuilding it", path, problem)
            self.stats["corrupt"] += 1
            with contextlib.suppress(OSError):
                os.remove(path)
            return None
        return saved["features"]

    def save(self, key: str, fields: dict, features: torch.Tensor) -> str:
        os.makedirs(self.directory, exist_ok=True)
        features = features.detach().cpu().contiguous()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"format": CACHE_FORMAT, "key": key, "fields": json.loads(json.dumps(fields, default=str)),
                        "sha256": _digest(features), "features": features}, tmp)
            os.replace(tmp, self.path(key))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return self.path(key)

    @contextlib.contextmanager
    def _lock(self, name: str):
        os.makedirs(self.directory, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows: no lock; concurrent builders may duplicate work, never corrupt a file
            yield
            return
        with open(os.path.join(self.directory, f".{name}.lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_build(self, fields_list: list[dict],
                     build: Callable[[list[int]], list[torch.Tensor]]) -> list[torch.Tensor]:
        """Tensors for each entry of ``fields_list``; ``build(missing_positions)`` makes the missing ones in
        one pass (so an image is decoded once for all its missing views)."""
        keys = [self.key(f) for f in fields_list]
        found = [self.load(k) for k in keys]
        if all(t is not None for t in found):
            self.stats["hit"] += len(keys)
            return found
        with self._lock(self.key({"group": keys})):
            found = [t if t is not None else self.load(k) for t, k in zip(found, keys, strict=True)]
            missing = [i for i, t in enumerate(found) if t is None]
            self.stats["hit"] += len(keys) - len(missing)
            self.stats["miss"] += len(missing)
            if missing:
                built = build(missing)
                if len(built) != len(missing):
                    raise RuntimeError(f"feature builder returned {len(built)} tensors for {len(missing)} entries")
                for i, t in zip(missing, built, strict=True):
                    self.save(keys[i], fields_list[i], t)
                    found[i] = t.detach().cpu()
        return found
