"""Tune search-space domains in the base config (``tune.choice``, ``uniform``, ``loguniform``, ``randint``, ...).

``LLMSearch`` decides what each phase starts from; a base config may still leave hyperparameters open. Such a
domain is sampled once per *lineage* from the search's seed: a phase that starts a new chain (a seed, an LLM
candidate, a pool fill-in) draws fresh values, and an elite that resumes a chain keeps the values its chain was
trained with (as PBT carries an exploited trial's hyperparameters). The values go into the trial's config, are
recorded with the trajectory and shown in ``generations.jsonl`` and ``best()``.

``grid_search`` and ``sample_from`` are refused: a grid asks Tune for one trial per value (this searcher decides
the trials itself), and ``sample_from``'s function may read other keys of a config this module does not build.
"""

from __future__ import annotations

import random
from typing import Any

Path = tuple


def find_domains(config: dict | None) -> list[tuple[Path, Any]]:
    """The sampleable domains of ``config`` as ``(path, domain)``; raises ``ValueError`` for the refused kinds."""
    if not config:
        return []
    from ray.tune.search.sample import Function
    from ray.tune.search.variant_generator import parse_spec_vars

    _, domains, grids = parse_spec_vars(config)
    if grids:
        names = ", ".join(key(p) for p, _ in grids)
        raise ValueError(
            f"LLMSearch cannot honour tune.grid_search in the config ({names}): a grid asks for one trial per value, "
            "and this searcher chooses each trial's start itself. Use tune.choice([...]) to sample a value per "
            "chain, or run one search per grid value."
        )
    in_lists = [key(p) for p, _ in domains if any(isinstance(part, int) for part in p)]
    if in_lists:
        raise ValueError(f"LLMSearch samples search-space domains in dicts only, not inside lists ({', '.join(in_lists)})")
    functions = [key(p) for p, d in domains if isinstance(d, Function)]
    if functions:
        raise ValueError(
            f"LLMSearch cannot sample tune.sample_from in the config ({', '.join(functions)}); use tune.choice, "
            "tune.uniform, tune.loguniform, tune.randint (...) or a fixed value"
        )
    return sorted(domains, key=lambda item: key(item[0]))


def key(path: Path) -> str:
    """``("data", "shots")`` -> ``"data/shots"``, as the records show it."""
    return "/".join(str(p) for p in path)


def sample(domains: list[tuple[Path, Any]], rng: random.Random) -> dict[str, Any]:
    """One value per domain, drawn from ``rng`` (plain Python values, so that records stay JSON)."""
    import numpy as np

    values: dict[str, Any] = {}
    for path, domain in domains:
        value = domain.sample(random_state=np.random.RandomState(rng.randrange(2**31)))
        values[key(path)] = value.item() if hasattr(value, "item") else value
    return values


def nest(values: dict[str, Any]) -> dict:
    """``{"data/shots": 8}`` -> ``{"data": {"shots": 8}}``: what Tune merges into the trial's config."""
    out: dict = {}
    for name, value in values.items():
        parts = name.split("/")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
