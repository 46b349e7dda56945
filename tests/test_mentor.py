"""Mentor: meta-prompts built from trajectories, and LLM replies parsed into validated candidates."""

from __future__ import annotations

import json
import math

import pytest

from ray_llm_search.mentor import Mentor
from ray_llm_search.pool import Evaluation, Trajectory

TASK = "Classify BBC news articles into one of five topics."


def _trajectory(trial_id: str, init: str, metrics: list[float], losses: list[float] | None = None) -> Trajectory:
    losses = losses or [1.0 - 0.1 * i for i in range(len(metrics))]
    return Trajectory(
        trial_id=trial_id,
        generation=0,
        origin="seed",
        prompt_init=init,
        evaluations=[
            Evaluation(step=10 * i, text=f"{init} step{i}", loss=loss, metric=metric)
            for i, (metric, loss) in enumerate(zip(metrics, losses, strict=True))
        ],
    )


@pytest.fixture
def mentor() -> Mentor:
    return Mentor(TASK, "val_acc", "max", max_words=8, max_chars=60)


@pytest.fixture
def best_first() -> list[Trajectory]:
    """Three trajectories, best first (as ``PromptPool.ranked`` hands them)."""
    return [
        _trajectory("a", "alpha prompt", [0.70, 0.91, 0.88]),
        _trajectory("b", "bravo prompt", [0.40, 0.55]),
        _trajectory("c", "charlie prompt", [0.12, 0.21]),
    ]


# -- build ------------------------------------------------------------------------------------------------


def test_build_chat_shows_worst_to_best_with_task_metrics_n_and_limit(mentor, best_first):
    text = mentor.build(best_first, n=7, style="chat")
    assert TASK in text
    # Worst first: charlie, then bravo, then alpha.
    positions = [text.index(f'started from "{name} prompt"') for name in ("charlie", "bravo", "alpha")]
    assert positions == sorted(positions)
    # The best metric of each trajectory and the metric of every shown evaluation appear, to 3 decimals.
    for value in ("0.910", "0.880", "0.700", "0.550", "0.400", "0.210", "0.120"):
        assert value in text
    assert "val_acc" in text and "higher is better" in text
    assert "best val_acc 0.910" in text and "best val_acc 0.210" in text
    assert '"alpha prompt step1"' in text
    # The number asked and the word limit.
    assert "Write 7 new prompts" in text
    assert "numbered 1 to 7" in text
    assert "at most 8 words" in text


def test_build_chat_mode_min_orders_by_lowest_best(best_first):
    m = Mentor(TASK, "val_loss", "min", max_words=5)
    # In min mode "c" (0.12) is best and "a" (its best is 0.70) worst; given best first: c, b, a.
    text = m.build(list(reversed(best_first)), n=2, style="chat")
    assert "lower is better" in text
    positions = [text.index(f'started from "{name} prompt"') for name in ("alpha", "bravo", "charlie")]
    assert positions == sorted(positions)
    assert "best val_loss 0.700" in text and "best val_loss 0.120" in text
    assert "Write 2 new prompts" in text and "at most 5 words" in text


def test_build_chat_keeps_first_best_and_last_points():
    metrics = [0.1, 0.2, 0.3, 0.95, 0.4, 0.5, 0.6, 0.65, 0.7, 0.3]
    t = _trajectory("long", "long prompt", metrics)
    text = Mentor(TASK, "acc", points_per_trajectory=4).build([t], n=3)
    steps = [line for line in text.splitlines() if line.strip().startswith("step ")]
    assert len(steps) == 4
    assert steps[0].strip().startswith("step 0:")  # first
    assert any(s.strip().startswith("step 30:") for s in steps)  # best (0.95)
    assert steps[-1].strip().startswith("step 90:")  # last


