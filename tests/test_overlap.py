"""``LLMSearch(overlap=True)``: the chain descends while the mentor thinks (issue #26, item 5).

In-process (no Ray: the searcher's mailbox is ``mailbox.LocalMailbox``): a round's candidates that arrive while a
phase descends are screened at its next evaluation point against its vectors there; a winner takes the chain's
place; every candidate costs one evaluation, as in the serial design; a search restored mid-round loses and
doubles no candidate. The real Ray Tune run is ``tests/test_overlap_tune.py``.
"""

from __future__ import annotations

import pickle
import threading
import time

import pytest
from test_screening import TRAIN, VAL, Toy, ToyEach

from ray_llm_search import LLM, LLMSearch, mailbox
from trainables.phase import run_phase

SCHEDULE = [{"steps": 2, "eval_every": 2}, {"steps": 4, "eval_every": 1, "screen": 2},
            {"steps": 4, "eval_every": 1, "screen": 2}, {"steps": 4, "eval_every": 1}]


class GatedLLM(LLM):
    """Answers each round with its next reply, but only once the test opens the round's gate."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.gates = [threading.Event() for _ in replies]
        self.asked = 0

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        i = self.asked
        self.asked += 1
        if i >= len(self.replies):
            return []
        assert self.gates[i].wait(30), "the test never opened this round's gate"
        return [self.replies[i]]


def one_chain(tmp_path, llm: LLM, overlap: bool = True, model_each: bool = False, **kw) -> LLMSearch:
    return LLMSearch(llm, "toy task", ["good good zz"], metric="val_acc", mode="max", population=1, elites=1,
                     schedule=SCHEDULE, reuse_start_score=True, log_dir=str(tmp_path), overlap=overlap,
                     llm_timeout_s=30, **kw)


def drive(search: LLMSearch, on_report=None, model=Toy, max_wait_s: float = 30.0) -> list[dict]:
    """Trials one after another in this process, as Tune feeds a searcher; ``on_report(row)`` after each result."""
    rows: list[dict] = []
    count, deadline = 0, time.monotonic() + max_wait_s
    while True:
        trial_id = f"t{count}"
        config = search.suggest(trial_id)
        if config == "FINISHED":
            return rows
        if config is None:
            assert time.monotonic() < deadline, "the searcher gave no trial"
            time.sleep(0.005)
            continue
        count += 1
        last: dict = {}

        def report(metrics: dict, ckpt, trial_id=trial_id, config=config, last=last) -> None:
            last.update(metrics)
            row = {**metrics, "trial_id": trial_id, "config": config}
            rows.append(row)
            search.on_trial_result(trial_id, dict(metrics))
            if on_report is not None:
                on_report(row)

        run_phase({"lr": 0.02, "steps": 2, "eval_every": 1, **config, "trial_id": trial_id}, model(), TRAIN, VAL,
                  report=report)
        search.on_trial_complete(trial_id, dict(last))


def posted(search: LLMSearch, count: int, timeout_s: float = 10.0) -> None:
    """Wait until the searcher's LLM thread has posted ``count`` candidates in all."""
    deadline = time.monotonic() + timeout_s
    while sum(len(v) for v in search._posted.values()) < count:
        assert time.monotonic() < deadline, f"posted {search._posted}, wanted {count}"
        time.sleep(0.005)


def budget(rows: list[dict]) -> tuple[int, int]:
    trials = {r["trial_id"] for r in rows}
    return (sum(max(r["step"] for r in rows if r["trial_id"] == t) for t in trials),
            sum(max(r["evaluations"] for r in rows if r["trial_id"] == t) for t in trials))


def test_a_candidate_arriving_mid_phase_is_screened_against_the_chain_where_it_stands(tmp_path):
    llm = GatedLLM(["1. junk words\n2. xq zz", "1. qq qq\n2. zz xq"])
    search = one_chain(tmp_path, llm)

    def release(row):  # round 1 ends after generation 1's phase has taken its first step
        g, step = row["config"]["generation"], row["step"]
        if g == 1 and step == 1 and not row.get("screen") and not llm.gates[0].is_set():
            llm.gates[0].set()
            posted(search, 2)
        if g == 2 and step == 3 and not row.get("screen") and not llm.gates[1].is_set():
            llm.gates[1].set()
            posted(search, 4)

    rows = drive(search, release)
    gen1 = [r for r in rows if r["config"]["generation"] == 1]
    # the phase did not wait: it started at once (no candidates in its config) and stepped before the round ended
    assert "prompt_candidates" not in gen1[0]["config"] and gen1[0]["config"]["mailbox"]["kind"] == "local"
    screens = [r for r in gen1 if r.get("screen")]
    # posted after the phase reported step 1: screened there, against the vectors just evaluated
    assert [(r["prompt_text"], r["step"]) for r in screens] == [("junk words", 1), ("xq zz", 1)]
    chain_at_1 = next(r for r in gen1 if r["step"] == 1 and not r.get("screen"))
    assert gen1.index(chain_at_1) < gen1.index(screens[0])
    gen2 = [r for r in rows if r["config"]["generation"] == 2]
    assert [(r["prompt_text"], r["step"]) for r in gen2 if r.get("screen")] == [("qq qq", 3), ("zz xq", 3)]
    assert all(r["mailbox_cursor"] == 4 for r in gen2 if r["step"] == 4)
    assert not any(r.get("wait_s") for r in rows)  # nothing was owed when the last phase ended
    assert search.records[1]["llm"]["screened"] == ["junk words", "xq zz"]  # rewritten once the round ended
    assert not any(r.get("adopted") for r in rows)


