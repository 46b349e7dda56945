"""trainables.tokenizer: the default backbone's tokenizer without transformers, id for id transformers' own."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.data import bbc_news_spec, load_dataset, shared_data_spec
from trainables.text_prompt import resolve_model
from trainables.tokenizer import PlainTokenizer, load_plain_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = Path(ROOT).parent / "shared" / "data"
ODD = ["", " ", "Hello, World!", "don't stop: it's 3.5% (approx.) -- ok?", "naïve café déjà vu", "中文 and 日本語",
       "tabs\tand\nnewlines", "emoji 🙂 here", "[CLS] inside [SEP] text", "a" * 600, "word " * 200,
       "ünïcödé ACCENTS", "x" * 3, "##piece", "[UNK] [PAD]"]


@pytest.fixture(scope="module")
def both():
    from transformers import AutoTokenizer

    path = resolve_model(None)
    ours = load_plain_tokenizer(path)
    assert isinstance(ours, PlainTokenizer)
    return ours, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[tuple[str, str]]]:
    """Real texts (BBC News, and SST-2, TREC, RTE and BoolQ pairs where ../shared/data is present) and odd ones."""
    bbc = load_dataset(bbc_news_spec(shots=16, val_shots=8, test_size=150, seed=0))
    singles = [e.text for e in bbc.train + bbc.val + bbc.test] + ODD
    # (tokenizers truncates a pair one token at a time: two whole articles to 8 tokens take seconds each)
    pairs = [(a[:400], b[:400]) for a, b in zip(singles[::2], singles[1::2], strict=False)]
    if SHARED_DATA.is_dir():
        for name in ("sst2", "trec", "rte", "boolq"):
            ds = load_dataset(shared_data_spec(name, root=str(SHARED_DATA), shots=8, val_shots=8, seed=0))
            for e in ds.train + ds.val + ds.test[:100]:
                if e.text_b is None:
                    singles.append(e.text)
                else:
                    pairs.append((e.text, e.text_b))
    return singles, pairs


def _same(a, b) -> None:
    assert set(a) >= {"input_ids", "attention_mask", "token_type_ids"}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        else:
            assert x == y, key


@pytest.mark.parametrize("max_length", [8, 32, 64, 512])
def test_batches_and_pairs_encode_as_transformers_does(both, texts, max_length):
    ours, theirs = both
    singles, pairs = texts
    for start in range(0, len(singles), 32):
        batch = singles[start:start + 32]
        kw = {"truncation": True, "max_length": max_length, "padding": True, "return_tensors": "pt"}
        _same(ours(batch, **kw), theirs(batch, **kw))
    for start in range(0, len(pairs), 32):
        a, b = [p[0] for p in pairs[start:start + 32]], [p[1] for p in pairs[start:start + 32]]
        kw = {"truncation": True, "max_length": max_length, "padding": True, "return_tensors": "pt"}
        _same(ours(a, b, **kw), theirs(a, b, **kw))


def test_single_texts_without_special_tokens_and_untruncated_lists(both, texts):
    ours, theirs = both
    singles, _ = texts
    for text in singles[:80] + ODD:
        assert ours(text, add_special_tokens=False)["input_ids"] == theirs(text, add_special_tokens=False)["input_ids"]
        _same(ours(text), theirs(text))
    _same(ours(singles[:5]), theirs(singles[:5]))  # no padding: lists of their own lengths
    long = [t for t in singles if len(t) > 4000][:3]
    assert long and ours.model_max_length == theirs.model_max_length == 512
    _same(ours(long, truncation=True), theirs(long, truncation=True))  # no max_length: the model's limit
    for text in ODD + singles[:20]:
        tokens = theirs.tokenize(text)
        assert ours.tokenize(text) == tokens
        assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
        ids = theirs(text)["input_ids"]
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
        assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == theirs.convert_ids_to_tokens(
            ids, skip_special_tokens=True)
    assert ours.convert_tokens_to_ids("no-such-token-here") == theirs.convert_tokens_to_ids("no-such-token-here")
    assert ours.convert_ids_to_tokens(101) == theirs.convert_ids_to_tokens(101)


def test_decoding_special_ids_and_vocabulary_match(both):
    ours, theirs = both
    rng = random.Random(0)
    size = len(theirs.get_vocab())
    assert ours.get_vocab() == theirs.get_vocab() and len(ours) == size
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    for name in ("cls_token_id", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    punctuation = [theirs.convert_tokens_to_ids(t) for t in [".", ",", "?", "!", "'", "s", "t", "n", "##s", "[CLS]"]]
    for _ in range(300):
        ids = [rng.randrange(size) for _ in range(rng.randrange(1, 12))] + rng.sample(punctuation, 3)
        rng.shuffle(ids)
        for skip in (True, False):
            for clean in (True, False):
                kw = {"skip_special_tokens": skip, "clean_up_tokenization_spaces": clean}
                assert ours.decode(ids, **kw) == theirs.decode(ids, **kw), (ids, kw)


def test_it_pickles_as_transformers_tokenizers_do(both):
    import pickle

    ours, _ = both
    again = pickle.loads(pickle.dumps(ours))
    _same(again(["a pickled tokenizer"], ["still works"], truncation=True, max_length=6, padding=True),
          ours(["a pickled tokenizer"], ["still works"], truncation=True, max_length=6, padding=True))


def test_anything_but_a_bert_tokenizer_json_is_left_to_transformers(tmp_path):
    path = resolve_model(None)
    assert load_plain_tokenizer(str(tmp_path)) is None  # nothing there
    for change in ({"tokenizer_class": "RobertaTokenizer"}, {"cls_token": None}):
        folder = tmp_path / next(iter(change))
        shutil.copytree(path, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.update(change)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        assert load_plain_tokenizer(str(folder)) is None, change
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "tokenizer.json").write_text("{not json")
    assert load_plain_tokenizer(str(broken)) is None


def test_a_fresh_process_builds_the_default_classifier_without_importing_transformers():
    code = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "from trainables.text_prompt import SoftPromptClassifier\n"
            "clf = SoftPromptClassifier(None, ['sport', 'weather'], prompt_length=4, max_length=32, device='cpu')\n"
            "print(clf.project(clf.init_vectors('the topic is')), 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "the topic is the False"  # 4 vectors, projected back
