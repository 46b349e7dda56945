"""Reused Tune actors: phases that follow each other on one worker give exactly what each gives in a fresh
process, and a phase uses as many torch threads as its trial's CPUs. Real Tune, real MiniLM trainable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from ray_llm_search import LLM, LLMSearch  # noqa: E402
from trainables.data import bbc_news_spec  # noqa: E402
from trainables.text_prompt import train_text_prompt  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("step", "val_acc", "loss", "prompt_text", "train_loss")


class Silent(LLM):
    def propose(self, meta_prompt: str, n: int) -> list[str]:
        raise AssertionError("one generation: no LLM round")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _config(tmp_path) -> dict:
    return {"data": bbc_news_spec(shots=2, val_shots=2, test_size=10, seed=0), "steps": 3, "eval_every": 1,
            "batch_size": 4, "max_length": 32, "prompt_length": 4, "head": "linear"}


def _rows(trial) -> list[dict]:
    with open(os.path.join(trial.path, "result.json")) as f:
        results = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    return results


FRESH = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from trainables.phase import run_phase
from trainables.text_prompt import build_classifier, dataset_for
config = json.loads(sys.argv[1])
data = dataset_for(config)
rows = []
run_phase(config, build_classifier(config, data), data.train, data.val, report=lambda m, c: rows.append(m))
print(json.dumps(rows))
"""


def test_phases_on_a_reused_actor_match_fresh_processes_and_threads_follow_resources(ray_session, tmp_path):
    search = LLMSearch(Silent(), "topics", ["the topic of this article is", "news category:", "classify"],
                       metric="val_acc", mode="max", population=3, generations=1, log_dir=str(tmp_path / "log"))
    # 2 CPUs a trial on a 2-CPU node: the three phases run one after another on one reused worker
    analysis = tune.run(train_text_prompt, config=_config(tmp_path), search_alg=search,
                        num_samples=search.total_trials, resources_per_trial={"cpu": 2}, reuse_actors=True,
                        storage_path=str(tmp_path), name="reuse", verbose=0)
    trials = sorted(analysis.trials, key=lambda t: t.config["phase_seed"])
    assert len(trials) == 3 and all(t.status == "TERMINATED" for t in trials)
    pids = {r["pid"] for t in trials for r in _rows(t)}
    assert len(pids) == 1, f"expected one reused worker, got pids {pids}"
    for trial in trials:
        reported = [r for r in _rows(trial) if "val_acc" in r]
        assert {r["torch_threads"] for r in reported} == {2}
        config = {**trial.config, "trial_id": trial.trial_id, "vector_dir": str(tmp_path / "fresh")}
        out = subprocess.run([sys.executable, "-c", FRESH.format(root=ROOT, threads=2), json.dumps(config)],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        fresh = json.loads(out.stdout.strip().splitlines()[-1])
        got = [{k: r.get(k) for k in KEYS} for r in reported]
        want = [{k: r.get(k) for k in KEYS} for r in fresh]
        for a, b in zip(got, want, strict=True):
            for k in KEYS:
                if isinstance(b[k], float) and b[k] == b[k]:
                    assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (trial.trial_id, k, a, b)
                elif isinstance(b[k], float):  # NaN (train_loss at step 0)
                    assert a[k] != a[k]
                else:
                    assert a[k] == b[k], (trial.trial_id, k, a, b)

    # one CPU a trial: two workers side by side, one torch thread each
    search = LLMSearch(Silent(), "topics", ["the topic of this article is", "news category:"], metric="val_acc",
                       mode="max", population=2, generations=1, log_dir=str(tmp_path / "log1"))
    analysis = tune.run(train_text_prompt, config={**_config(tmp_path), "steps": 1}, search_alg=search,
                        num_samples=search.total_trials, resources_per_trial={"cpu": 1}, reuse_actors=True,
                        storage_path=str(tmp_path), name="threads1", verbose=0)
    assert {r["torch_threads"] for t in analysis.trials for r in _rows(t) if "val_acc" in r} == {1}