def test_build_completion_is_scored_list_ending_on_open_prompt(mentor, best_first):
    text = mentor.build(best_first, n=4, style="completion")
    assert text.startswith(TASK)
    assert text.endswith("prompt:")
    assert text.rstrip().splitlines()[-1] == "prompt:"
    # Every entry is a "prompt: ..." line followed by its score; scores ascend (best last).
    lines = text.splitlines()
    scores = [float(line.split(":", 1)[1]) for line in lines if line.startswith("val_acc:")]
    assert len(scores) >= 3
    assert scores == sorted(scores)
    assert scores[-1] == pytest.approx(0.91)
    best_line = lines.index("val_acc: 0.91")
    assert lines[best_line - 1] == "prompt: alpha prompt step1"
    # Worst shown before best.
    assert text.index("charlie prompt") < text.index("bravo prompt") < text.index("alpha prompt")


def test_build_completion_mode_min_puts_lowest_last(best_first):
    m = Mentor(TASK, "val_loss", "min")
    text = m.build(list(reversed(best_first)), n=4, style="completion")
    scores = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("val_loss:")]
    assert scores == sorted(scores, reverse=True)
    assert scores[-1] == pytest.approx(0.12)
    assert text.endswith("prompt:")


def test_build_skips_nan_and_unevaluated_trajectories(mentor, best_first):
    diverged = _trajectory("nan", "diverged prompt", [math.nan, math.nan])
    fresh = Trajectory("new", 1, "llm", "fresh prompt")  # no evaluation yet
    for style in ("chat", "completion"):
        text = mentor.build([*best_first, diverged, fresh], n=3, style=style)
        assert "diverged prompt" not in text and "fresh prompt" not in text
        assert "alpha prompt" in text
    # A NaN point inside a usable trajectory never reaches the completion list's scores.
    mixed = _trajectory("mixed", "mixed prompt", [0.5, math.nan, 0.6])
    text = mentor.build([mixed], n=2, style="completion")
    assert "nan" not in text.lower()


def test_build_with_no_trajectories_still_asks(mentor):
    assert "Write 3 new prompts" in mentor.build([], n=3, style="chat")
    assert mentor.build([], n=3, style="completion").endswith("prompt:")


@pytest.mark.parametrize("style", ["", "json", "Chat", None])
def test_build_rejects_unknown_style(mentor, best_first, style):
    with pytest.raises(ValueError, match="style"):
        mentor.build(best_first, n=3, style=style)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_build_rejects_bad_n(mentor, best_first, n):
    with pytest.raises(ValueError, match="n must be"):
        mentor.build(best_first, n=n)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "maximize"}, "mode"),
        ({"mode": ""}, "mode"),
        ({"max_words": 0}, "max_words"),
        ({"max_chars": 0}, "max_chars"),
        ({"points_per_trajectory": 0}, "points_per_trajectory"),
        ({"prompt_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": 2.5}, "prompt_tokens"),
        ({"prompt_tokens": True}, "prompt_tokens"),
    ],
)
def test_constructor_rejects_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mentor(TASK, "val_acc", **kwargs)


# -- parse: list formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        ("1. topic of this article", "topic of this article"),
        ("2) what is the topic", "what is the topic"),
        ("(3) name the news section", "name the news section"),
        ("10: pick a category", "pick a category"),
        ("- which section is this", "which section is this"),
        ("* which section is this", "which section is this"),
        ("• which section is this", "which section is this"),
        ("  -   spaced bullet here  ", "spaced bullet here"),
        ('"quoted prompt text"', "quoted prompt text"),
        ("“curly quoted prompt”", "curly quoted prompt"),
        ("'single quoted prompt'", "single quoted prompt"),
        ('1. "numbered and quoted"', "numbered and quoted"),
        ("Prompt 2: the article topic is", "the article topic is"),
        ("Prompt: the article topic is", "the article topic is"),
        ("New prompt 3 - the article topic is", "the article topic is"),
        ("- Prompt 4: bullet then label", "bullet then label"),
        ("**bold prompt words**", "bold prompt words"),
        ("1. **bold** after number", "bold after number"),
        ("3. __underlined__ words", "underlined words"),
        ("a) lettered item text", "lettered item text"),
        ("### 2. heading numbered", "heading numbered"),
        ("1. topic of article (score: 0.91)", "topic of article"),
        # Qwen2.5-Coder-1.5B copies the meta-prompt's scores after its prompts (mentor_quality, SST-2 seed 1)
        ('3. "this movie is" loss 0.621, val_acc 0.598', "this movie is"),
        ('"the reviewer feels the film is" (loss 0.605; val_acc 0.579).', "the reviewer feels the film is"),
        ('  "prompt": "json valued prompt",', "json valued prompt"),
        ('    "json array item",', "json array item"),
        ("1.5 million readers chose", "1.5 million readers chose"),
    ],
)
def test_parse_strips_list_markup(mentor, line, expected):
    parsed = mentor.parse([line], n=5)
    assert parsed.candidates == [expected]
    assert not parsed.rejected


