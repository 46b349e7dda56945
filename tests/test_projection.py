"""Nearest-token projection: most similar (not least), cosine vs L2, special tokens, chunking, and a round
trip through the real MiniLM tokenizer and embedding."""

from __future__ import annotations

import pytest
import torch

from trainables import projection
from trainables.projection import (
    NearestTokens,
    ids_to_text,
    nearest_tokens,
    project_to_tokens,
    special_token_ids,
    text_to_ids,
    text_to_vectors,
)

# -- synthetic embeddings where the answer is known ------------------------------------------------------


def test_cosine_picks_most_similar_not_least():
    embedding = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    vectors = torch.tensor([[1.0, 0.1], [-2.0, 0.3], [0.1, 5.0]])
    # least similar would be 1, 0, and 1 (or 0) respectively
    assert project_to_tokens(vectors, embedding, "cosine").tolist() == [0, 1, 2]


def test_l2_picks_closest_not_farthest():
    embedding = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    vectors = torch.tensor([[2.9, 0.2], [0.1, -0.1], [-2.0, -2.5], [0.4, 2.0]])
    assert project_to_tokens(vectors, embedding, "l2").tolist() == [1, 0, 3, 2]


def test_cosine_and_l2_disagree_on_direction_vs_distance():
    # token 0 points the same way as the vector but is far; token 1 is near but at an angle
    embedding = torch.tensor([[10.0, 0.0], [0.9, 0.5]])
    vectors = torch.tensor([[1.0, 0.0]])
    assert project_to_tokens(vectors, embedding, "cosine").tolist() == [0]
    assert project_to_tokens(vectors, embedding, "l2").tolist() == [1]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_matches_brute_force_on_random_matrix(metric):
    gen = torch.Generator().manual_seed(0)
    embedding = torch.randn(200, 16, generator=gen)
    vectors = torch.randn(12, 16, generator=gen)
    if metric == "cosine":
        score = torch.nn.functional.normalize(vectors, dim=-1) @ torch.nn.functional.normalize(embedding, dim=-1).T
    else:
        score = -torch.cdist(vectors, embedding)
    assert torch.equal(project_to_tokens(vectors, embedding, metric), score.argmax(dim=1))
    # an exact copy of a vocabulary row projects onto that row
    rows = torch.tensor([5, 77, 199, 0])
    assert project_to_tokens(embedding[rows], embedding, metric).tolist() == rows.tolist()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_excluded_ids_are_never_chosen(metric):
    embedding = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert project_to_tokens(vectors, embedding, metric).tolist() == [0, 2]
    assert project_to_tokens(vectors, embedding, metric, exclude_ids=[0]).tolist() == [1, 2]
    assert project_to_tokens(vectors, embedding, metric, exclude_ids=[0, 1, 2]).tolist() == [3, 3]
    # an empty exclusion list changes nothing
    assert project_to_tokens(vectors, embedding, metric, exclude_ids=[]).tolist() == [0, 2]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_chunking_gives_the_same_answer(metric):
    gen = torch.Generator().manual_seed(1)
    embedding = torch.randn(50, 8, generator=gen)
    vectors = torch.randn(20, 8, generator=gen)
    vectors[:4] = embedding[[2, 3, 47, 49]] * 1.0001  # answers at the edges of chunks of 3
    exclude = [0, 7, 8, 48]
    whole = project_to_tokens(vectors, embedding, metric, exclude_ids=exclude, chunk=10_000)
    chunked = project_to_tokens(vectors, embedding, metric, exclude_ids=exclude, chunk=3)
    assert torch.equal(whole, chunked)
    assert whole[:4].tolist() == [2, 3, 47, 49]
    assert not set(whole.tolist()) & set(exclude)
    # the answer in one chunk beats the others: excluding a chunk's winner moves to the next best overall
    for chunk in (1, 3, 7, 50):
        assert torch.equal(project_to_tokens(vectors, embedding, metric, exclude_ids=exclude, chunk=chunk), whole)


def test_ties_resolve_to_the_first_id_whatever_the_chunking():
    embedding = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0], [1.0, 0.0]])
    vectors = torch.tensor([[1.0, 0.2]])
    for chunk in (1, 2, 3, 100):
        assert project_to_tokens(vectors, embedding, "cosine", chunk=chunk).tolist() == [1]
        assert project_to_tokens(vectors, embedding, "l2", chunk=chunk).tolist() == [1]


@pytest.mark.parametrize(
    "vectors, embedding",
    [
        (torch.zeros(4), torch.zeros(10, 4)),  # vectors not 2-D
        (torch.zeros(2, 4), torch.zeros(10, 4, 1)),  # embedding not 2-D
        (torch.zeros(2, 4), torch.zeros(10, 5)),  # dimensions differ
        (torch.zeros(1, 2, 4), torch.zeros(10, 4)),
    ],
)
def test_shape_errors_raise_value_error(vectors, embedding):
    with pytest.raises(ValueError, match="need vectors"):
        project_to_tokens(vectors, embedding)


