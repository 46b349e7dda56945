"""The gradient-only baseline: ``GradientChains``, ``P`` chains of gradient phases and no LLM, the arm every
design of the comparison is measured against."""

from __future__ import annotations

import math
import os
import pickle
import random

from ray.tune.search import Searcher


class GradientChains(Searcher):
    """``population`` chains of gradient phases, no LLM: generation 0 starts from the seed prompts (cycled),
    each later phase continues its chain from the chain's best vectors so far.

    It hands out phase seeds from ``random.Random(seed)`` in the same order as ``LLMSearch``, so generation 0
    is the same set of trials in both.
    """

    def __init__(self, seed_prompts: list[str], population: int, generations: int, seed: int, log_dir: str,
                 metric: str = "val_acc", mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        if population < len(seed_prompts):
            raise ValueError(f"population ({population}) must be >= the number of seed prompts ({len(seed_prompts)})")
        self.population, self.generations = population, generations
        self.vector_dir = os.path.join(log_dir, "vectors")
        self.rng = random.Random(seed)
        self.generation = 0
        self.queue = [{"prompt_init": seed_prompts[i % len(seed_prompts)], "resume_from": None, "chain": i}
                      for i in range(population)]
        self.members: dict[str, dict] = {}  # trial_id -> {chain, generation, done}
        self.chain_best: dict[int, tuple] = {}  # chain -> ((val_acc, -loss), text, vectors_path)

    @property
    def total_trials(self) -> int:
        return self.population * self.generations

    def suggest(self, trial_id: str):
        if self.generation >= self.generations:
            return Searcher.FINISHED
        if not self.queue:
            return None
        spec = self.queue.pop(0)
        self.members[trial_id] = {"chain": spec["chain"], "generation": self.generation, "done": False}
        return {"prompt_init": spec["prompt_init"], "resume_from": spec["resume_from"], "generation": self.generation,
                "origin": "seed" if self.generation == 0 else "chain", "phase_seed": self.rng.randrange(2**31),
                "vector_dir": self.vector_dir}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        member = self.members.get(trial_id)
        if member is None or self.metric not in result or not result.get("vectors_path"):
            return
        key = (float(result[self.metric]), -float(result.get("loss", math.inf)))
        best = self.chain_best.get(member["chain"])
        if best is None or key > best[0]:
            self.chain_best[member["chain"]] = (key, result.get("prompt_text", ""), result["vectors_path"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        member = self.members.get(trial_id)
        if member is None or member["done"]:
            return
        if result and not error:
            self.on_trial_result(trial_id, result)
        member["done"] = True
        current = [m for m in self.members.values() if m["generation"] == self.generation]
        if len(current) < self.population or not all(m["done"] for m in current):
            return
        self.generation += 1
        if self.generation < self.generations:
            for chain in range(self.population):
                _, text, path = self.chain_best[chain]
                self.queue.append({"prompt_init": text, "resume_from": path, "chain": chain})

    def save(self, checkpoint_path: str) -> None:
        """Plain data only (queue, members, chain bests, the phase-seed generator), written atomically."""
        tmp = checkpoint_path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(dict(self.__dict__), f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