def test_parse_keeps_llm_order_across_lines_and_replies(mentor):
    replies = ["3. zulu words\n1. alpha words\n\n2. mike words", "- bravo words"]
    parsed = mentor.parse(replies, n=10)
    assert parsed.candidates == ["zulu words", "alpha words", "mike words", "bravo words"]
    assert not parsed.rejected  # blank separator lines are skipped, not counted


def test_parse_typical_chat_reply(mentor):
    reply = (
        "Sure! Here are 3 prompts:\n\n"
        "1. **Identify the topic of this news article**\n"
        "2. Which section of the BBC would publish this?\n"
        '3. "Topic label for this story"\n\n'
        "I hope these help!"
    )
    parsed = mentor.parse([reply], n=3)
    assert parsed.candidates == [
        "Identify the topic of this news article",
        "Which section of the BBC would publish this?",
        "Topic label for this story",
    ]
    assert parsed.rejected == {"chatter": 2}


def test_parse_json_and_code_fence_reply(mentor):
    reply = '```json\n{\n  "prompts": [\n    "first json prompt",\n    "second json prompt"\n  ]\n}\n```'
    parsed = mentor.parse([reply], n=5)
    assert parsed.candidates == ["first json prompt", "second json prompt"]
    assert sum(parsed.rejected.values()) == 6  # fences, brackets, the key line
    assert not any(c in "".join(parsed.candidates) for c in '{}[]"`')


# -- parse: rejections --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "Sure! Here are 3 prompts:",
        "Here is a list of improved prompts",
        "Here are the prompts",
        "Certainly, these should score better",
        "Of course!",
        "I hope these help",
        "As an AI language model I cannot",
        "Note: each prompt is short",
        "New prompts:",
        "Prompts:",
        "The following prompts might work",
        "Below are some options",
        "Trajectory 4 shows that short prompts win",
        "Improved versions:",
        "```",
        "```python",
        "{",
        '{"prompts": ["a b", "c d"]}',
        '["first", "second"]',
        "Try mentioning the category names.",
        "You should use shorter prompts.",
        "Consider adding the headline",
        "Use shorter prompts",
        "Make sure each prompt names the topic",
    ],
)
def test_parse_rejects_chatter(mentor, line):
    parsed = mentor.parse([line], n=5)
    assert parsed.candidates == []
    assert parsed.rejected == {"chatter": 1}


@pytest.mark.parametrize("line", ["1.", "-", "**", '""', "42", "---", "...", "1. 2. 3.", "]}", "(7)"])
def test_parse_counts_lines_with_nothing_left_as_empty(mentor, line):
    parsed = mentor.parse([line], n=5)
    assert parsed.candidates == []
    assert parsed.rejected == {"empty": 1}


def test_parse_rejects_too_many_words(mentor):
    nine = "one two three four five six seven eight nine"
    eight = "one two three four five six seven eight"
    parsed = mentor.parse([f"1. {nine}\n2. {eight}"], n=5)
    assert parsed.candidates == [eight]
    assert parsed.rejected == {"too_long": 1}