def test_a_winner_takes_the_chain_and_the_chain_continues_from_it(tmp_path):
    llm = GatedLLM(["1. good good\n2. junk", "1. qq qq\n2. zz xq"])
    search = one_chain(tmp_path, llm)

    def release(row):
        if row["config"]["generation"] == 1 and row["step"] == 1 and not llm.gates[0].is_set():
            llm.gates[0].set()
            posted(search, 2)
        if row["config"]["generation"] == 2 and not llm.gates[1].is_set():
            llm.gates[1].set()

    rows = drive(search, release)
    won = [r for r in rows if r.get("adopted")]
    assert [(r["start_text"], r["step"], r["val_acc"], r["config"]["generation"]) for r in won] == [
        ("good good", 1, 1.0, 1)]
    gen1 = [r for r in rows if r["config"]["generation"] == 1 and not r.get("screen")]
    after = [r for r in gen1 if r["step"] > 1]
    assert after and all(r["val_acc"] == 1.0 for r in after)  # it descends from the candidate's vectors
    assert search.records[1]["adopted"] == ["good good"]
    assert search.best()["value"] == 1.0


@pytest.mark.parametrize("preset", ["authors-paired", "chains-paired"])
def test_the_overlapped_design_spends_the_serial_designs_budget(tmp_path, preset):
    replies = ["junk", "xq zz", "qq qq", "zz xq", "qq xq", "xx yy", "yy zz", "zz yy"]

    class Slow(LLM):  # every round ends while a phase descends (or after the last step: the last phase waits)
        def propose(self, meta_prompt: str, n: int) -> list[str]:
            time.sleep(0.05)
            return ["\n".join(replies)]

    spent = {}
    for overlap in (False, True):
        search = LLMSearch.from_preset(Slow(), "toy task", ["bad start", "junk words"], preset, steps=2,
                                       eval_every=1, population=2, generations=3, metric="val_acc", mode="max",
                                       log_dir=str(tmp_path / str(overlap)), overlap=overlap)
        rows = drive(search, model=ToyEach)
        # each screened candidate once: a phase sends its last result again after a drain (the searcher and the
        # comparison's recorder key rows by trial and step, so the repeat is no second evaluation)
        screened = {(r["trial_id"], r["step"], r.get("prompt_text"), bool(r.get("screen")), bool(r.get("adopted")))
                    for r in rows if r.get("screen") or r.get("adopted") or str(r.get("start", "")).startswith("c")}
        spent[overlap] = (*budget(rows), len(screened), len({r["trial_id"] for r in rows}))
    assert spent[True] == spent[False]
    assert spent[True][:2] == (12, 18)


def test_a_round_that_times_out_or_fails_still_gives_the_chain_its_candidates(tmp_path):
    class Broken(LLM):
        def propose(self, meta_prompt: str, n: int) -> list[str]:
            raise RuntimeError("the mentor is down")

    rows = drive(one_chain(tmp_path, Broken()))
    screened = [r for r in rows if r.get("screen") or r.get("adopted")]
    assert len(screened) == 4  # perturbed texts, as many as the rounds would have screened
    assert budget(rows) == budget(drive(one_chain(tmp_path / "serial", Broken(), overlap=False)))


def test_a_search_restored_mid_round_neither_loses_nor_repeats_a_candidate(tmp_path):
    first = GatedLLM(["1. never answered"])
    search = one_chain(tmp_path, first)
    # generation 0 runs; round 1 is asked and hangs; the driver "crashes" with the state saved mid-round
    config = search.suggest("t0")
    rows: list[dict] = []
    run_phase({"lr": 0.02, **config, "trial_id": "t0"}, Toy(), TRAIN, VAL,
              report=lambda m, c: (rows.append(m), search.on_trial_result("t0", dict(m))))
    search.on_trial_complete("t0", dict(rows[-1]))
    assert search._rounds[1].status == "pending" and first.asked == 1
    state = pickle.loads(pickle.dumps(search.get_state()))

    second = GatedLLM(["1. junk words\n2. xq zz", "1. qq qq\n2. zz xq"])
    for gate in second.gates:
        gate.set()
    restored = one_chain(tmp_path, second)
    restored.set_state(state)  # asks round 1 again (nothing was journaled for it)
    rows = drive(restored)
    first.gates[0].set()  # the crashed driver's thread answers late: nobody listens
    texts = [r["prompt_text"] for r in rows if r.get("screen")]
    assert sorted(texts) == ["junk words", "qq qq", "xq zz", "zz xq"]  # each once, none lost
    assert second.asked == 2

    # a state saved after round 1's candidates were posted but before any phase read them: the restored search
    # posts them again, and the next phase screens each once
    third = GatedLLM(["1. junk words\n2. xq zz", "1. qq qq\n2. zz xq"])
    third.gates[0].set()
    search = one_chain(tmp_path / "b", third)
    config = search.suggest("t0")
    rows = []
    run_phase({"lr": 0.02, **config, "trial_id": "t0"}, Toy(), TRAIN, VAL,
              report=lambda m, c: (rows.append(m), search.on_trial_result("t0", dict(m))))
    search.on_trial_complete("t0", dict(rows[-1]))
    posted(search, 2)
    state = pickle.loads(pickle.dumps(search.get_state()))
    fourth = GatedLLM(["1. qq qq\n2. zz xq"])  # round 2's answer: round 1's was posted before the crash
    for gate in fourth.gates:
        gate.set()
    restored = one_chain(tmp_path / "b", fourth)
    restored.set_state(state)
    rows = drive(restored)
    texts = [r["prompt_text"] for r in rows if r.get("screen")]
    assert sorted(texts) == ["junk words", "qq qq", "xq zz", "zz xq"]
    assert fourth.asked == 1


