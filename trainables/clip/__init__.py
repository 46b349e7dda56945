"""CoOp prompt learning on open_clip (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV
2022) as a ``PromptModel`` for ``trainables.phase.run_phase`` and a Ray Tune function trainable.

``M`` learnable context vectors replace the words before (or around) each class name in the text encoder's
input, ``[SOT] [V1] ... [VM] classname . [EOT]``; an image is classified by the scaled cosine between its
frozen image features and every class's prompted text features. Only the context vectors train.

What makes it fast (numbers and how to measure them: ``examples/bench_coop_speed.py``):

- The image encoder is frozen, so it runs once per (model, weights, split, view) and its features are
  cached on disk (``trainables.clip.features.FeatureCache``) and passed to trials through the Ray object store
  (``clip_trainable``). ``views`` random resized crops + flips of each training image keep CoOp's
  augmentation: a training step draws one cached view per image.
- All classes go through the text encoder in one batch, with the context cut to the longest end-of-text
  position + 1 (the causal mask makes the later positions irrelevant: same features).
- Attention runs through ``scaled_dot_product_attention`` with ``is_causal=True`` (flash / memory-efficient
  kernels) instead of ``nn.MultiheadAttention`` with a float mask; bf16 autocast on GPU.

The package, one job per module:

| module | what |
|---|---|
| ``images`` | labelled image data (class folders, CoOp split files), k-shot splits, preprocessing and augmented views |
| ``backbone`` | open_clip model registry checks, weights identity, tokenizer adapter, ``load_clip`` (once per process) |
| ``text_encoder`` | the text tower's parts and its attention as one fused causal SDPA call |
| ``features`` | frozen image features: encoding, ``FeatureSet``, the on-disk ``FeatureCache``, checks |
| ``model`` | ``ClipPromptModel`` (CoOp's context, a ``PromptModel``) and ``CoOpSchedule`` |
| ``trainable`` | config keys and defaults, ``prepare_features``, ``train_clip_prompt``, ``clip_trainable``, ``evaluate_clip_prompt`` |

Config keys (besides the contract keys of ``ray_llm_search.contract`` and the phase keys of ``trainables.phase``):

| key | default | meaning |
|---|---|---|
| ``model`` | ``"ViT-B-16"`` | open_clip architecture name (``open_clip.list_models()``), or a name with ``model_config`` |
| ``pretrained`` | ``"openai"`` | an open_clip tag for ``model``, a local weights file, or ``None`` for random init |
| ``model_config`` | ``None`` | an architecture dict registered under ``model`` (tests: ``TINY_MODEL_CONFIG``) |
| ``init_seed`` | 0 | seed of a random init, so that every process builds the same weights |
| ``data`` | required | image data spec (``trainables.clip.images``) |
| ``n_ctx`` | 16 | ``M`` context vectors |
| ``class_token_position`` | ``"end"`` | ``"end"``, ``"middle"`` or ``"front"`` |
| ``csc`` | ``False`` | class-specific context: ``[C, M, D]`` vectors (projected text: their mean over classes) |
| ``views`` | 8 | augmented views cached per training image |
| ``cache_dir`` | ``~/.cache/ray_llm_search/clip_features`` | the feature cache |
| ``logit_scale`` | ``None`` | ``None``: the model's own (100 for OpenAI CLIP) |
| ``schedule`` | ``"cosine"`` | ``"cosine"`` (CoOp: constant ``warmup_lr`` for ``warmup_epochs``, then cosine) or ``"constant"`` |
| ``warmup_epochs``, ``warmup_lr`` | 1, 1e-5 | CoOp's warm-up; capped at a fifth of the phase |
| ``cut_context`` | ``True`` | cut the text context to the longest prompt |
| ``attention`` | ``"auto"`` | ``"sdpa"`` (fused causal kernel), ``"open_clip"`` (the model's own), ``"auto"``: sdpa when possible |
| ``projection`` | ``"cosine"`` | nearest-token metric, or ``"l2"`` |
| ``device`` | ``"auto"`` | ``"cpu"``, ``"cuda"``; bf16 autocast on GPU |
| ``feature_batch_size``, ``loader_workers`` | 128, auto | image encoder batch and decoding processes for the cache |

CoOp's recipe is the phase default (``COOP_PHASE_DEFAULTS``): SGD (momentum 0.9), lr 0.002, weight decay
5e-4, batch 32, cosine schedule with one constant warm-up epoch.

Example:
    >>> from ray import tune
    >>> config = {"model": "ViT-B-16", "pretrained": "openai", "data": {"root": "~/data/pets", "shots": 16}}
    >>> trainable = clip_trainable(config, resources={"cpu": 2, "gpu": 0.25})  # builds the feature cache once
    >>> tune.run(trainable, config=config, search_alg=search, num_samples=search.total_trials)
"""

from __future__ import annotations

from trainables.clip.backbone import (
    TINY_MODEL_CONFIG,
    ClipBackbone,
    ClipTokenizer,
    check_model,
    load_clip,
    register_model_config,
    weights_identity,
)
from trainables.clip.features import (
    FeatureCache,
    FeatureSet,
    SplitFeatures,
    check_features,
    encode_images,
    split_features,
)
from trainables.clip.images import ImageDataset, ImageExample, load_image_dataset
from trainables.clip.model import POSITIONS, CachedImage, ClipPromptModel, CoOpSchedule
from trainables.clip.trainable import (
    CLIP_DEFAULTS,
    COOP_PHASE_DEFAULTS,
    build_model,
    clip_config,
    clip_trainable,
    dataset_for,
    evaluate_clip_prompt,
    prepare_features,
    run_clip_phase,
    train_clip_prompt,
)

__all__ = [
    "CLIP_DEFAULTS", "COOP_PHASE_DEFAULTS", "POSITIONS", "TINY_MODEL_CONFIG", "CachedImage", "ClipBackbone",
    "ClipPromptModel", "ClipTokenizer", "CoOpSchedule", "FeatureCache", "FeatureSet", "ImageDataset", "ImageExample",
    "SplitFeatures", "build_model", "check_features", "check_model", "clip_config", "clip_trainable", "dataset_for",
    "encode_images", "evaluate_clip_prompt", "load_clip", "load_image_dataset", "prepare_features",
    "register_model_config", "run_clip_phase", "split_features", "train_clip_prompt", "weights_identity",
]