def test_parse_rejects_too_many_chars(mentor):
    long_word = "x" * 61
    ok = "y" * 60
    parsed = mentor.parse([f"{long_word} topic", f"{ok}"], n=5)
    assert parsed.candidates == [ok]
    assert parsed.rejected == {"too_long": 1}


def test_parse_word_limit_counts_words_after_markup(mentor):
    # "1." and the quotes are not words; eight words remain.
    parsed = mentor.parse(['1. "one two three four five six seven eight"'], n=5)
    assert parsed.candidates == ["one two three four five six seven eight"]


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b", "\u200b", "\u200e", "\ufeff", "\t", "\x7f", "\u00ad"])
def test_parse_rejects_non_printable(mentor, char):
    assert not char.isprintable()  # the rule the parser applies inside a line
    parsed = mentor.parse([f"topic {char}of the article", "plain prompt here"], n=5)
    assert parsed.candidates == ["plain prompt here"]
    assert parsed.rejected == {"non_printable": 1}


def test_parse_accepts_printable_unicode(mentor):
    line = "Quel est le thème — économie ?"
    assert line.isprintable()
    assert mentor.parse([line], n=5).candidates == [line]


def test_parse_rejects_duplicates_case_and_punctuation_insensitive(mentor):
    reply = "1. Topic of the article\n2. topic of the ARTICLE.\n3. **Topic of the article!**\n4. other prompt"
    parsed = mentor.parse([reply, '"TOPIC OF THE ARTICLE"'], n=10)
    assert parsed.candidates == ["Topic of the article", "other prompt"]
    assert parsed.rejected == {"duplicate": 3}


def test_parse_rejects_seen_texts(mentor):
    tried = {"topic of the article", "what is this about"}
    calls = []

    def seen(text: str) -> bool:
        calls.append(text)
        return text.lower().strip(".!") in tried

    parsed = mentor.parse(["1. Topic of the article.\n2. brand new prompt\n3. What is this about"], n=5, seen=seen)
    assert parsed.candidates == ["brand new prompt"]
    assert parsed.rejected == {"seen_before": 2}
    assert calls == ["Topic of the article.", "brand new prompt", "What is this about"]


def test_parse_counts_surplus_beyond_n(mentor):
    reply = "\n".join(f"{i}. prompt number {word}" for i, word in enumerate(["one", "two", "three", "four", "five"], 1))
    parsed = mentor.parse([reply], n=3)
    assert parsed.candidates == ["prompt number one", "prompt number two", "prompt number three"]
    assert parsed.rejected == {"surplus": 2}


def test_parse_surplus_counts_only_valid_lines(mentor):
    parsed = mentor.parse(["1. first prompt\n2. first prompt\n3. second prompt\n4. third prompt\nSure!"], n=2)
    assert parsed.candidates == ["first prompt", "second prompt"]
    assert parsed.rejected == {"duplicate": 1, "surplus": 1, "chatter": 1}


def test_parse_candidates_across_replies_are_capped_at_n(mentor):
    replies = ["alpha text one", "bravo text two", "charlie text three"]  # completion style: one per reply
    parsed = mentor.parse(replies, n=2)
    assert parsed.candidates == ["alpha text one", "bravo text two"]
    assert parsed.rejected == {"surplus": 1}


# -- parse: garbage never raises ------------------------------------------------------------------------------


def test_parse_binary_junk(mentor):
    junk = bytes(range(256)).decode("latin-1") + bytes(range(255, -1, -1)).decode("latin-1")
    parsed = mentor.parse([junk], n=5)
    for candidate in parsed.candidates:
        assert candidate.isprintable() and len(candidate) <= 60
    assert sum(parsed.rejected.values()) >= 1


