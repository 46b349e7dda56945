"""Nearest-token projection of prompt vectors, and prompt text to vectors.

Unlike the MaaO authors' code, which took the *least* similar token under cosine, this picks the most
similar token (highest cosine, or smallest L2 distance), never a special token.
"""

from __future__ import annotations

import torch

METRICS = ("cosine", "l2")


def special_token_ids(tokenizer) -> list[int]:
    """Ids a projection must never produce: [CLS], [SEP], [PAD], <s>, </s>, <|endoftext|>, unused slots."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for token, idx in vocab.items():
        if token.startswith("[unused") or (token.startswith("<|") and token.endswith("|>")):
            ids.add(idx)
    return sorted(ids)


def project_to_tokens(
    vectors: torch.Tensor,
    embedding: torch.Tensor,
    metric: str = "cosine",
    exclude_ids: list[int] | None = None,
    chunk: int = 8192,
) -> torch.Tensor:
    """Index of the nearest vocabulary embedding for each prompt vector.

    Args:
        vectors: ``[L, D]`` prompt vectors.
        embedding: ``[V, D]`` token embedding matrix.
        metric: ``"cosine"`` (most similar) or ``"l2"`` (closest).
        exclude_ids: token ids never chosen (special tokens).
        chunk: vocabulary rows compared at a time, bounding memory for large vocabularies.

    Returns:
        ``[L]`` long tensor of token ids.
    """
    _check(metric, embedding)
    _check_vectors(vectors, int(embedding.shape[1]))
    # one chunk prepared at a time (a generator), so that memory stays bounded by ``chunk``
    return _nearest(vectors, metric, _chunks(embedding, metric, exclude_ids, chunk, vectors.device))


class NearestTokens:
    """``project_to_tokens`` against one frozen embedding, its vocabulary prepared once: each chunk of rows in
    float32 (normalised for ``"cosine"``) with its exclusion mask, on ``device`` (default: the embedding's).
    The same operations on the same chunks as a call of ``project_to_tokens``, so the same ids; a model that
    projects at every evaluation keeps one (MiniLM: 34 ms a projection, 30 of them normalising the vocabulary).
    The prepared copy costs the embedding's size again in float32: for a frozen embedding only (it does not
    follow later changes of the weights)."""

    def __init__(self, embedding: torch.Tensor, metric: str = "cosine", exclude_ids: list[int] | None = None,
                 chunk: int = 8192, device: torch.device | str | None = None) -> None:
        _check(metric, embedding)
        self.metric, self.dim = metric, int(embedding.shape[1])
        device = embedding.device if device is None else torch.device(device)
        self.chunks = list(_chunks(embedding, metric, exclude_ids, chunk, device))

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        _check_vectors(vectors, self.dim)
        return _nearest(vectors, self.metric, self.chunks)


def _check(metric: str, embedding: torch.Tensor) -> None:
    if metric not in METRICS:
        raise ValueError(f"projection metric must be one of {METRICS}, got {metric!r}")
    if embedding.dim() != 2:
        raise ValueError(f"need vectors [L, D] and embedding [V, D]; got an embedding {tuple(embedding.shape)}")


def _check_vectors(vectors: torch.Tensor, dim: int) -> None:
    if vectors.dim() != 2 or vectors.shape[1] != dim:
        raise ValueError(f"need vectors [L, D] and embedding [V, D]; got {tuple(vectors.shape)} and [V, {dim}]")


def _chunks(embedding: torch.Tensor, metric: str, exclude_ids: list[int] | None, chunk: int, device):
    """``(first row, rows in float32 on device (normalised for cosine), their exclusion mask)`` per chunk."""
    excluded = torch.zeros(embedding.shape[0], dtype=torch.bool, device=device)
    if exclude_ids:
        excluded[torch.as_tensor(exclude_ids, device=device)] = True
    for start in range(0, embedding.shape[0], chunk):
        with torch.no_grad():
            e = embedding[start : start + chunk].detach().to(device, torch.float32)
            if metric == "cosine":
                e = torch.nn.functional.normalize(e, dim=-1)
        yield start, e, excluded[start : start + chunk]


def _nearest(vectors: torch.Tensor, metric: str, chunks) -> torch.Tensor:
    """The best-scoring row over ``chunks`` (of ``_chunks``) for each vector."""
    v = vectors.detach().float()
    best_score = torch.full((v.shape[0],), -float("inf"), device=v.device)
    best_id = torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
    if metric == "cosine":
        v = torch.nn.functional.normalize(v, dim=-1)
    for start, e, excluded in chunks:
        e, excluded = e.to(v.device), excluded.to(v.device)
        score = v @ e.T if metric == "cosine" else -torch.cdist(v, e)
        score = score.masked_fill(excluded, -float("inf"))
        value, index = score.max(dim=1)
        better = value > best_score
        best_score = torch.where(better, value, best_score)
        best_id = torch.where(better, index + start, best_id)
    return best_id


# Vocabularies up to this many embedding values (float32: 256 MB) are prepared once per model (``nearest_tokens``);
# larger ones (e.g. a 7B LM's 32000 x 4096) are prepared at each projection, as ``project_to_tokens`` does.
PREPARED_MAX_ELEMENTS = 1 << 26


def nearest_tokens(embedding: torch.Tensor, metric: str = "cosine", exclude_ids: list[int] | None = None,
                   device: torch.device | str | None = None):
    """The projection a ``PromptModel`` keeps for its frozen embedding: a ``NearestTokens`` where the prepared
    copy is at most ``PREPARED_MAX_ELEMENTS`` values, else ``project_to_tokens`` at each call (same ids)."""
    if embedding.numel() <= PREPARED_MAX_ELEMENTS:
        return NearestTokens(embedding, metric, exclude_ids, device=device)
    _check(metric, embedding)
    return lambda vectors: project_to_tokens(vectors, embedding, metric, exclude_ids)


def text_to_ids(text: str, tokenizer, length: int) -> list[int]:
    """Token ids of ``text`` fitted to ``length``: truncated, or repeated cyclically when shorter (as PEFT's
    text initialisation does), so every prompt vector starts at a real word."""
    if length < 1:
        raise ValueError(f"prompt length must be >= 1, got {length}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt text {text!r} has no tokens")
    return [ids[i % len(ids)] for i in range(length)]


def text_to_vectors(text: str, tokenizer, embedding: torch.Tensor, length: int) -> torch.Tensor:
    """``[length, D]`` copy of the token embeddings of ``text`` (see ``text_to_ids``)."""
    ids = torch.as_tensor(text_to_ids(text, tokenizer, length), device=embedding.device)
    return embedding[ids].detach().clone().float()


def ids_to_text(ids, tokenizer) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True,
                            clean_up_tokenization_spaces=True).strip()


class VocabularyPrompt:
    """``init_vectors`` and ``project`` of a ``PromptModel`` whose prompt vectors live among its tokenizer's word
    embeddings (the text and PEFT trainables): the class names the attribute holding them (``EMBEDDINGS``) and
    sets ``tokenizer``, ``prompt_length``, ``projection``, ``excluded`` and ``_nearest = None``."""

    EMBEDDINGS = "embedding"

    def init_vectors(self, text: str) -> torch.Tensor:
        return text_to_vectors(text, self.tokenizer, getattr(self, self.EMBEDDINGS), self.prompt_length)

    def project(self, vectors: torch.Tensor) -> str:
        if self._nearest is None:  # the frozen vocabulary prepared once (nearest_tokens)
            self._nearest = nearest_tokens(getattr(self, self.EMBEDDINGS), self.projection, self.excluded,
                                           vectors.device)
        return ids_to_text(self._nearest(vectors), self.tokenizer)
