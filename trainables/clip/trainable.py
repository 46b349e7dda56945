"""The CLIP trial: its config keys and defaults, data, model and features for a phase, the Tune trainable and
the test-time evaluation."""

from __future__ import annotations

import json
import logging
import math

import torch

from trainables.clip.backbone import ClipBackbone, check_model, load_clip
from trainables.clip.features import FeatureCache, FeatureSet, _resolve, check_features, split_features
from trainables.clip.images import ImageDataset, load_image_dataset
from trainables.clip.model import ClipPromptModel, CoOpSchedule, _check_model_args
from trainables.phase import check_config as _check_phase_config
from trainables.phase import run_phase

logger = logging.getLogger(__name__)

CLIP_DEFAULTS = {
    "model": "ViT-B-16",
    "pretrained": "openai",
    "model_config": None,
    "init_seed": 0,
    "n_ctx": 16,
    "class_token_position": "end",
    "csc": False,
    "views": 8,
    "cache_dir": None,
    "logit_scale": None,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
    "cut_context": True,
    "attention": "auto",
    "projection": "cosine",
    "device": "auto",
    "feature_batch_size": 128,
    "loader_workers": None,
}
COOP_PHASE_DEFAULTS = {"optimizer": "sgd", "lr": 0.002, "weight_decay": 5e-4, "batch_size": 32, "steps": 200,
                       "eval_every": 50}
_DATASETS: dict = {}


