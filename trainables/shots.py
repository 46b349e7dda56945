"""k-shot sampling shared by the text and image datasets: examples are anything with an integer ``label``;
every draw is a shuffle by the caller's ``random.Random``, class by class in label order, so that a seed fixes
the splits."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")


@dataclass
class LabelledSplits:
    """Fixed train / validation / test splits with integer labels ``0..C-1``; ``names[i]`` names class ``i``
    (the text and image datasets say ``label_names`` / ``classnames``)."""

    train: list
    val: list
    test: list
    names: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def split(self, name: str) -> list:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def by_class(examples: list) -> dict[Any, list]:
    groups: dict[Any, list] = defaultdict(list)
    for e in examples:
        groups[e.label].append(e)
    return groups


def take(group: list, k: int, rng: random.Random) -> tuple[list, list]:
    """``k`` of ``group`` and the rest, after a shuffle by ``rng`` (``group`` itself is left as it is)."""
    group = list(group)
    rng.shuffle(group)
    return group[:k], group[k:]


def stratified(examples: list, per_class: int, rng: random.Random) -> list:
    """At most ``per_class`` examples of each class."""
    out: list = []
    groups = by_class(examples)
    for label in sorted(groups):
        out += take(groups[label], per_class, rng)[0]
    return out


def few_shot(examples: list, k: int, rng: random.Random, where: str = "train", cap: bool = False) -> tuple[list, list]:
    """``k`` examples per class (taken) and the rest, both in a fixed order given ``rng``; with ``cap`` a class
    with fewer than ``k`` gives all it has, else it raises ``ValueError`` naming ``where``."""
    taken: list = []
    rest: list = []
    for label, group in sorted(by_class(examples).items()):
        if k > len(group) and not cap:
            raise ValueError(f"{where}: class {label} has {len(group)} examples, fewer than the {k} asked per class "
                             f"(set cap_shots: true to take what there is)")
        got, left = take(group, k, rng)
        taken += got
        rest += left
    return taken, rest
