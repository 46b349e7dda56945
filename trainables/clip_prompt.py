"""CoOp prompt learning on open_clip (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV
2022) as a ``PromptModel`` for ``trainables.phase.run_phase`` and a Ray Tune function trainable.

``M`` learnable context vectors replace the words before (or around) each class name in the text encoder's
input, ``[SOT] [V1] ... [VM] classname . [EOT]``; an image is classified by the scaled cosine between its
frozen image features and every class's prompted text features. Only the context vectors train.

What makes it fast (numbers and how to measure them: ``examples/bench_coop_speed.py``):

- The image encoder is frozen, so it runs once per (model, weights, split, view) and its features are
  cached on disk (``trainables.images.FeatureCache``) and passed to trials through the Ray object store
  (``clip_trainable``). ``views`` random resized crops + flips of each training image keep CoOp's
  augmentation: a training step draws one cached view per image.
- All classes go through the text encoder in one batch, with the context cut to the longest end-of-text
  position + 1 (the causal mask makes the later positions irrelevant: same features).
- Attention runs through ``scaled_dot_product_attention`` with ``is_causal=True`` (flash / memory-efficient
  kernels) instead of ``nn.MultiheadAttention`` with a float mask; bf16 autocast on GPU.

Config keys (besides the contract keys of ``ray_llm_search.contract`` and the phase keys of ``trainables.phase``):

| key | default | meaning |
|---|---|---|
| ``model`` | ``"ViT-B-16"`` | open_clip architecture name (``open_clip.list_models()``), or a name with ``model_config`` |
| ``pretrained`` | ``"openai"`` | an open_clip tag for ``model``, a local weights file, or ``None`` for random init |
| ``model_config`` | ``None`` | an architecture dict registered under ``model`` (tests: ``TINY_MODEL_CONFIG``) |
| ``init_seed`` | 0 | seed of a random init, so that every process builds the same weights |
| ``data`` | required | image data spec (``trainables.images``) |
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

import json
import logging
import math
import os
import re
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ray_llm_search.contract import PromptOnly
from trainables.images import FeatureCache, ImageDataset, Preprocess, ViewsDataset, files_digest, load_image_dataset
from trainables.phase import run_phase

try:  # validates the phase keys without a model (phase.py's check_config, where this phase.py has it)
    from trainables.phase import check_config as _check_phase_config
except ImportError:  # an older phase.py: run_phase validates them when the phase starts
    _check_phase_config = None
from trainables.projection import ids_to_text, project_to_tokens, text_to_vectors

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
POSITIONS = ("end", "middle", "front")
# A random-init CLIP small enough for CPU tests: 32 px images, 2-layer towers of width 64, CLIP's vocabulary.
TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_BACKBONES: dict = {}  # per process: Tune reuses actors, so a model loads once per worker
_DATASETS: dict = {}
_REGISTERED: dict[str, str] = {}  # model_config names registered with open_clip in this process
_CONFIG_DIR: list[str] = []


# -- models -------------------------------------------------------------------------------------------------


def _canonical(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def register_model_config(name: str, cfg: dict) -> None:
    """Make an architecture dict creatable as ``open_clip.create_model(name)`` in this process (Tune's workers
    call this too, from the trial config)."""
    import open_clip

    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"model_config for {name!r} must be a dict with embed_dim, vision_cfg and text_cfg "
                         f"(like open_clip's model_configs/*.json), got {cfg!r:.200}")
    if _REGISTERED.get(name) == _canonical(cfg):
        return
    existing = open_clip.get_model_config(name)
    if existing is not None and name not in _REGISTERED and existing != cfg:
        raise ValueError(f"model name {name!r} is an open_clip built-in with another architecture; give "
                         f"model_config a name of its own")
    if not _CONFIG_DIR:
        _CONFIG_DIR.append(tempfile.mkdtemp(prefix="ray_llm_search_open_clip_"))
    path = os.path.join(_CONFIG_DIR[0], f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    open_clip.add_model_config(path)
    _REGISTERED[name] = _canonical(cfg)


def check_model(name, pretrained, model_config: dict | None = None) -> None:
    """Raise ``ValueError`` for an unknown architecture or weights, before anything is loaded."""
    import open_clip

    if not isinstance(name, str) or not name:
        raise ValueError(f"model must be an open_clip architecture name such as 'ViT-B-16', got {name!r}")
    if model_config is not None:
        register_model_config(name, model_config)
    elif name.startswith("local-dir:"):
        if not os.path.isdir(name[len("local-dir:"):]):
            raise ValueError(f"model folder not found: {name!r}")
        return
    elif name.startswith("hf-hub:"):
        return
    elif name.replace("/", "-") not in open_clip.list_models():  # open_clip reads "ViT-B/16" as "ViT-B-16"
        close = [m for m in open_clip.list_models() if m.lower().startswith(name.lower()[:5])][:8]
        raise ValueError(f"unknown open_clip model {name!r}; similar: {close or ['ViT-B-16', 'ViT-B-32', 'RN50']} "
                         f"(open_clip.list_models() lists all), or pass model_config")
    if pretrained is None:
        return
    if not isinstance(pretrained, str) or not pretrained:
        raise ValueError(f"pretrained must be an open_clip tag, a weights file or None, got {pretrained!r}")
    if os.path.isfile(os.path.expanduser(pretrained)):
        return
    tags = open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
    if pretrained not in tags:
        looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
        what = "weights file not found" if looks_like_path else "unknown pretrained tag"
        raise ValueError(f"{what} {pretrained!r} for model {name!r}; tags for it: {tags or 'none'}; or a local "
                         f"weights file, or None for random init")


def weights_identity(name: str, pretrained, model_config: dict | None, init_seed: int) -> dict:
    """What the weights are, for cache keys and saved vectors: a tag, a file's path/size/mtime, or a seed."""
    ident: dict = {"model": name}
    if model_config is not None:
        ident["config"] = _canonical(model_config)
    if pretrained is None:
        ident["weights"] = f"random-init(seed={init_seed})"
    elif os.path.isfile(os.path.expanduser(pretrained)):
        path = os.path.abspath(os.path.expanduser(pretrained))
        st = os.stat(path)
        ident["weights"] = {"file": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    else:
        ident["weights"] = f"tag:{pretrained}"
    return ident


class ClipTokenizer:
    """open_clip's BPE tokenizer behind the small Hugging Face-like surface ``trainables.projection`` uses."""

    def __init__(self, simple) -> None:
        self.simple = simple
        self.all_special_ids = list(simple.all_special_ids)  # <start_of_text>, <end_of_text>
        self.sot_token_id = simple.sot_token_id
        self.eot_token_id = simple.eot_token_id

    def encode(self, text: str) -> list[int]:
        return self.simple.encode(text)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids = self.simple.encode(text)
        if add_special_tokens:
            ids = [self.sot_token_id, *ids, self.eot_token_id]
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = True) -> str:
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) in self.all_special_ids)]
        text = " ".join(self.simple.decode(ids).split())
        if clean_up_tokenization_spaces:
            text = re.sub(r" ([.,!?;:'])", r"\1", text)
            text = re.sub(r"(?<=\w) - (?=\w)", "-", text)  # BPE splits "close-up" into three words
        return text


