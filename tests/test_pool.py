"""PromptPool: normalization, ranking, de-duplication and pool top-ups."""

from __future__ import annotations

import math
import pickle

import pytest

from ray_llm_search.pool import Evaluation, PromptPool, Trajectory, normalize

NAN = math.nan


def _pool(mode: str, spec: dict[str, list[tuple[str, float, float]]]) -> PromptPool:
    """A pool with one trajectory per key; each evaluation is (text, loss, metric)."""
    pool = PromptPool(mode)
    for trial_id, evaluations in spec.items():
        pool.add(Trajectory(trial_id, 0, "seed", f"init {trial_id}"))
        for step, (text, loss, metric) in enumerate(evaluations):
            pool.record(trial_id, Evaluation(step, text, loss, metric))
    return pool


# -- normalize ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("Topic of the article", "topic of the article"),
        ("  topic   of\tthe\narticle ", "topic of the article"),
        ("Topic of the article.", "topic of the article"),
        ('"Topic of the article!"', "topic of the article"),
        ("**topic of the article**", "topic of the article"),
        ("...topic of the article?!", "topic of the article"),
        ("__topic__", "topic"),
    ],
)
def test_normalize_ignores_case_spacing_and_edge_punctuation(a, b):
    assert normalize(a) == normalize(b) == b


def test_normalize_keeps_inner_punctuation_and_words():
    assert normalize("what's the topic, exactly?") == "what's the topic, exactly"
    assert normalize("topic of article") != normalize("topic of the article")
    assert normalize("a-b") != normalize("a b")


@pytest.mark.parametrize("text", ["", "   ", "...", "!?", "\n\t", "___"])
def test_normalize_of_nothing_is_empty(text):
    assert normalize(text) == ""


# -- Trajectory.best and ranking --------------------------------------------------------------------------


def test_trajectory_best_max_and_min():
    t = Trajectory("t", 0, "seed", "p", evaluations=[
        Evaluation(0, "a", 1.0, 0.5), Evaluation(1, "b", 0.8, 0.9), Evaluation(2, "c", 0.9, 0.2)])
    assert t.best("max").text == "b"
    assert t.best("min").text == "c"


def test_trajectory_best_ties_lower_loss_then_earlier_step():
    t = Trajectory("t", 0, "seed", "p", evaluations=[
        Evaluation(0, "a", 0.9, 0.8), Evaluation(1, "b", 0.7, 0.8), Evaluation(2, "c", 0.7, 0.8)])
    assert t.best("max").text == "b"
    assert t.best("min").text == "b"


def test_trajectory_best_ignores_nan_and_none_when_empty():
    t = Trajectory("t", 0, "seed", "p", evaluations=[Evaluation(0, "a", NAN, NAN), Evaluation(1, "b", 0.5, 0.4)])
    assert t.best("max").text == "b"
    assert t.best("min").text == "b"
    assert Trajectory("e", 0, "seed", "p").best("max") is None
    assert Trajectory("n", 0, "seed", "p", evaluations=[Evaluation(0, "a", NAN, NAN)]).best("min") is None


SPEC = {
    "low": [("low one", 1.0, 0.30), ("low two", 0.9, 0.35)],
    "high": [("high one", 0.5, 0.60), ("high two", 0.4, 0.92), ("high three", 0.45, 0.90)],
    "mid": [("mid one", 0.7, 0.50)],
}


def test_ranked_mode_max_best_first():
    pool = _pool("max", SPEC)
    assert [t.trial_id for t in pool.ranked()] == ["high", "mid", "low"]
    assert pool.best().trial_id == "high"
    assert pool.score(pool.trajectories["high"]) == pytest.approx(0.92)


def test_ranked_mode_min_best_first():
    pool = _pool("min", SPEC)
    assert [t.trial_id for t in pool.ranked()] == ["low", "mid", "high"]
    assert pool.best().trial_id == "low"
    assert pool.score(pool.trajectories["high"]) == pytest.approx(0.60)


def test_ranked_ties_on_metric_break_on_loss():
    pool = _pool("max", {"a": [("a", 0.9, 0.7)], "b": [("b", 0.3, 0.7)], "c": [("c", 0.5, 0.7)]})
    assert [t.trial_id for t in pool.ranked()] == ["b", "c", "a"]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_ranked_ignores_nan_metrics(mode):
    pool = _pool(mode, {
        "nan_only": [("diverged", NAN, NAN), ("diverged more", NAN, NAN)],
        "mixed": [("mixed nan", NAN, NAN), ("mixed ok", 0.5, 0.5)],
        "ok": [("fine", 0.4, 0.6)],
    })
    ranked = [t.trial_id for t in pool.ranked()]
    assert "nan_only" not in ranked
    assert ranked == (["ok", "mixed"] if mode == "max" else ["mixed", "ok"])
    assert pool.score(pool.trajectories["nan_only"]) is None
    assert pool.score(pool.trajectories["mixed"]) == pytest.approx(0.5)