def clip_config(config: dict) -> dict:
    """The CLIP keys of a trial config with defaults, validated (model name and weights included) before
    anything is loaded."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    if "data" not in config:
        raise ValueError("config['data'] is required: an image data spec such as {'root': ..., 'shots': 16} "
                         "(see trainables.clip.images)")
    cfg = {**CLIP_DEFAULTS, **{k: v for k, v in config.items() if k in CLIP_DEFAULTS}}
    _check_model_args(cfg["n_ctx"], cfg["class_token_position"], cfg["csc"], cfg["projection"], cfg["logit_scale"],
                      cfg["attention"])
    if isinstance(cfg["views"], bool) or not isinstance(cfg["views"], int) or cfg["views"] < 1:
        raise ValueError(f"views must be an integer >= 1, got {cfg['views']!r}")
    if cfg["schedule"] not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {cfg['schedule']!r}")
    if not isinstance(cfg["warmup_epochs"], (int, float)) or cfg["warmup_epochs"] < 0:
        raise ValueError(f"warmup_epochs must be a number >= 0, got {cfg['warmup_epochs']!r}")
    if not isinstance(cfg["warmup_lr"], (int, float)) or cfg["warmup_lr"] <= 0:
        raise ValueError(f"warmup_lr must be a number > 0, got {cfg['warmup_lr']!r}")
    if cfg["device"] != "auto":
        try:
            torch.device(cfg["device"])
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {cfg['device']!r}") from e
    if _check_phase_config is not None:
        _check_phase_config({**COOP_PHASE_DEFAULTS, **config})
    check_model(cfg["model"], cfg["pretrained"], cfg["model_config"])
    return cfg


def dataset_for(spec: dict, check=("train", "val")) -> ImageDataset:
    key = (json.dumps(spec, sort_keys=True, default=str), tuple(check))
    if key not in _DATASETS:
        _DATASETS[key] = load_image_dataset(spec, check=check)
    return _DATASETS[key]


def _backbone(cfg: dict, image_tower: bool = True) -> ClipBackbone:
    return load_clip(cfg["model"], cfg["pretrained"], cfg["model_config"], cfg["init_seed"], cfg["device"],
                     image_tower)


def prepare_features(config: dict, splits=("train", "val")) -> FeatureSet:
    """Image features of ``splits`` for a trial config: read from the disk cache, or built (image encoder on
    this process's device) and cached. Run it once on the driver (or in a GPU task) and pass the result to
    ``train_clip_prompt`` through ``tune.with_parameters``, as ``clip_trainable`` does."""
    cfg = clip_config(config)
    dataset = dataset_for(config["data"], check=tuple(splits))
    backbone = _backbone(cfg)
    cache = FeatureCache(cfg["cache_dir"])
    out = {s: split_features(backbone, dataset, s, cfg["views"], cache, cfg["feature_batch_size"], cfg["loader_workers"])
           for s in splits}
    return FeatureSet(out, list(dataset.classnames))


def build_model(cfg: dict, backbone: ClipBackbone, dataset: ImageDataset, phase: dict | None = None) -> ClipPromptModel:
    schedule = None
    if phase is not None:
        steps, batch = int(phase["steps"]), int(phase["batch_size"])
        epoch = math.ceil(len(dataset.train) / max(1, min(batch, len(dataset.train))))
        warmup = min(int(round(cfg["warmup_epochs"] * epoch)), steps // 5)
        schedule = CoOpSchedule(steps, warmup, float(cfg["warmup_lr"]), cfg["schedule"])
    return ClipPromptModel(backbone, dataset.classnames, cfg["n_ctx"], cfg["class_token_position"], cfg["csc"],
                           cfg["projection"], cfg["logit_scale"], cfg["cut_context"], cfg["attention"], schedule)


def train_clip_prompt(config: dict, features: FeatureSet | None = None) -> None:
    """Tune function trainable: one CoOp gradient phase (see the module docstring).

    ``features``: the frozen image features (``prepare_features``), passed by ``tune.with_parameters`` so
    that they travel once through the object store; without them the trial reads (or builds) the disk cache.
    """
    run_clip_phase(config, features)


def run_clip_phase(config: dict, features: FeatureSet | None = None, report=None) -> dict:
    """One phase, inside Tune or not (``report`` as in ``run_phase``); returns its best evaluation."""
    cfg = clip_config(config)
    phase = {**COOP_PHASE_DEFAULTS, **{k: v for k, v in config.items() if k in COOP_PHASE_DEFAULTS}}
    features = _resolve(features)
    dataset = dataset_for(config["data"], check=() if features is not None else ("train", "val"))
    backbone = _backbone(cfg, image_tower=features is None)
    if features is None:
        features = prepare_features(config)
    else:
        check_features(features, backbone, dataset, cfg["views"])
    model = build_model(cfg, backbone, dataset, phase)
    model.attach_features(features)
    return run_phase({**config, **phase}, model, model.examples("train"), model.examples("val"), report=report)


def clip_trainable(config: dict, resources: dict | None = None, features: FeatureSet | None = None):
    """``train_clip_prompt`` ready for ``tune.run`` / ``Tuner``: the train and val features built once (in a
    one-GPU Ray task when the cluster has GPUs, else here) and shared through the object store with
    ``tune.with_parameters``; each trial asks for ``resources`` (default ``{"cpu": 1, "gpu": 0.25}`` with
    GPUs, so four trials share a card; ``{"cpu": 1}`` without)."""
    import ray
    from ray import tune

    if features is None:
        gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else (1 if torch.cuda.is_available() else 0)
        if ray.is_initialized() and gpus >= 1:
            task = ray.remote(num_gpus=1, num_cpus=1)(prepare_features)
            features = ray.get(task.remote(config))
        else:
            features = prepare_features(config)
    if resources is None:
        has_gpu = (ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else torch.cuda.is_available())
        resources = {"cpu": 1, "gpu": 0.25} if has_gpu else {"cpu": 1}
    logger.info("sharing %.1f MB of image features with trials through the object store", features.nbytes / 2**20)
    return tune.with_resources(tune.with_parameters(train_clip_prompt, features=features), resources)


def evaluate_clip_prompt(config: dict, text: str | None = None, vectors_path: str | None = None,
                         split: str = "test") -> dict:
    """Loss and accuracy of a prompt (text, or saved vectors) on a split, outside Tune."""
    from trainables.phase import load_vectors

    if not text and not vectors_path:
        raise ValueError("evaluate_clip_prompt needs text or vectors_path")
    cfg = clip_config(config)
    dataset = dataset_for(config["data"], check=(split,))
    backbone = _backbone(cfg)
    model = build_model(cfg, backbone, dataset)
    model.attach_features(prepare_features(config, splits=(split,)))
    if vectors_path:
        vectors = load_vectors(vectors_path, model.identity())["prompt"]
    else:
        vectors = model.init_vectors(text)
    vectors = vectors.to(model.device)
    loss, acc = model.evaluate(vectors, model.examples(split))
    return {"loss": loss, "acc": acc, "n": len(model.examples(split)), "prompt_text": model.project(vectors)}