@dataclass
class ClipBackbone:
    """A frozen open_clip model with what prompt learning needs from it."""

    name: str
    model: torch.nn.Module
    tokenizer: ClipTokenizer
    preprocess: Preprocess
    identity: dict
    device: torch.device


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_clip(name: str = "ViT-B-16", pretrained: str | None = "openai", model_config: dict | None = None,
              init_seed: int = 0, device: str | torch.device = "auto", image_tower: bool = True) -> ClipBackbone:
    """The frozen model, cached per process. Validates the name and weights first (``check_model``).

    ``image_tower=False`` leaves the image encoder in host memory until ``encode_images`` needs it: a trial
    that gets cached features only ever runs the text encoder, and on a shared GPU every trial would
    otherwise hold its own copy (330 MB for ViT-B/16)."""
    import open_clip

    check_model(name, pretrained, model_config)
    device = _device(device) if isinstance(device, str) else device
    ident = weights_identity(name, pretrained, model_config, init_seed)
    key = (_canonical(ident), str(device))
    if key in _BACKBONES:
        return _BACKBONES[key]
    weights = os.path.expanduser(pretrained) if pretrained and os.path.isfile(os.path.expanduser(pretrained)) else pretrained
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)  # a random init is the same in every process, so caches match
            model = open_clip.create_model(name, pretrained=weights, device="cpu")
    except Exception as e:  # a failed download, a foreign or truncated file, a state dict of another model
        raise ValueError(f"cannot load open_clip model {name!r} with pretrained={pretrained!r}: {e} (offline? "
                         f"download the weights once, or pass a local weights file as pretrained)") from e
    model.eval().requires_grad_(False)
    visual = model.visual
    if not image_tower:
        model.visual = torch.nn.Identity()
    model.to(device)
    model.visual = visual
    simple = open_clip.get_tokenizer(name)
    if not hasattr(simple, "sot_token_id") or not hasattr(simple, "encode"):
        raise ValueError(f"model {name!r} uses {type(simple).__name__}; CoOp here needs CLIP's BPE tokenizer "
                         f"(OpenAI CLIP / LAION / DataComp ViT and ResNet models)")
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    preprocess = Preprocess(size=size, mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                            std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                            interpolation=cfg.get("interpolation", "bicubic"))
    backbone = ClipBackbone(name, model, ClipTokenizer(simple), preprocess, ident, device)
    _BACKBONES[key] = backbone
    return backbone


