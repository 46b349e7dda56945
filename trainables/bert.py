"""A BERT encoder in plain torch, for loading a frozen BERT backbone without transformers' modelling stack.

Why: a fresh Tune worker that builds ``transformers.AutoModel`` imports transformers' whole modelling stack
(``modeling_utils`` pulls in ``torch._dynamo``, ``torch.distributed.tensor``, scipy and the image utilities),
3-3.5 s on a 2-core machine before the first step of a run, for a 6-layer model whose weights load in 3 ms.
``BertEncoder`` is the same computation, op for op, as transformers' ``BertModel`` (its ``sdpa`` attention, the
default) without the pooler: the same weights give the same hidden states and the same gradients, bit for bit on
one machine (tests/test_bert.py checks forward and backward against transformers on all-MiniLM-L6-v2).

``load_bert(path)`` returns one for a local folder holding a plain BERT encoder (``config.json`` of
``model_type: "bert"``, not a decoder, absolute positions, GELU, and float32 ``model.safetensors``); anything else is
``None`` and the caller loads it with transformers. The interface is the part of ``BertModel`` a soft-prompt
classifier uses: ``model(input_ids= | inputs_embeds=, attention_mask=, token_type_ids=).last_hidden_state`` and
``get_input_embeddings()``.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def plain_bert_config(path: str) -> dict | None:
    """The folder's ``config.json`` if ``BertEncoder`` computes exactly what transformers would, else ``None``."""
    config_path = os.path.join(path, "config.json")
    if not (os.path.isfile(config_path) and os.path.isfile(os.path.join(path, "model.safetensors"))):
        return None
    try:
        with open(config_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    plain = (cfg.get("model_type") == "bert" and not cfg.get("is_decoder") and not cfg.get("add_cross_attention")
             and cfg.get("position_embedding_type", "absolute") == "absolute" and cfg.get("hidden_act") == "gelu"
             and not cfg.get("chunk_size_feed_forward") and cfg.get("hidden_size", 0) % max(
                 cfg.get("num_attention_heads", 1), 1) == 0
             and cfg.get("attn_implementation", cfg.get("_attn_implementation")) in (None, "sdpa"))
    needed = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size")
    return cfg if plain and all(isinstance(cfg.get(k), int) for k in needed) else None


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads, self.head_size = heads, hidden // heads
        self.scaling = self.head_size ** -0.5
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_dense = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output_dense = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_size)
        q = self.query(x).view(*shape).transpose(1, 2)
        k = self.key(x).view(*shape).transpose(1, 2)
        v = self.value(x).view(*shape).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scaling, is_causal=False)
        a = a.reshape(a.shape[0], -1, q.shape[2], v.shape[-1]).transpose(1, 2).contiguous()
        a = a.reshape(*x.shape[:-1], -1).contiguous()
        x = self.attention_norm(self.attention_dense(a) + x)
        return self.output_norm(self.output_dense(F.gelu(self.intermediate(x))) + x)


class BertEncoder(nn.Module):
    """transformers' ``BertModel`` forward (embeddings, then every layer with ``sdpa`` attention), pooler left out.

    Shapes: ``input_ids`` or ``inputs_embeds`` ``[B, T(, D)]``, ``attention_mask`` and ``token_type_ids``
    ``[B, T]``; ``last_hidden_state`` ``[B, T, D]``.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = SimpleNamespace(**config)
        hidden, eps = config["hidden_size"], float(config.get("layer_norm_eps", 1e-12))
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden, padding_idx=config.get("pad_token_id"))
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"]))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        b, t = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if token_type_ids is None:
            token_type_ids = torch.zeros(b, t, dtype=torch.long, device=device)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(torch.arange(t, device=device).unsqueeze(0))
        x = self.embedding_norm(x)
        mask = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            # transformers' bidirectional mask for sdpa: boolean, [B, 1, T, T], None where nothing is padded
            mask = attention_mask.bool()[:, None, None, :].expand(b, 1, t, t)
        for layer in self.layers:
            x = layer(x, mask)
        return SimpleNamespace(last_hidden_state=x)


# transformers' parameter names (a bare BertModel's, or under "bert." in a task model's file) -> ours
_RENAMES = (
    ("embeddings.word_embeddings.", "word_embeddings."),
    ("embeddings.position_embeddings.", "position_embeddings."),
    ("embeddings.token_type_embeddings.", "token_type_embeddings."),
    ("embeddings.LayerNorm.", "embedding_norm."),
)
_LAYER_RENAMES = (
    ("attention.self.query.", "query."),
    ("attention.self.key.", "key."),
    ("attention.self.value.", "value."),
    ("attention.output.dense.", "attention_dense."),
    ("attention.output.LayerNorm.", "attention_norm."),
    ("intermediate.dense.", "intermediate."),
    ("output.dense.", "output_dense."),
    ("output.LayerNorm.", "output_norm."),
)


def _our_name(name: str) -> str | None:
    name = name.removeprefix("bert.")
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # the oldest checkpoints' LayerNorm names
    for theirs, ours in _RENAMES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    if name.startswith("encoder.layer."):
        index, _, rest = name[len("encoder.layer."):].partition(".")
        for theirs, ours in _LAYER_RENAMES:
            if rest.startswith(theirs):
                return f"layers.{index}.{ours}{rest[len(theirs):]}"
    return None  # the pooler, task heads, position_ids buffers: not part of the encoder


def load_bert(path: str) -> BertEncoder | None:
    """A ``BertEncoder`` with the folder's weights, or ``None`` where the folder is not a plain BERT encoder (see
    ``plain_bert_config``) or its weights do not cover the encoder exactly (the caller then uses transformers)."""
    config = plain_bert_config(path)
    if config is None:
        return None
    from safetensors.torch import load_file

    try:
        saved = load_file(os.path.join(path, "model.safetensors"))
    except (OSError, ValueError, RuntimeError):
        return None
    weights = {}
    for name, tensor in saved.items():
        ours = _our_name(name)
        if ours is not None:
            weights[ours] = tensor
    with torch.random.fork_rng(devices=[]):  # the layers' random initialisation leaves the caller's RNG as it was
        model = BertEncoder(config)
    expected = model.state_dict()
    if set(weights) != set(expected) or any(weights[k].shape != v.shape or weights[k].dtype != torch.float32
                                            for k, v in expected.items()):
        return None  # another layout, or weights saved in another precision (transformers may keep it)
    model.load_state_dict(weights)
    return model
