"""A BERT WordPiece tokenizer straight from ``tokenizer.json``, without importing transformers.

transformers' tokenizer classes import the ``transformers`` package (1.5 s) and its tokenizer machinery (0.7 s
more) in every fresh worker, for a default backbone (all-MiniLM-L6-v2) whose tokenizer is a ``tokenizers``
pipeline saved in ``tokenizer.json``. ``PlainTokenizer`` runs that pipeline itself and offers the part of a
transformers tokenizer that ``trainables.text_prompt`` and ``trainables.projection`` use: calling it on a text,
a batch, or a batch of pairs (``add_special_tokens``, ``truncation`` (longest first), ``max_length``,
``padding`` (to the longest), ``return_tensors="pt"``), ``decode``, ``tokenize``, ``convert_tokens_to_ids``,
``convert_ids_to_tokens``, ``get_vocab``, ``all_special_ids`` and the special tokens' ids.
``tests/test_tokenizer.py`` checks it against ``transformers.AutoTokenizer`` on real datasets, pairs included, id
for id.

``load_plain_tokenizer(folder)`` returns ``None`` for anything but a BERT tokenizer saved with its
``tokenizer.json`` (the caller then uses ``AutoTokenizer``).
"""

from __future__ import annotations

import json
import os
import threading

__all__ = ["PlainTokenizer", "load_plain_tokenizer"]

_SPECIAL_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Encoding(dict):
    """What a call returns: ``input_ids``, ``token_type_ids``, ``attention_mask`` (lists, or tensors)."""

    def to(self, device) -> Encoding:
        return Encoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


class PlainTokenizer:
    """A ``tokenizers.Tokenizer`` with the calling conventions of transformers' ``BertTokenizer``."""

    bos_token_id = None
    eos_token_id = None
    eos_token = None

    def __init__(self, tokenizer, special: dict[str, str], clean_up_spaces: bool, model_max_length: int = 512) -> None:
        self._tk = tokenizer
        self._lock = threading.Lock()  # a call sets the pipeline's truncation and padding, then encodes
        self.model_max_length = int(model_max_length)
        self._tk.no_truncation()
        self._tk.no_padding()
        ids = {key: tokenizer.token_to_id(token) for key, token in special.items()}
        if any(v is None for v in ids.values()):
            raise ValueError(f"special tokens missing from the vocabulary: {special}")
        self.unk_token_id, self.sep_token_id = ids["unk_token"], ids["sep_token"]
        self.pad_token_id, self.cls_token_id, self.mask_token_id = ids["pad_token"], ids["cls_token"], ids["mask_token"]
        self.pad_token = special["pad_token"]
        self.all_special_ids = [ids[k] for k in _SPECIAL_KEYS]
        self.clean_up_tokenization_spaces = clean_up_spaces

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, text, text_pair=None, *, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, padding: bool = False, return_tensors: str | None = None) -> Encoding:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if text_pair is not None:
            pairs = [text_pair] if single else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts and {len(pairs)} pairs")
            inputs = list(zip(texts, pairs, strict=True))
        else:
            inputs = texts
        tk = self._tk
        with self._lock:
            if truncation:  # as transformers: to max_length, else to the model's limit
                tk.enable_truncation(int(max_length if max_length is not None else self.model_max_length),
                                     strategy="longest_first")
            else:
                tk.no_truncation()
            if padding:
                tk.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
            else:
                tk.no_padding()
            try:
                encoded = tk.encode_batch(inputs, add_special_tokens=add_special_tokens)
            finally:
                tk.no_truncation()
                tk.no_padding()
        out = Encoding(input_ids=[e.ids for e in encoded], token_type_ids=[e.type_ids for e in encoded],
                       attention_mask=[e.attention_mask for e in encoded])
        if return_tensors == "pt":
            import torch

            return Encoding({k: torch.tensor(v, dtype=torch.long) for k, v in out.items()})
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return Encoding({k: v[0] for k, v in out.items()}) if single else out

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        text = self._tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if clean:  # transformers' clean_up_tokenization
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def tokenize(self, text: str) -> list[str]:
        return self._tk.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            found = self._tk.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._tk.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tk.id_to_token(int(i)) for i in ids if int(i) not in special]

    def get_vocab(self) -> dict[str, int]:
        return self._tk.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)


def load_plain_tokenizer(folder: str) -> PlainTokenizer | None:
    """The BERT tokenizer saved in ``folder`` (``tokenizer.json`` and a ``tokenizer_config.json`` naming
    ``BertTokenizer`` or ``BertTokenizerFast``), or ``None`` where that is not what the folder holds."""
    path, config_path = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "tokenizer_config.json")
    if not (os.path.isfile(path) and os.path.isfile(config_path)):
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        with open(path, encoding="utf-8") as f:
            text = f.read()  # read once: checked here, then built from the same text
        pipeline = json.loads(text)
    except (OSError, ValueError):
        return None
    if config.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast"):
        return None
    if (pipeline.get("model") or {}).get("type") != "WordPiece" or (pipeline.get("decoder") or {}).get("type") != "WordPiece":
        return None
    special = {key: config.get(key) for key in _SPECIAL_KEYS}
    if not all(isinstance(v, str) for v in special.values()):
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(text)
        limit = config.get("model_max_length")
        limit = limit if isinstance(limit, int) and 0 < limit <= 1_000_000 else 512
        return PlainTokenizer(tokenizer, special, bool(config.get("clean_up_tokenization_spaces", False)), limit)
    except Exception:  # no tokenizers, or a file it cannot read: the caller falls back to AutoTokenizer
        return None
