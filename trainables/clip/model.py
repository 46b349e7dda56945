"""CoOp's learnable context on a frozen open_clip model (``ClipPromptModel``, a ``PromptModel``) and its
learning-rate schedule."""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ray_llm_search.contract import PromptOnly
from trainables.clip.backbone import ClipBackbone
from trainables.clip.features import FeatureSet, _autocast
from trainables.clip.text_encoder import _is_causal, _sdpa_block, _sdpa_ready, _text_tower
from trainables.projection import ids_to_text, nearest_tokens, text_to_vectors

logger = logging.getLogger(__name__)

POSITIONS = ("end", "middle", "front")


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
        self._nearest = None
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
        if self._nearest is None:  # the frozen vocabulary prepared once (trainables.projection.nearest_tokens)
            self._nearest = nearest_tokens(self.embedding, self.projection, self.excluded)
        ids = self._nearest(v.to(self.embedding.device))
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