def test_parse_undecodable_bytes_replacement(mentor):
    junk = bytes([0xFF, 0xFE, 0x00, 0x41, 0x80, 0x9F, 0x0A, 0x42]).decode("utf-8", errors="replace")
    parsed = mentor.parse([junk * 50], n=5)
    for candidate in parsed.candidates:
        assert candidate.isprintable()


def test_parse_huge_line(mentor):
    huge = "word " * 10_000  # 50 KB on one line
    parsed = mentor.parse([huge, "1. fine prompt"], n=5)
    assert parsed.candidates == ["fine prompt"]
    assert parsed.rejected == {"too_long": 1}


def test_parse_huge_line_without_spaces(mentor):
    parsed = mentor.parse(["a" * 50_000], n=5)
    assert parsed.candidates == []
    assert parsed.rejected == {"too_long": 1}


def test_parse_json_blob(mentor):
    blob = json.dumps({"id": "chatcmpl-1", "choices": [{"message": {"content": "1. x"}}], "usage": {"t": 3}})
    parsed = mentor.parse([blob], n=5)
    assert parsed.candidates == []
    assert sum(parsed.rejected.values()) == 1


def test_parse_pretty_json_blob(mentor):
    blob = json.dumps({"error": {"message": "rate limited", "code": 429}}, indent=2)
    parsed = mentor.parse([blob], n=5)
    for candidate in parsed.candidates:
        assert not any(c in candidate for c in "{}[]")


def test_parse_none_and_non_strings_in_list(mentor):
    parsed = mentor.parse([None, 3, b"bytes prompt", "1. real prompt", {"a": 1}], n=5)
    assert parsed.candidates == ["real prompt"]
    assert parsed.rejected == {"empty": 4}


def test_parse_empty_list_and_blank_replies(mentor):
    assert mentor.parse([], n=5).candidates == []
    assert mentor.parse([], n=5).rejected == {"empty": 1}
    parsed = mentor.parse(["", "   \n\n\t\n"], n=5)
    assert parsed.candidates == []
    assert parsed.rejected == {"empty": 1}


def test_parse_unicode_line_separators(mentor):
    # str.splitlines also splits on these; every piece is judged on its own.
    reply = "1. first piece\u20282. second piece\x1c3. third piece\x854. fourth piece"
    parsed = mentor.parse([reply], n=5)
    assert parsed.candidates == ["first piece", "second piece", "third piece", "fourth piece"]


def test_parse_never_returns_more_than_n_or_invalid(mentor):
    replies = [
        "\n".join(["Here are prompts:", *(f"{i}. candidate prompt {i}" for i in range(1, 40)), "```"]),
        "\x00\x01\x02 junk",
        "z" * 5000,
    ]
    parsed = mentor.parse(replies, n=4)
    assert len(parsed.candidates) == 4
    for candidate in parsed.candidates:
        assert candidate.isprintable()
        assert len(candidate) <= 60 and len(candidate.split()) <= 8


def test_imperative_prompts_for_the_classifier_are_kept(mentor):
    parsed = mentor.parse(["1. classify the article by topic", "2. decide the category of this news"], n=5)
    assert parsed.candidates == ["classify the article by topic", "decide the category of this news"]


def test_prompt_tokens_tells_the_mentor_how_much_of_a_prompt_is_kept():
    """Told the trainable's prompt length, the chat meta-prompt says a longer prompt is cut and a shorter one
    repeated, and asks for about 3 words in 4 tokens (never more than max_words); untold, it says neither."""
    shown = [Evaluation(0, "the topic is", 0.5, 0.7), Evaluation(0, "news:", 0.6, 0.6)]
    told = Mentor(TASK, "val_acc", "max", max_words=12, prompt_tokens=8).build_scored(shown, 3)
    assert "keeps exactly 8 tokens of a prompt" in told and "at most 6 words" in told
    plain = Mentor(TASK, "val_acc", "max", max_words=12).build_scored(shown, 3)
    assert "tokens" not in plain and "at most 12 words" in plain
    assert "at most 4 words" in Mentor(TASK, "val_acc", "max", max_words=4, prompt_tokens=40).build_scored(shown, 3)
    # the trajectories' meta-prompt says it too, and the parser still takes up to max_words
    m = Mentor(TASK, "val_acc", "max", max_words=12, prompt_tokens=8)
    assert "keeps exactly 8 tokens" in m.build([Trajectory("t", 0, "seed", "the topic is",
                                                           evaluations=[Evaluation(0, "the topic is", 0.5, 0.7)])], 2)
    assert m.parse(["1. one two three four five six seven eight"], 2).candidates == ["one two three four five six seven eight"]


