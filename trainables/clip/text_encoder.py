"""CLIP's text tower for CoOp: the open_clip text transformer's parts, and its attention rewritten as one fused
causal ``scaled_dot_product_attention`` call where the blocks allow it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

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