def test_a_phase_skips_what_its_cursor_says_was_screened():
    box = mailbox.LocalMailbox()
    try:
        box.post("chain", [{"id": "1:0", "text": "junk words"}, {"id": "1:1", "text": "xq zz"}])
        box.post("chain", [{"id": "1:0", "text": "junk words"}])  # posted again by a restored search: ignored
        box.close("chain")
        rows: list[dict] = []
        run_phase({"steps": 2, "eval_every": 1, "lr": 0.02, "prompt_init": "bad start", "trial_id": "p",
                   "mailbox": {**box.spec, "key": "chain", "cursor": 1, "drain": True, "wait_s": 5}},
                  Toy(), TRAIN, VAL, report=lambda m, c: rows.append(m))
        screened = [(r.get("start_text") or r["prompt_text"], r["step"]) for r in rows
                    if r.get("screen") or r.get("adopted")]
        assert screened == [("xq zz", 0)]  # there before the phase began: screened against its start
        assert rows[-1]["mailbox_cursor"] == 2
    finally:
        box.shutdown()


def test_a_draining_phase_stops_waiting_when_the_mailbox_is_gone():
    rows: list[dict] = []
    run_phase({"steps": 1, "eval_every": 1, "lr": 0.02, "prompt_init": "bad start", "trial_id": "p",
               "mailbox": {"kind": "local", "id": "nowhere", "key": "chain", "cursor": 0, "drain": True,
                           "wait_s": 0.3}}, Toy(), TRAIN, VAL, report=lambda m, c: rows.append(m))
    assert rows[-1]["wait_s"] > 0 and not any(r.get("screen") for r in rows)


def test_a_phase_on_the_mentors_node_lends_it_threads_while_a_round_is_asked():
    import torch

    box = mailbox.LocalMailbox()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        box.set_asking(True)
        rows: list[dict] = []

        def report(metrics, ckpt):
            rows.append(metrics)
            if metrics["step"] == 2:
                box.set_asking(False)  # the round ends: the phase takes its threads back at its next read

        run_phase({"steps": 4, "eval_every": 1, "lr": 0.02, "prompt_init": "bad start", "trial_id": "p",
                   "mailbox": {**box.spec, "key": "chain", "cursor": 0, "mentor_threads": 1}},
                  Toy(), TRAIN, VAL, report=report)
        assert [r["torch_threads"] for r in rows] == [2, 1, 1, 2, 2]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        box.shutdown()


def test_the_comparisons_inline_backend_runs_the_overlapped_default_at_the_gradient_arms_budget(tmp_path):
    """``compare.drive_inline`` (no Ray: trials in this process) with the default design, which overlaps: the
    in-process mailbox carries each round's candidates to the chain, at the gradient arm's budget."""
    from test_compare import SHARED_DATA

    from ray_llm_search import compare
    from ray_llm_search.testing import ScriptedLLM

    argv = ["--datasets", "sst2", "--seeds", "3", "--generations", "3", "--population", "2", "--steps", "2",
            "--eval-every", "1", "--shots", "2", "--val-shots", "2", "--test-size", "10", "--max-length", "32",
            "--backend", "inline", "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "storage"),
            "--data-root", str(SHARED_DATA), "--no-seed-prompt", "--arms", "gradient", "authors-paired",
            "authors-paired-perturb"]
    result = compare.main(argv, llm_factory=lambda args, seed: ScriptedLLM())
    runs = {r["arm"]: r for r in result["results"]["runs"]}
    b = runs["gradient"]["budget"]
    for arm in ("authors-paired", "authors-paired-perturb"):
        run = runs[arm]
        assert (run["trials"], run["gradient_steps"], run["n_evaluations"]) == (5, b["gradient_steps"], b["evaluations"])
        assert run["screened"] == 3 * 3
    assert runs["authors-paired"]["llm_calls"] == 3 and runs["authors-paired-perturb"]["llm_calls"] == 0