def test_parse_drops_a_length_noted_after_a_prompt():
    """Told the prompt's length, the 1.5B mentor noted each prompt's: 'how to answer this question?" (5 tokens)'."""
    m = Mentor(TASK, "val_acc", "max", max_words=12)
    got = m.parse(['1. "how to answer this question?" (5 tokens)', "2. what's the type of answer needed? (8 words)",
                   "3. the article covers [6 tokens].", "4. section (2) of the news"], 4).candidates
    assert got == ["how to answer this question?", "what's the type of answer needed?", "the article covers",
                   "section (2) of the news"]


def test_build_descent_shows_each_start_as_written_and_where_its_chain_ended():
    """The mentor shown what descent did (``mentor_scores="descent"``): each start's text score, the score its
    chain reached after its steps and the chain's nearest words, ordered worst to best *after descent* (not as
    written); the completion style lists the start texts with the score they descended to."""
    from ray_llm_search.mentor import Descent

    # best first by the score after descent: "great start" scores worst as text and best after descent
    descents = [Descent(Evaluation(0, "great start", 0.9, 0.40), Evaluation(8, "tuned ## words", 0.3, 0.85), 8),
                Descent(Evaluation(0, "plain start", 0.7, 0.60), Evaluation(8, "other tuned", 0.5, 0.70), 8),
                Descent(Evaluation(0, "nan end", 0.7, 0.60), Evaluation(8, "x", math.nan, math.nan), 8)]
    meta = Mentor(TASK, "val_acc", "max").build_descent(descents, 3)
    assert "nan end" not in meta
    lines = [line for line in meta.splitlines() if "as written" in line and line.startswith('"')]
    assert [line.split('"')[1] for line in lines] == ["plain start", "great start"]
    assert lines[1] == ('"great start" as written: loss 0.900, val_acc 0.400; after 8 steps of descent: '
                        'loss 0.300, val_acc 0.850, nearest words "tuned ## words"')
    assert "Write 3 new prompts" in meta and "worst to best after descent" in meta
    completion = Mentor(TASK, "val_acc", "max").build_descent(descents, 3, style="completion")
    assert completion.index("plain start") < completion.index("great start") and "0.85" in completion
    assert completion.rstrip().endswith("prompt:")
    with pytest.raises(ValueError, match="style must be one of"):
        Mentor(TASK, "val_acc", "max").build_descent(descents, 3, style="json")


def test_parse_drops_the_descent_format_copied_after_a_prompt():
    """Shown what descent did (``build_descent``), the 1.5B mentor copied the line format after its prompts (TREC,
    seed 0): every prompt was then too long and the round gave nothing. The prompt inside the quotes is kept."""
    m = Mentor(TASK, "val_acc", "max")
    reply = ['1. "why does this question need" as written: loss 1.510, val_acc 0.426; after 8 steps of descent: '
             'loss 1.339, val_acc 0.530, nearest words "why does this question need why"\n'
             '2. "what is the question for" as written: loss 1.498, val_acc 0.417; after 8 steps of descent: '
             'loss 1.319, val_acc 0.543, nearest words "what is the question for what"\n'
             '3. the reviewer wrote this as written: a fine prompt']
    parsed = m.parse(reply, 5)
    assert parsed.candidates == ["why does this question need", "what is the question for",
                                 "the reviewer wrote this as written: a fine prompt"]