@dataclass
class _TextTower:
    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: object
    attn_mask: torch.Tensor | None
    context_length: int


def _text_tower(model: torch.nn.Module, name: str) -> _TextTower:
    tower = model.text if hasattr(model, "text") else model
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, a) for a in needed):
        raise ValueError(f"model {name!r} has no open_clip text transformer (a Hugging Face text tower?); CoOp "
                         f"here needs token_embedding, positional_embedding, transformer and ln_final")
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    if pool not in ("argmax", "eos") or getattr(tower, "cls_emb", None) is not None:
        raise ValueError(f"model {name!r} pools its text features by {pool!r}; CoOp needs the end-of-text token")
    return _TextTower(tower.token_embedding, tower.positional_embedding, tower.transformer, tower.ln_final,
                      getattr(tower, "text_projection", None), getattr(tower, "attn_mask", None),
                      int(tower.positional_embedding.shape[0]))


def _is_causal(mask: torch.Tensor | None, length: int) -> bool:
    if mask is None or tuple(mask.shape) != (length, length):
        return False
    upper = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())


def _sdpa_ready(transformer: torch.nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    for block in transformer.resblocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv") or attn is None:
            return False
        if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            return False
    return True


def _sdpa_block(block, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock with the causal attention done by one fused kernel."""
    attn = block.attn
    b, t, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


# -- the learning-rate schedule -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CoOpSchedule:
    """CoOp's schedule per step: ``warmup_lr`` for the first ``warmup_steps`` steps, then cosine from the base
    lr towards 0 at ``steps``."""

    steps: int
    warmup_steps: int = 0
    warmup_lr: float = 1e-5
    kind: str = "cosine"

    def lr(self, base_lr: float, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        if self.kind == "constant":
            return base_lr
        if step <= self.warmup_steps:
            return self.warmup_lr
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps - 1) / span)
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


# -- features -----------------------------------------------------------------------------------------------


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


# -- the prompt model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedImage:
    """A training or evaluation example: image ``index`` of ``split`` in the attached features."""

    split: str
    index: int
    label: int


class ClipPromptModel(PromptOnly, torch.nn.Module):
    """CoOp's learnable context on a frozen open_clip model (a ``PromptModel`` for ``run_phase``).

    Shapes: context ``[M, D]`` (``[C, M, D]`` with ``csc``), ``D`` the text width; a batch of ``B`` cached
    images gives logits ``[B, C]``.

    Example:
        >>> clip = load_clip("ViT-B-16", "openai")
        >>> model = ClipPromptModel(clip, ["cat", "dog"], n_ctx=4)
        >>> v = model.init_vectors("a photo of a")            # [4, 512]
        >>> model.project(v)
        'a photo of a'
        >>> model.text_features(v).shape                       # [2, 512], L2-normalised
    """

    def __init__(self, backbone: ClipBackbone, classnames: list[str], n_ctx: int = 16,
                 class_token_position: str = "end", csc: bool = False, projection: str = "cosine",
                 logit_scale: float | None = None, cut_context: bool = True, attention: str = "auto",
                 schedule: CoOpSchedule | None = None) -> None:
        super().__init__()
        _check_model_args(n_ctx, class_token_position, csc, projection, logit_scale, attention)
        if len(classnames) < 2:
            raise ValueError(f"need at least 2 classes, got {classnames}")
        self.backbone = backbone
        self.device = backbone.device
        self.tokenizer = backbone.tokenizer
        self.text = _text_tower(backbone.model, backbone.name)
        self.classnames = list(classnames)
        self.n_ctx = n_ctx
        self.position = class_token_position
        self.csc = csc
        self.projection = projection
        self.schedule = schedule
        self.embedding = self.text.token_embedding.weight
        self.excluded = list(self.tokenizer.all_special_ids)
        self.dim = int(self.embedding.shape[1])
        self.logit_scale = float(logit_scale if logit_scale is not None else backbone.model.logit_scale.exp())
        full = self.text.context_length
        causal = _is_causal(self.text.attn_mask, full)
        if attention == "sdpa" and not (causal and _sdpa_ready(self.text.transformer)):
            raise ValueError(f"attention='sdpa' needs plain causal open_clip text blocks; {backbone.name!r} has "
                             f"others; use attention='open_clip'")
        self.use_sdpa = attention != "open_clip" and causal and _sdpa_ready(self.text.transformer)

        ids, ctx_slot, eot = self._layout(full)
        self.full_length = full
        # The causal mask means positions after a prompt's end-of-text never influence its features.
        self.length = int(eot.max()) + 1 if (cut_context and causal) else full
        ids, ctx_slot = ids[:, : self.length], ctx_slot[:, : self.length]
        with torch.no_grad():
            embeds = self.text.token_embedding(ids.to(self.device)).detach()
        self.register_buffer("token_ids", ids.to(self.device), persistent=False)
        self.register_buffer("token_embeds", embeds, persistent=False)
        self.register_buffer("ctx_slot", ctx_slot.to(self.device), persistent=False)  # -1: a fixed token
        self.register_buffer("eot", eot.to(self.device), persistent=False)
        self._features: dict[str, torch.Tensor] = {}
        self._labels: dict[str, torch.Tensor] = {}

    def _layout(self, full: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids ``[C, full]``, context slot per position (``-1`` for a fixed token), end-of-text index."""
        tok, m = self.tokenizer, self.n_ctx
        dot = tok.encode(".")
        filler = tok.encode("X")[0]  # CoOp's placeholder; replaced by the context vectors
        room = full - 2 - m - len(dot)
        if room < 1:
            raise ValueError(f"n_ctx={m} leaves no room for a class name in a context of {full} tokens")
        ids = torch.zeros(len(self.classnames), full, dtype=torch.long)
        slots = torch.full((len(self.classnames), full), -1, dtype=torch.long)
        eot = torch.zeros(len(self.classnames), dtype=torch.long)
        half = m // 2
        for c, name in enumerate(self.classnames):
            name_ids = tok.encode(name)
            if not name_ids:
                raise ValueError(f"class name {name!r} has no tokens")
            if len(name_ids) > room:
                logger.warning("class name %r is %d tokens; cut to %d to fit n_ctx=%d in %d", name, len(name_ids),
                               room, m, full)
                name_ids = name_ids[:room]
            ctx = [("ctx", j) for j in range(m)]
            name_part = [("tok", t) for t in name_ids]
            if self.position == "end":
                body = ctx + name_part
            elif self.position == "middle":
                body = ctx[:half] + name_part + ctx[half:]
            else:
                body = name_part + ctx
            seq = [("tok", tok.sot_token_id), *body, *[("tok", t) for t in dot], ("tok", tok.eot_token_id)]
            for i, (kind, value) in enumerate(seq):
                ids[c, i] = filler if kind == "ctx" else value
                if kind == "ctx":
                    slots[c, i] = value
            eot[c] = len(seq) - 1
        return ids, slots, eot

    # -- features ------------------------------------------------------------------------------------------

    def attach_features(self, features: FeatureSet) -> None:
        """Move cached image features to the model's device (kept in float16)."""
        if len(features.classnames) != len(self.classnames):
            raise ValueError(f"features are for {len(features.classnames)} classes, the model has {len(self.classnames)}")
        for split, sf in features.splits.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only arrays from the object store
                self._features[split] = torch.as_tensor(sf.features).to(self.device)
                self._labels[split] = torch.as_tensor(sf.labels).to(self.device)

    def examples(self, split: str) -> list[CachedImage]:
        if split not in self._labels:
            raise ValueError(f"no features attached for split {split!r}; attached: {sorted(self._labels)}")
        return [CachedImage(split, i, int(y)) for i, y in enumerate(self._labels[split].tolist())]

    def _image_features(self, batch: list[CachedImage], random_view: bool) -> tuple[torch.Tensor, torch.Tensor]:
        splits = {e.split for e in batch}
        if len(splits) != 1:
            parts = [self._image_features([e for e in batch if e.split == s], random_view) for s in sorted(splits)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        split = splits.pop()
        feats = self._features.get(split)
        if feats is None:
            raise ValueError(f"no features attached for split {split!r}; call attach_features first")
        index = torch.as_tensor([e.index for e in batch], device=self.device)
        if random_view and feats.shape[0] > 1:  # one of the cached augmented views, like a fresh random crop
            view = torch.randint(feats.shape[0], (len(batch),), device=self.device)
        else:
            view = torch.zeros(len(batch), dtype=torch.long, device=self.device)
        return feats[view, index].float(), self._labels[split][index]

    # -- text side -----------------------------------------------------------------------------------------

    def _embed(self, ctx: torch.Tensor, prompts: int) -> torch.Tensor:
        """``[prompts * C, T, D]`` input embeddings with the context vectors in their slots."""
        c, t, d = self.token_embeds.shape
        fixed = self.token_embeds.to(ctx.dtype)
        if self.position == "end" and not self.csc:  # CoOp's [prefix, ctx, suffix]: cheap expand, no scatter
            m = self.n_ctx
            ctx = ctx.view(prompts, 1, m, d).expand(prompts, c, m, d)
            x = torch.cat([fixed[:, :1].expand(prompts, c, 1, d), ctx, fixed[:, 1 + m:].expand(prompts, c, t - 1 - m, d)], 2)
            return x.reshape(prompts * c, t, d)
        slot = self.ctx_slot.clamp(min=0)
        if self.csc:
            picked = ctx[torch.arange(c, device=ctx.device)[:, None], slot].unsqueeze(0)  # [1, C, T, D]
        else:
            picked = ctx.view(prompts, self.n_ctx, d)[:, slot]  # [P, C, T, D]
        x = torch.where((self.ctx_slot >= 0)[None, :, :, None], picked, fixed.unsqueeze(0))
        return x.reshape(prompts * c, t, d)

    def _encode(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        x = x + self.text.positional_embedding[:t].to(x.dtype)
        if self.use_sdpa:
            for block in self.text.transformer.resblocks:
                x = _sdpa_block(block, x)
        else:
            mask = self.text.attn_mask[:t, :t] if self.text.attn_mask is not None else None
            x = self.text.transformer(x, attn_mask=mask)
        x = self.text.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.text.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x

    def text_features(self, ctx: torch.Tensor) -> torch.Tensor:
        """``[C, E]`` L2-normalised features of every class's prompt, all classes in one batch."""
        if ctx.shape != self.vector_shape:
            raise ValueError(f"context must be {tuple(self.vector_shape)}, got {tuple(ctx.shape)}")
        with _autocast(self.device):
            x = self._encode(self._embed(ctx, 1), self.eot)
        return F.normalize(x.float(), dim=-1)

    def text_features_many(self, ctx: torch.Tensor) -> torch.Tensor:
        """``[P, C, E]`` for ``P`` prompts ``[P, M, D]`` in one forward (several trials' prompts batched)."""
        if self.csc or ctx.dim() != 3 or tuple(ctx.shape[1:]) != (self.n_ctx, self.dim):
            raise ValueError(f"need generic contexts [P, {self.n_ctx}, {self.dim}], got {tuple(ctx.shape)}")
        p = ctx.shape[0]
        with _autocast(self.device):
            x = self._encode(self._embed(ctx, p), self.eot.repeat(p))
        return F.normalize(x.float(), dim=-1).view(p, len(self.classnames), -1)

    @property
    def vector_shape(self) -> torch.Size:
        if self.csc:
            return torch.Size((len(self.classnames), self.n_ctx, self.dim))
        return torch.Size((self.n_ctx, self.dim))

    def logits(self, vectors: torch.Tensor, batch: list[CachedImage], random_view: bool = False) -> torch.Tensor:
        images, _ = self._image_features(batch, random_view)
        return self.logit_scale * images @ self.text_features(vectors).T

    # -- PromptModel interface -----------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"model": self.backbone.name, "weights": json.dumps(self.backbone.identity.get("weights"), sort_keys=True),
                "n_ctx": self.n_ctx, "dim": self.dim, "csc": self.csc, "class_token_position": self.position,
                "classes": len(self.classnames) if self.csc else None}

    def init_vectors(self, text: str) -> torch.Tensor:
        """The token embeddings of ``text`` (cycled to ``M``), or CoOp's N(0, 0.02) init for empty text."""
        if not text or not text.strip():
            vectors = torch.randn(self.n_ctx, self.dim) * 0.02
        else:
            vectors = text_to_vectors(text, self.tokenizer, self.embedding, self.n_ctx).cpu()
        if self.csc:
            vectors = vectors.unsqueeze(0).repeat(len(self.classnames), 1, 1)
        return vectors

    def project(self, vectors: torch.Tensor) -> str:
        v = vectors.mean(0) if self.csc else vectors
        ids = project_to_tokens(v.to(self.embedding.device), self.embedding, self.projection, self.excluded)
        return ids_to_text(ids, self.tokenizer)

    def lr_at(self, base_lr: float, step: int) -> float:
        """``run_phase``'s schedule hook: CoOp's warm-up + cosine when a schedule is set, else ``base_lr``."""
        return base_lr if self.schedule is None else self.schedule.lr(base_lr, step)

    def loss(self, vectors: torch.Tensor, batch: list[CachedImage]) -> torch.Tensor:
        images, labels = self._image_features(batch, random_view=True)
        logits = self.logit_scale * images @ self.text_features(vectors).T
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def evaluate(self, vectors: torch.Tensor, examples: list[CachedImage], batch_size: int = 8192) -> tuple[float, float]:
        return self.evaluate_each(vectors, examples, batch_size)[:2]

    def evaluate_each(self, vectors: torch.Tensor, examples: list[CachedImage],
                      batch_size: int = 8192) -> tuple[float, float, list[bool]]:
        """Mean loss, accuracy and per-image correctness (for ``screen_test="paired"``)."""
        if not examples:
            raise ValueError("evaluate needs at least one example")
        text = self.text_features(vectors)
        total_loss, right = 0.0, []
        for i in range(0, len(examples), batch_size):
            images, labels = self._image_features(examples[i : i + batch_size], random_view=False)
            logits = self.logit_scale * images @ text.T
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            right += [bool(x) for x in (logits.argmax(-1) == labels).tolist()]
        return total_loss / len(examples), sum(right) / len(examples), right


def _check_model_args(n_ctx, position, csc, projection, logit_scale, attention) -> None:
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be an integer >= 1, got {n_ctx!r}")
    if position not in POSITIONS:
        raise ValueError(f"class_token_position must be one of {POSITIONS}, got {position!r}")
    if not isinstance(csc, bool):
        raise ValueError(f"csc must be True or False, got {csc!r}")
    if projection not in ("cosine", "l2"):
        raise ValueError(f"projection must be 'cosine' or 'l2', got {projection!r}")
    if logit_scale is not None and (not isinstance(logit_scale, (int, float)) or logit_scale <= 0):
        raise ValueError(f"logit_scale must be None or a number > 0, got {logit_scale!r}")
    if attention not in ("auto", "sdpa", "open_clip"):
        raise ValueError(f"attention must be 'auto', 'sdpa' or 'open_clip', got {attention!r}")


# -- config, trainable, evaluation --------------------------------------------------------------------------


def clip_config(config: dict) -> dict:
    """The CLIP keys of a trial config with defaults, validated (model name and weights included) before
    anything is loaded."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    if "data" not in config:
        raise ValueError("config['data'] is required: an image data spec such as {'root': ..., 'shots': 16} "
                         "(see trainables.images)")
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