def test_unknown_metric_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="'dot'"):
        project_to_tokens(torch.zeros(1, 2), torch.zeros(3, 2), metric="dot")


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_a_prepared_vocabulary_gives_the_same_ids_as_each_call(metric, monkeypatch):
    """NearestTokens prepares the chunks once (what a model keeps between evaluations): the same ids as
    project_to_tokens, exclusions and chunk borders included, call after call; nearest_tokens falls back to
    project_to_tokens for a vocabulary too large to copy."""
    g = torch.Generator().manual_seed(3)
    embedding = torch.randn(5000, 24, generator=g)
    excluded = [0, 7, 4095, 4096]
    prepared = NearestTokens(embedding, metric, excluded, chunk=1000)
    for scale in (0.5, 1.0, 4.0):
        vectors = torch.randn(9, 24, generator=g) * scale
        vectors[0] = embedding[7]  # excluded: its own row must not be chosen
        vectors[1] = embedding[1234]
        expected = project_to_tokens(vectors, embedding, metric, excluded, chunk=1000)
        assert torch.equal(prepared(vectors), expected)
        assert expected[0] != 7 and expected[1] == 1234
        assert torch.equal(nearest_tokens(embedding, metric, excluded)(vectors),
                           project_to_tokens(vectors, embedding, metric, excluded))
    monkeypatch.setattr(projection, "PREPARED_MAX_ELEMENTS", embedding.numel() - 1)
    fallback = nearest_tokens(embedding, metric, excluded)
    assert not isinstance(fallback, NearestTokens)
    assert torch.equal(fallback(vectors), project_to_tokens(vectors, embedding, metric, excluded))
    with pytest.raises(ValueError, match="'dot'"):
        nearest_tokens(embedding, "dot")
    with pytest.raises(ValueError, match="need vectors"):
        prepared(torch.zeros(2, 5))


# -- the real MiniLM tokenizer and embedding ---------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from trainables.text_prompt import load_backbone

    tokenizer, model, _ = load_backbone(None, torch.device("cpu"))
    return tokenizer, model.get_input_embeddings().weight


def _round_trip(text: str, length: int, minilm, metric: str = "cosine") -> str:
    tokenizer, embedding = minilm
    vectors = text_to_vectors(text, tokenizer, embedding, length)
    assert vectors.shape == (length, embedding.shape[1])
    ids = project_to_tokens(vectors, embedding, metric, special_token_ids(tokenizer))
    return ids_to_text(ids, tokenizer)


def test_the_text_model_projects_with_its_prepared_vocabulary_as_each_call_would(minilm):
    """The real MiniLM classifier keeps one NearestTokens; what it projects is project_to_tokens' answer."""
    from trainables.benchmark_data import BENCHMARKS
    from trainables.text_prompt import build_classifier, dataset_for

    config = {"data": BENCHMARKS["bbc"].data_spec(shots=2, val_shots=2, test_size=10, seed=0), "prompt_length": 6,
              "max_length": 32}
    model = build_classifier(config, dataset_for(config))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        vectors = model.init_vectors("the topic of this news article is") + 0.02 * torch.randn(6, 384, generator=g)
        ids = project_to_tokens(vectors, model.embedding, "cosine", model.excluded)
        assert model.project(vectors) == ids_to_text(ids, model.tokenizer)
    assert isinstance(model._nearest, NearestTokens)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_round_trip_gives_back_the_same_text(minilm, metric):
    text = "the topic of this news article is"
    assert len(text_to_ids(text, minilm[0], 7)) == 7
    assert _round_trip(text, 7, minilm, metric) == text


def test_shorter_text_repeats_cyclically(minilm):
    assert _round_trip("great movie", 5, minilm) == "great movie great movie great"
    assert _round_trip("the topic of this news article is", 10, minilm) == "the topic of this news article is the topic of"


def test_longer_text_truncates(minilm):
    assert _round_trip("the topic of this news article is", 3, minilm) == "the topic of"


def test_text_to_ids_rejects_bad_length_and_empty_text(minilm):
    with pytest.raises(ValueError, match="0"):
        text_to_ids("hello", minilm[0], 0)
    with pytest.raises(ValueError, match="no tokens"):
        text_to_ids("   ", minilm[0], 4)


def test_text_to_vectors_is_a_detached_copy(minilm):
    tokenizer, embedding = minilm
    vectors = text_to_vectors("hello world", tokenizer, embedding, 2)
    assert not vectors.requires_grad
    before = embedding[tokenizer.convert_tokens_to_ids("hello")].clone()
    vectors += 1.0
    assert torch.equal(embedding[tokenizer.convert_tokens_to_ids("hello")], before)


def test_special_token_ids_cover_bert_specials_and_unused_slots(minilm):
    tokenizer, embedding = minilm
    excluded = set(special_token_ids(tokenizer))
    for token in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "[unused0]", "[unused1]", "[unused99]"):
        assert tokenizer.convert_tokens_to_ids(token) in excluded, token
    for token in ("the", "topic", "news", "."):
        assert tokenizer.convert_tokens_to_ids(token) not in excluded, token
    # vectors sitting exactly on special tokens still project onto ordinary words
    specials = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                             tokenizer.convert_tokens_to_ids("[unused5]")])
    for metric in ("cosine", "l2"):
        ids = project_to_tokens(embedding[specials], embedding, metric, sorted(excluded))
        assert not set(ids.tolist()) & excluded


def test_special_token_ids_of_gpt_style_vocabulary():
    class FakeTokenizer:
        all_special_ids = [0, 2]

        def get_vocab(self):
            return {"<s>": 0, "hello": 1, "</s>": 2, "<|endoftext|>": 3, "<|im_start|>": 4, "world": 5, "<|x": 6}

    assert special_token_ids(FakeTokenizer()) == [0, 2, 3, 4]
