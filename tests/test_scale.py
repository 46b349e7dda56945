"""Scale: population 64 x 10 generations of the searcher, driven directly as Tune would (no Ray cluster).

The searcher's own CPU time per Tune event stays under 1 ms, and its saved state grows linearly with the
number of trials (bytes per trial after generation 10 within 1.5x of those after generation 2).
"""

from __future__ import annotations

from ray_llm_search.testing import scale_run


def test_population_64_by_10_generations(tmp_path):
    r = scale_run(population=64, generations=10, results_per_trial=5, log_dir=str(tmp_path))
    assert r["trials"] == 640
    assert r["records"] == 10
    assert r["llm_calls"] == 9  # one round per generation after the first
    assert r["events"] >= 640 * 7  # a suggest, 5 results and a completion per trial
    assert r["cpu_ms_per_event"] < 1.0, r
    per_trial = {done: size / trials for done, trials, size in r["sizes"]}
    assert sorted(per_trial) == list(range(1, 11))
    assert per_trial[10] <= 1.5 * per_trial[2], per_trial
    # Growth is linear, not merely bounded per trial: each later generation adds about the same bytes.
    sizes = [size for _, _, size in r["sizes"]]
    steps = [b - a for a, b in zip(sizes[1:-1], sizes[2:], strict=True)]
    assert max(steps) <= 1.5 * min(steps), steps
    # generations.jsonl holds one line per generation.
    with open(tmp_path / "generations.jsonl") as f:
        assert len(f.read().splitlines()) == 10
