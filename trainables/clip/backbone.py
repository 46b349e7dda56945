"""The frozen open_clip backbone: model registry checks, weights identity, the tokenizer adapter and loading
(one backbone per process: Tune reuses actors)."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass

import torch

from trainables.clip.images import Preprocess
from trainables.phase import resolve_device

logger = logging.getLogger(__name__)

# A random-init CLIP small enough for CPU tests: 32 px images, 2-layer towers of width 64, CLIP's vocabulary.
TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_BACKBONES: dict = {}  # per process: Tune reuses actors, so a model loads once per worker
_REGISTERED: dict[str, str] = {}  # model_config names registered with open_clip in this process
_CONFIG_DIR: list[str] = []


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


def load_clip(name: str = "ViT-B-16", pretrained: str | None = "openai", model_config: dict | None = None,
              init_seed: int = 0, device: str | torch.device = "auto", image_tower: bool = True) -> ClipBackbone:
    """The frozen model, cached per process. Validates the name and weights first (``check_model``).

    ``image_tower=False`` leaves the image encoder in host memory until ``encode_images`` needs it: a trial
    that gets cached features only ever runs the text encoder, and on a shared GPU every trial would
    otherwise hold its own copy (330 MB for ViT-B/16)."""
    import open_clip

    check_model(name, pretrained, model_config)
    device = resolve_device(device) if isinstance(device, str) else device
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