def test_ranked_skips_unevaluated_and_filters_generation():
    pool = _pool("max", SPEC)
    pool.add(Trajectory("running", 1, "llm", "not yet evaluated"))
    pool.add(Trajectory("g1", 1, "llm", "gen one"))
    pool.record("g1", Evaluation(0, "gen one", 0.1, 0.99))
    assert [t.trial_id for t in pool.ranked()] == ["g1", "high", "mid", "low"]
    assert [t.trial_id for t in pool.ranked(generation=1)] == ["g1"]
    assert [t.trial_id for t in pool.ranked(generation=0)] == ["high", "mid", "low"]
    assert pool.ranked(generation=5) == []
    assert len(pool) == 5


def test_empty_pool():
    pool = PromptPool("min")
    assert pool.ranked() == [] and pool.best() is None and len(pool) == 0 and pool.fill_texts() == []


@pytest.mark.parametrize("mode", ["maximize", "", None, "MAX"])
def test_pool_rejects_bad_mode(mode):
    with pytest.raises(ValueError, match="mode"):
        PromptPool(mode)


# -- record ---------------------------------------------------------------------------------------------------


def test_record_deduplicates_repeated_last_evaluation():
    pool = _pool("max", {"t": []})
    e = Evaluation(5, "text", 0.3, 0.8)
    pool.record("t", e)
    pool.record("t", Evaluation(5, "text", 0.3, 0.8))  # on_trial_complete repeats the last result
    assert pool.trajectories["t"].evaluations == [e]


def test_record_deduplicates_repeated_nan_evaluation():
    pool = _pool("max", {"t": []})
    pool.record("t", Evaluation(5, "diverged", float("nan"), float("nan")))
    pool.record("t", Evaluation(5, "diverged", float("nan"), float("nan")))  # distinct NaN objects
    assert len(pool.trajectories["t"].evaluations) == 1


def test_record_keeps_distinct_evaluations():
    pool = _pool("max", {"t": []})
    pool.record("t", Evaluation(1, "text", 0.3, 0.8))
    pool.record("t", Evaluation(2, "text", 0.3, 0.8))  # same numbers, later step
    pool.record("t", Evaluation(2, "text", 0.3, 0.81))  # same step, other metric
    pool.record("t", Evaluation(1, "text", 0.3, 0.8))  # equal to an earlier one, but not the last
    assert [(e.step, e.metric) for e in pool.trajectories["t"].evaluations] == [
        (1, 0.8), (2, 0.8), (2, 0.81), (1, 0.8)]


def test_record_unknown_trial_raises_key_error():
    with pytest.raises(KeyError):
        PromptPool("max").record("nope", Evaluation(0, "x", 0.0, 0.0))


# -- is_new -----------------------------------------------------------------------------------------------------


def test_is_new_tracks_starts_and_projections():
    pool = PromptPool("max")
    assert pool.is_new("Topic of the article")
    pool.add(Trajectory("t", 0, "seed", "Topic of the article"))
    assert not pool.is_new("topic of the   ARTICLE.")
    assert pool.is_new("projected words")
    pool.record("t", Evaluation(0, "Projected words", 0.5, 0.5))
    assert not pool.is_new("projected words!")
    assert pool.is_new("something else")
    pool.mark_seen("Shown to the LLM")
    assert not pool.is_new("shown to the llm")


@pytest.mark.parametrize("text", ["", "   ", "...", "?!"])
def test_is_new_false_for_texts_without_content(text):
    assert not PromptPool("max").is_new(text)


# -- fill_texts --------------------------------------------------------------------------------------------------


def test_fill_texts_best_projections_of_best_trajectories_first():
    pool = _pool("max", SPEC)
    assert pool.fill_texts() == ["high two", "high three", "high one", "mid one", "low two", "low one"]


def test_fill_texts_mode_min():
    pool = _pool("min", SPEC)
    assert pool.fill_texts() == ["low one", "low two", "mid one", "high one", "high three", "high two"]


def test_fill_texts_excludes_started_texts_and_exclude_set():
    pool = _pool("max", SPEC)
    # A later phase started from a projection: it is not offered again (case and punctuation ignored).
    pool.add(Trajectory("next", 1, "pool", "High Two."))
    texts = pool.fill_texts(exclude={"  MID one!"})
    assert texts == ["high three", "high one", "low two", "low one"]
    # Prompts that phases started from are never offered, even when projected unchanged.
    pool2 = _pool("max", {"s": [("init s", 0.5, 0.7), ("moved", 0.5, 0.6)]})
    assert pool2.fill_texts() == ["moved"]


def test_fill_texts_skips_nan_empty_and_duplicate_texts():
    pool = _pool("max", {
        "a": [("shared words", 0.5, 0.9), ("diverged", NAN, NAN), ("", 0.4, 0.85)],
        "b": [("Shared Words!", 0.5, 0.8), ("b only", 0.6, 0.7)],
    })
    texts = pool.fill_texts()
    assert texts == ["shared words", "b only"]


def test_pool_pickles_round_trip():
    pool = _pool("max", SPEC)
    pool.add(Trajectory("next", 1, "pool", "High Two."))
    restored = pickle.loads(pickle.dumps(pool))
    assert [t.trial_id for t in restored.ranked()] == [t.trial_id for t in pool.ranked()]
    assert restored.fill_texts() == pool.fill_texts()
    assert not restored.is_new("high one")
