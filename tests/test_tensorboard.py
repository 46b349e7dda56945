"""TensorBoard and generations.jsonl, read back with TensorBoard's own reader (no Ray here).

The end-to-end check (a real ``tune.run`` whose event files hold the per-generation scalars and texts next to
Tune's per-trial scalars) is in ``tests/test_faults.py`` (LLM faults) and ``tests/test_resume.py`` (purge).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import rls_helpers as helpers  # noqa: E402

from ray_llm_search.records import GenerationLog  # noqa: E402
from ray_llm_search.rounds import JOURNAL_FILE, append_journal, read_journal  # noqa: E402
from ray_llm_search.searcher import LLMSearch  # noqa: E402
from ray_llm_search.testing import ScriptedLLM  # noqa: E402


def record(g: int, search_id: str = "s1", best: float = 0.5, **llm) -> dict:
    return {
        "search_id": search_id, "generation": g, "trials": 2, "errored": g % 2, "origins": {"seed": 2},
        "best_metric": best, "mean_metric": best - 0.1, "best_prompt": f"best prompt {g}", "best_so_far": best,
        "llm": ({"status": "done", "seconds": 1.5, "meta_prompt": f"META {g}\n# not a heading", "replies": [f"1. reply {g}"],
                 "candidates": [f"candidate {g}"], "filled": [], "rejected": {"chatter": 2}, "faults": {"rate_limit": 1},
                 **llm} if g else None),
    }


def test_every_generation_has_its_scalars_and_texts(tmp_path):
    log = GenerationLog(str(tmp_path))
    for g in range(3):
        log.write_generation(record(g, best=0.5 + g / 10), "val_acc")
    log.close()
    scalars, texts = helpers.read_events(str(tmp_path / "llm_search"))
    # (scalars are stored as float32)
    assert [v for _, v in scalars["llm_search/best_val_acc"]] == pytest.approx([0.5, 0.6, 0.7])
    assert [v for _, v in scalars["llm_search/mean_val_acc"]] == pytest.approx([0.4, 0.5, 0.6])
    assert [s for s, _ in scalars["llm_search/best_so_far"]] == [0, 1, 2]
    assert scalars["llm_search/faults/rate_limit"] == [(1, 1), (2, 1)]
    assert scalars["llm_search/rejected/chatter"] == [(1, 2), (2, 2)]
    assert scalars["llm_search/llm_seconds"] == [(1, 1.5), (2, 1.5)]
    assert scalars["llm_search/errored_trials"] == [(0, 0), (1, 1), (2, 0)]
    text = {tag.split("/text_summary")[0]: dict(values) for tag, values in texts.items()}
    assert set(text["llm_search/best_prompt"]) == {0, 1, 2}
    assert "best prompt 2" in text["llm_search/best_prompt"][2]
    for tag, expected in [("meta_prompt", "META 1"), ("reply", "1. reply 1"), ("candidates", "candidate 1"),
                          ("filled", "(none)")]:
        assert set(text[f"llm_search/{tag}"]) == {1, 2}, tag
        assert expected in text[f"llm_search/{tag}"][1], tag
    # LLM output is shown as a code block (indented), so Markdown in it renders as text.
    assert "    # not a heading" in text["llm_search/meta_prompt"][1]
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [0, 1, 2]


def test_a_generation_written_again_replaces_its_line_and_leaves_other_searches_alone(tmp_path):
    log = GenerationLog(str(tmp_path))
    log.write_generation(record(0, "other"), "val_acc")  # another search sharing the log_dir
    log.write_generation(record(0, "s1", best=0.1), "val_acc")
    log.write_generation(record(1, "s1", best=0.2), "val_acc")
    log.write_generation(record(1, "s1", best=0.3), "val_acc")  # written again after a restore
    log.write_generation(record(0, "other"), "val_acc")
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [(r["search_id"], r["generation"]) for r in lines] == [("s1", 0), ("s1", 1), ("other", 0)]
    assert lines[1]["best_metric"] == 0.3


def test_a_restored_log_purges_the_crashed_runs_later_events(tmp_path):
    crashed = GenerationLog(str(tmp_path))
    for g in range(3):
        crashed.write_generation(record(g, best=0.1 * (g + 1)), "val_acc")
    crashed.close()
    time.sleep(1.1)  # event file names carry the second they were made in
    restored = GenerationLog(str(tmp_path))  # its state had only generation 0
    for g in (1, 2):
        restored.write_generation(record(g, best=0.5 + g / 10), "val_acc")
    restored.close()
    scalars, texts = helpers.read_events(str(tmp_path / "llm_search"))
    assert [s for s, _ in scalars["llm_search/best_val_acc"]] == [0, 1, 2]
    assert [v for _, v in scalars["llm_search/best_val_acc"]] == pytest.approx([0.1, 0.6, 0.7])
    assert [s for s, _ in texts["llm_search/meta_prompt/text_summary"]] == [1, 2]


def CountingLLM() -> ScriptedLLM:
    return ScriptedLLM(words="fresh idea")


def _take(search: LLMSearch, start: int, size: int) -> list[str]:
    """Trial ids ``t<start>..``, each suggested a config (waiting while the LLM round runs)."""
    ids = []
    for k in range(start, start + size):
        deadline = time.monotonic() + 5
        while not isinstance(config := search.suggest(f"t{k}"), dict):
            assert time.monotonic() < deadline and config is None
            time.sleep(0.002)
        ids.append(f"t{k}")
    return ids


def _finish(search: LLMSearch, ids: list[str]) -> None:
    for tid in ids:
        search.on_trial_result(tid, {"val_acc": 0.5, "loss": 0.5, "prompt_text": f"{tid} text", "step": 1})
        search.on_trial_complete(tid)


def test_the_llm_journal_replays_answers_a_restored_search_did_not_know(tmp_path):
    """A driver saved its state, completed generation 0, got round 1's answer, and died before saving again."""
    log_dir = str(tmp_path / "log")
    args = dict(task_description="Task.", seed_prompts=["seed a", "seed b"], metric="val_acc", mode="max",
                population=2, generations=3, log_dir=log_dir)
    crashed_llm = CountingLLM()
    crashed = LLMSearch(crashed_llm, **args)
    t0, t1 = _take(crashed, 0, 2)
    _finish(crashed, [t0])
    state_path = str(tmp_path / "searcher-state.pkl")
    crashed.save(state_path)  # t1 still running
    _finish(crashed, [t1])  # generation 0 completes: its line is written, round 1 asked and journaled
    deadline = time.monotonic() + 5
    while not read_journal(log_dir, crashed._search_id, crashed._incarnation):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert crashed_llm.calls == 1
    # The driver dies here. A new process restores the saved state into a fresh search, and Tune resumes t1.
    llm = CountingLLM()
    restored = LLMSearch(llm, **args)
    restored.restore(state_path)
    _finish(restored, [t1])  # generation 0 completes again
    gen1 = _take(restored, 2, 2)
    assert llm.calls == 0, "round 1 was answered before the crash and must not be asked again"
    prompts = {t.trial_id: t.prompt_init for t in restored.trajectories}
    assert [prompts[t] for t in gen1][1] == "fresh idea 1 0"  # the journaled answer started a phase
    _finish(restored, gen1)
    _finish(restored, _take(restored, 4, 2))
    assert llm.calls == 1  # round 2 only
    lines = [json.loads(line) for line in (tmp_path / "log" / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in lines] == [0, 1, 2]
    assert [r["generation"] for r in restored.records] == [0, 1, 2]


def test_the_journal_belongs_to_one_search_and_one_searcher_object(tmp_path):
    entry = {"search_id": "a", "incarnation": "i1", "generation": 1, "attempt": 0}
    append_journal(str(tmp_path), {**entry, "replies": ["x" * 30_000]})
    append_journal(str(tmp_path), {**entry, "replies": ["a later duplicate"]})
    append_journal(str(tmp_path), {**entry, "incarnation": "i2", "generation": 2, "replies": ["from a copy"]})
    append_journal(str(tmp_path), {**entry, "search_id": "b", "error": "timeout"})
    with open(tmp_path / JOURNAL_FILE, "a") as f:
        f.write('{"search_id": "a", "generation": 2, "att')  # cut short by a crash
    entries = read_journal(str(tmp_path), "a", "i1")
    assert list(entries) == [(1, 0)] and len(entries[(1, 0)]["replies"][0]) == 20_000
    assert set(read_journal(str(tmp_path), "a")) == {(1, 0), (2, 0)}
    assert read_journal(str(tmp_path), "b")[(1, 0)]["error"] == "timeout"
    assert read_journal(str(tmp_path / "missing"), "a") == {}


def test_journal_writes_from_threads_do_not_interleave(tmp_path):
    def write(k: int) -> None:
        for i in range(50):
            append_journal(str(tmp_path), {"search_id": "a", "generation": k, "attempt": i, "replies": ["r" * 500]})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_journal(str(tmp_path), "a")) == 200
