"""The mentor's own figure: near copies, the round's shares, the table, and one real round (MiniLM, SST-2)."""

from __future__ import annotations

import json

import pytest

from ray_llm_search.compare.mentor_quality import near_copy, round_figures, table, word_edits


def test_near_copies_are_two_word_edits_from_a_shown_text_case_and_punctuation_aside():
    shown = ["the sentiment of this review is", "sentiment:"]
    assert word_edits("a b c".split(), "a c".split()) == 1 and word_edits([], ["x", "y"]) == 2
    assert near_copy("The sentiment of this review is positive!", shown)  # one word added
    assert near_copy("sentiment of the review is", shown)  # one dropped, one changed
    assert near_copy("Sentiment", shown)
    assert not near_copy("what is the overall opinion of this critic", shown)
    assert not near_copy("the reviewer's stance towards the film", shown)


def test_round_figures_count_candidates_that_beat_the_best_shown_and_new_ones():
    shown = [{"text": "this movie review is", "acc": 0.5, "loss": 0.7},
             {"text": "the reviewer thinks the film is", "acc": 0.6, "loss": 0.68}]
    proposed = [{"text": "the reviewer thinks the movie is", "acc": 0.6, "loss": 0.6},  # tie, lower loss: beats
                {"text": "what does the critic feel about it", "acc": 0.65, "loss": 0.9},  # beats, new
                {"text": "an entirely different question here", "acc": 0.55, "loss": 0.5},  # new, loses
                {"text": "this movie review is", "acc": 0.6, "loss": 0.7}]  # equal acc, higher loss: loses
    f = round_figures(shown, proposed)
    assert (f["n"], f["beats"], f["novel"], f["best_shown_acc"], f["best_acc"]) == (4, 2, 2, 0.6, 0.65)
    assert round_figures(shown, [])["n"] == 0


def test_the_table_sums_rounds_per_mentor_and_task():
    def rnd(llm, task, beats, novel, n=5):
        return {"llm": llm, "dataset": task, "asked": 5, "figures": {"n": n, "beats": beats, "novel": novel},
                "control_figures": {"n": 5, "beats": 1, "novel": 0}}

    text = table([rnd("a", "sst2", 2, 5), rnd("a", "trec", 0, 3, n=4), rnd("b", "sst2", 0, 0)])
    assert "| a | sst2 | 1 | 5 / 5 | 40% (2/5) | 100% (5/5) | 20% (1/5) | 0% (0/5) |" in text
    assert "| a | **all** | 2 | 9 / 10 | 22% (2/9) | 89% (8/9) | 20% (2/10) | 0% (0/10) |" in text
    assert "| b | **all** | 1 | 5 / 5 | 0% (0/5) |" in text


@pytest.mark.slow
def test_one_real_round_scores_the_mentors_texts_and_the_word_edits_as_the_search_would(tmp_path, monkeypatch,
                                                                                        one_torch_thread):
    """The real MiniLM on SST-2's seed-0 split: a scripted mentor answers one round; every text is scored as text
    on validation, exactly as ``evaluate_prompt`` scores it, and the results file merges across invocations."""
    from ray_llm_search.compare import mentor_quality
    from ray_llm_search.testing import ScriptedLLM

    llm = ScriptedLLM([["1. the overall opinion of the critic is\n2. sentiment:\n3. is this review positive"]])
    monkeypatch.setattr(mentor_quality, "llm_from_flags", lambda args, **kw: llm)
    out = tmp_path / "mq.json"
    assert mentor_quality.main(["--datasets", "sst2", "--seeds", "0", "--llm", "openai", "--api-key-env", "",
                                "--label", "scripted", "--out", str(out)]) == 0
    rounds = json.loads(out.read_text())["rounds"]
    (r,) = rounds
    assert [e["text"] for e in r["shown"]] == ["the sentiment of this review is", "this movie review is",
                                               "the reviewer thinks the film is", "sentiment:"]
    # the seed copy "sentiment:" is not a candidate; the other two are scored, and so are 5 word edits
    assert [e["text"] for e in r["proposed"]] == ["the overall opinion of the critic is", "is this review positive"]
    assert len(r["control"]) == 5 and r["control_figures"]["novel"] == 0
    from ray_llm_search.compare import base_config, parse_args
    from trainables.text_prompt import evaluate_prompt

    config = base_config(parse_args(["--datasets", "sst2"]), "sst2", 0)
    first = evaluate_prompt(config, text=r["proposed"][0]["text"], split="val")
    assert first["acc"] == pytest.approx(r["proposed"][0]["acc"]) and first["loss"] == pytest.approx(
        r["proposed"][0]["loss"])
    # a second invocation runs nothing new and prints the table of what is recorded
    assert mentor_quality.main(["--datasets", "sst2", "--seeds", "0", "--llm", "openai", "--api-key-env", "",
                                "--label", "scripted", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["rounds"]) == 1 and llm.calls == 1
