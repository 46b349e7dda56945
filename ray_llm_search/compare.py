"""Does the LLM + gradient combination beat gradient descent alone, at equal budget, on your task?

    python -m ray_llm_search.compare --task-file my_task.json --seeds 0 1 2 3 4     # the default arms
    python -m ray_llm_search.compare --data reviews.csv --text-column review --label-column stars \
        --task-description "Rate a product review." --seed-prompts "this review is" "rating:" --name reviews
    python -m ray_llm_search.compare --datasets sst2 trec --seeds 0 1 2     # the shared benchmarks (presets)

A task file (JSON, or YAML when PyYAML is installed) holds ``name``, ``task`` (one or two sentences for the
LLM), ``seed_prompts`` (one or more; generation 0 starts from the first ``--population``, cycled) and ``data``
(a data spec of ``trainables.data``: ``path`` or ``train``/``val``/``test`` files, columns, ``label_names``;
relative paths are taken from the task file's folder), and may set ``max_length`` and ``test_size``. The
run seed fixes the k-shot splits (``--shots`` per class for training, ``--val-shots`` for validation).

The arms, on the same data splits (fixed by the run seed), ``G`` generations of ``P`` Tune trials unless said:

| arm | what a trial does | gradient steps | evaluations | LLM calls |
|---|---|---|---|---|
| ``gradient`` | ``P`` chains: generation 0 starts from the seed prompts, each later phase continues its own chain from that chain's best vectors so far (no LLM) | ``G*P*K`` | ``G*P*E`` | 0 |
| ``llm`` | OPRO-style: ``P*E`` prompts per generation evaluated as text, no gradient step (``steps=0``); the LLM proposes all ``P*E`` of the next generation | 0 | ``G*P*E`` | ``G-1`` |
| ``llm+gradient`` | ``LLMSearch``: ``P`` phases of ``K`` steps per generation; 1 elite resumes from its vectors, the LLM proposes the other ``P-1`` | ``G*P*K`` | ``G*P*E`` | ``G-1`` |
| ``perturb+gradient`` | restarts without an LLM: ``llm+gradient`` with random word edits of the best texts instead of the LLM's | ``G*P*K`` | ``G*P*E`` | 0 |
| ``screened`` / ``screened-perturb`` | every chain continues; generation 0 scores the seeds as text, then each chain screens ``G-1`` LLM (perturbed) texts and starts from one only if it beats the chain | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``late-mix`` / ``late-mix-perturb`` | every chain continues; after one generation of descent each chain screens ``G-1`` warm restarts ``(chain + candidate) / 2`` | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``late-text`` | as ``late-mix``, the candidates starting from their text (the plain restart the warm one is measured against) | ``G*P*K`` | ``G*P*E`` | 1 |
| ``screened-paired`` / ``screened-perturb-paired`` | as ``screened``, a candidate adopted only if it passes the paired sign test (``screen_test="paired"``; the preset ``"chains-paired"``) | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``authors`` / ``authors-perturb`` | the MaaO authors' regime and its no-LLM twin, one chain, 3 short phases each followed by an LLM round whose candidates are screened against the chain, then one long descent (``authors_schedule``) | ``G*P*K`` | ``G*P*E`` | 3 / 0 |
| ``authors-faithful`` | ``authors`` with the mentor shown texts scored as text (``mentor_scores="text"``): the phases before each round score their best vectors' projection, one candidate fewer is screened per round | ``G*P*K`` | ``G*P*E`` | 3 |
| ``halving`` / ``halving-perturb`` | generation 0 scores the ``P`` seeds as text; one LLM (perturbed) round gives ``P`` new starts and ``S`` texts the best seed screens; ``P + 1`` chains descend ``K`` steps, the best 2 go on, then the best one takes the rest (the preset ``"halving"``) | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``descent-shown`` / ``descent-shown-perturb`` | generation 0 scores the ``P`` seeds as text; the ``P`` seed chains descend ``K`` steps; one LLM round shown what descent did to each seed (perturbed: word edits of the best-descending seeds) gives ``P`` new starts that descend ``K`` steps; the best 2 of the ``2P`` lineages go on, then the best one takes the rest (the preset ``"descent-shown"``) | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``authors-paired`` / ``authors-perturb-paired`` | ``LLMSearch``'s default design (``presets.DEFAULT``) and its twin: ``authors`` with candidates adopted only on the paired sign test (the preset ``"authors-paired"``) | ``G*P*K`` | ``G*P*E`` | 3 / 0 |
| ``pbt`` | the peer a Ray user would pick: Tune's ``PopulationBasedTraining`` over ``P`` chains of ``G*K`` steps (the text trainable, started like ``gradient``'s generation 0); every ``K`` steps the bottom quantile takes a top chain's vectors from its Tune checkpoint and explores the learning rate (``pbt_scheduler``); needs ``--backend tune`` | ``G*P*K`` | at most ``G*P*E``: ``P*(1 + G*K/eval_every)`` plus one per exploit | 0 |

Without ``--arms``: ``gradient``, ``authors-perturb-paired``, ``llm``, ``authors-paired`` (gradient only, restarts without
an LLM in the default design's allocation, LLM only, ``LLMSearch``'s default).

``K`` = ``--steps`` per phase, ``E = K / eval_every + 1`` evaluations per phase (a phase also evaluates its
start).

``--budget`` says what is held equal. ``compute`` (the default; the table above): every arm spends ``G*P*K``
gradient steps and ``G*P*E`` evaluations in all, so a one-chain design (the authors' regimes, ``text-first``:
one trial at a time) gets every step, and on a cluster of ``P`` workers leaves ``P-1`` of them idle. ``workers``
(equal wall-clock on ``P`` workers): every arm runs at most ``P`` trials at once (Tune's
``max_concurrent_trials``) and each worker gets one chain's ``G*K`` steps and ``G*E`` evaluations; an arm of
``P`` chains (gradient only, LLM only, the chains designs, PBT) spends what it spends at equal compute, a
one-chain design is built at the budget of one chain (``presets.preset(population=1)``): ``G*K`` steps in all
(``--generations`` must leave its rounds room: the command says so). It is counted from what the trials
reported (``worker_span``): the generations one after another, each generation's trials in creation order,
each on the worker that has done least so far; the busiest worker's steps and evaluations must be the budget's.
Every run records its budget (``"budget": {"kind": ...}``); runs of the two budgets are kept side by side in
``results.json`` and never share a table or a pair.

Generation 0 of ``gradient`` and ``llm+gradient`` is the same set of trials (same starts, same phase
seeds), so the arms differ only in what starts the later phases: the chain's own vectors, or the LLM's
prompts plus one elite. After the search, the arm's final prompt is evaluated once on the test split: the
evaluation its design chooses (``arm_select``: the lowest validation loss for the authors' designs, which
choose so, ``select="loss"``; else the highest validation accuracy, ties: lower loss). Each arm's steps and evaluations are counted from
what its trials reported and checked against the budget; a mismatch stops the run.

    python examples/compare.py --datasets sst2 trec ag_news rte --seeds 0 1 2   # examples/RESULTS.md
    python examples/compare.py --replot                                       # table + plot from results.json

Writes to ``--out`` (default ``compare_results``; ``examples/results`` from ``examples/compare.py``):
``results.json`` (every run, merged across invocations; runs already there are skipped unless ``--force``), ``RESULTS_TABLE.md``, ``curves_<dataset>.png`` and
TensorBoard runs of best-so-far validation accuracy per arm under ``tensorboard/``; Tune's own per-trial
logs and the searcher's TensorBoard go under ``--storage``. ``--results-md FILE`` also puts the tables, with the
one command that regenerates them, between ``<!-- compare:begin -->`` and ``<!-- compare:end -->`` in ``FILE``
(``examples/RESULTS.md``'s generated section).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import random
import statistics
import sys
import time

from ray.tune import Callback  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from ray_llm_search import presets  # noqa: E402
from ray_llm_search.flags import add_llm_flags, add_search_flags, llm_from_flags, llm_label  # noqa: E402
from ray_llm_search.stats import mean_ci  # noqa: E402
from trainables.benchmark_data import BENCHMARKS  # noqa: E402

ARMS = ("gradient", "llm", "llm+gradient", "perturb+gradient", "screened", "screened-perturb", "screened-paired",
        "screened-perturb-paired", "late-mix", "late-mix-perturb", "late-text", "authors", "authors-perturb",
        "authors-faithful", "authors-paired", "authors-perturb-paired", "text-first", "text-first-perturb", "halving",
        "halving-perturb", "descent-shown", "descent-shown-perturb", "pbt")
ARM_LABELS = {"gradient": "gradient only", "llm": "LLM only (OPRO-style)", "llm+gradient": "LLM + gradient (LLMSearch, restarts)",
              "screened": "chains + screened LLM starts", "screened-perturb": "chains + screened perturbed starts (no LLM)",
              "late-mix": "chains + late warm LLM restarts",
              "late-mix-perturb": "chains + late warm perturbed restarts (no LLM)",
              "late-text": "chains + late LLM restarts from text",
              "perturb+gradient": "restarts without an LLM (LLMSearch, perturbed texts)",
              "screened-paired": "chains + LLM starts screened by a paired test",
              "screened-perturb-paired": "chains + perturbed starts screened by a paired test (no LLM)",
              "authors": "authors' regime (1 chain, 3 screened LLM rounds, long descent)",
              "authors-perturb": "authors' regime, perturbed texts (no LLM)",
              "authors-faithful": "authors' regime, mentor shown text scores",
              "authors-paired": "LLMSearch default: authors' regime, LLM candidates adopted on a paired test",
              "authors-perturb-paired": "authors' regime, perturbed texts adopted on a paired test (no LLM)",
              "text-first": "3 LLM rounds on text (text against text), then one descent",
              "text-first-perturb": "3 rounds of perturbed texts on text, then one descent (no LLM)",
              "halving": "LLM starts as lineages, the best kept after descent (successive halving)",
              "halving-perturb": "perturbed starts as lineages, the best kept after descent (no LLM)",
              "descent-shown": "seed chains descend, the LLM shown what descent did; its starts as lineages",
              "descent-shown-perturb": "seed chains descend, perturbed starts as lineages (no LLM)",
              "pbt": "Tune's PopulationBasedTraining over P gradient chains (no LLM)"}
# The budgets a comparison can hold fixed (--budget): the same total compute (gradient steps and forward
# evaluations, however many trials run at once), or P workers with the same steps per worker (the wall-clock of a
# cluster of P workers: each arm runs at most P trials at once, each worker G*K steps and G*E evaluations).
BUDGETS = ("compute", "workers")
BUDGET_LABELS = {"compute": "equal compute (G*P*K steps, G*P*E evaluations per arm)",
                 "workers": "P workers, the same steps per worker (G*K steps, G*E evaluations each)"}
# The arms in which new starts are screened: arm -> (where candidates come from, when they are screened, how
# a winning candidate starts: None = --candidate-start, the test it must pass). "early": generation 0 scores
# the seed prompts as text and every chain screens candidates before its first step; "late": the chains
# descend one generation first, then screen candidates against what they have reached; "authors": one chain
# (authors_schedule).
SCREENED_ARMS = {"screened": ("llm", "early", None, "gain"), "screened-perturb": ("perturb", "early", None, "gain"),
                 "screened-paired": ("llm", "early", None, "paired"),
                 "screened-perturb-paired": ("perturb", "early", None, "paired"),
                 "late-mix": ("llm", "late", "mix", "gain"), "late-mix-perturb": ("perturb", "late", "mix", "gain"),
                 "late-text": ("llm", "late", "text", "gain"),
                 "authors": ("llm", "authors", "text", "gain"), "authors-perturb": ("perturb", "authors", "text", "gain"),
                 "authors-faithful": ("llm", "authors", "text", "gain"),
                 "authors-paired": ("llm", "authors", "text", "paired"),
                 "authors-perturb-paired": ("perturb", "authors", "text", "paired"),
                 "text-first": ("llm", "text-first", "text", "gain"),
                 "text-first-perturb": ("perturb", "text-first", "text", "gain"),
                 "halving": ("llm", "halving", "text", "gain"), "halving-perturb": ("perturb", "halving", "text", "gain"),
                 "descent-shown": ("llm", "descent-shown", "text", "gain"),
                 "descent-shown-perturb": ("perturb", "descent-shown", "text", "gain")}
# The preset (ray_llm_search.presets) each screened arm runs; its table entry above says where candidates
# come from and how a winner starts.
ARM_PRESETS = {"screened": "chains-screened", "screened-perturb": "chains-screened", "screened-paired": "chains-paired",
               "screened-perturb-paired": "chains-paired", "late-mix": "late-mix", "late-mix-perturb": "late-mix",
               "late-text": "late-mix", "authors": "authors", "authors-perturb": "authors",
               "authors-faithful": "authors-faithful", "authors-paired": "authors-paired",
               "authors-perturb-paired": "authors-paired", "text-first": "text-first",
               "text-first-perturb": "text-first", "halving": "halving", "halving-perturb": "halving",
               "descent-shown": "descent-shown", "descent-shown-perturb": "descent-shown"}
# Arms whose mentor is shown texts with what they score as text (LLMSearch(mentor_scores="text")), each a
# copy of the arm named beside it with the projections' evaluations taken from its screening.
FAITHFUL_ARMS = {"authors-faithful": "authors"}
# What the LLM adds: each LLM arm minus its no-LLM control (the same allocation, perturbed texts).
CONTROLS = (("llm+gradient", "perturb+gradient"), ("screened", "screened-perturb"),
            ("screened-paired", "screened-perturb-paired"), ("late-mix", "late-mix-perturb"), ("authors", "authors-perturb"),
            ("authors-faithful", "authors-perturb"), ("authors-paired", "authors-perturb-paired"),
            ("text-first", "text-first-perturb"), ("halving", "halving-perturb"),
            ("descent-shown", "descent-shown-perturb"))
# Ablations: an arm minus the same arm with one thing changed (the mentor shown vector scores; candidates
# adopted on any gain instead of a paired test; a warm restart instead of a restart from the text).
ABLATIONS = tuple((a, b) for a, b in FAITHFUL_ARMS.items()) + (("authors-paired", "authors"), ("late-mix", "late-text"))
# LLMSearch's default against the peer a Ray user would pick without it (Tune's PBT over the same chains).
PEERS = (("authors-paired", "pbt"), ("authors-perturb-paired", "pbt"))
# gradient only, its no-LLM twin (the same allocation as LLMSearch's default, perturbed texts), LLM only,
# LLMSearch's default design (presets.DEFAULT)
DEFAULT_ARMS = ("gradient", "authors-perturb-paired", "llm", "authors-paired")

# The shared benchmarks' task descriptions and seed prompts, and their published settings: trainables.benchmark_data.
TASKS: dict[str, tuple[str, list[str]]] = {n: (b.task, list(b.seed_prompts)) for n, b in BENCHMARKS.items()}


# -- arm 1: gradient chains ------------------------------------------------------------------------------


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


# -- running one arm ---------------------------------------------------------------------------------------


class NoLLM:
    """The mentor of the arms that must not ask one (``proposals="perturb"``): any call is a bug."""

    style = "completion"
    usage: dict = {}
    faults: dict = {}

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        raise AssertionError("this arm asks no LLM")


# Settings the published table uses per dataset where the flag is not given (trainables.benchmark_data).
DATASET_DEFAULTS: dict[str, dict] = {n: dict(b.defaults) for n, b in BENCHMARKS.items() if b.defaults}
GLOBAL_DEFAULTS = {"test_size": None, "max_length": 64}


def setting(args, dataset: str, name: str):
    """``--test-size`` / ``--max-length`` as given, else the task file's or the preset's setting, else the
    default."""
    value = getattr(args, name)
    if value is not None:
        return value
    user = user_tasks(args).get(dataset)
    if user is not None and user.get(name) is not None:
        return user[name]
    return DATASET_DEFAULTS.get(dataset, {}).get(name, GLOBAL_DEFAULTS[name])


# -- a user's own task -------------------------------------------------------------------------------------

TASK_FILE_KEYS = {"name", "task", "seed_prompts", "data", "max_length", "test_size"}


def user_tasks(args) -> dict[str, dict]:
    return getattr(args, "user_tasks", None) or {}


def task_of(args, dataset: str) -> tuple[str, list[str]]:
    """``(task description, seed prompts)`` of a user's task or a preset."""
    user = user_tasks(args).get(dataset)
    if user is not None:
        return user["task"], list(user["seed_prompts"])
    return TASKS[dataset]


def load_task_file(path: str) -> dict:
    """A task file (JSON, or YAML with PyYAML) checked and with its data paths made absolute; raises
    ``ValueError`` naming what is wrong."""
    if not os.path.isfile(path):
        raise ValueError(f"task file not found: {path!r}")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as e:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the task as JSON") from e
        try:
            task = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
    else:
        try:
            task = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(task, dict):
        raise ValueError(f"{path}: a task file holds one object with keys {sorted(TASK_FILE_KEYS)}")
    return check_task(task, os.path.dirname(os.path.abspath(path)), where=path)


def check_task(task: dict, base_dir: str, where: str) -> dict:
    unknown = set(task) - TASK_FILE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a task has {sorted(TASK_FILE_KEYS)}")
    name = task.get("name")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\ "):
        raise ValueError(f"{where}: 'name' must be a short name without spaces or slashes, got {name!r}")
    if name in TASKS:
        raise ValueError(f"{where}: name {name!r} is a preset's; choose another")
    description = task.get("task")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"{where}: 'task' must describe the task in a sentence or two (it is what the LLM reads)")
    seeds = task.get("seed_prompts")
    if isinstance(seeds, str) or not isinstance(seeds, list) or not seeds or not all(
            isinstance(x, str) and x.strip() for x in seeds):
        raise ValueError(f"{where}: 'seed_prompts' must be a list of one or more non-empty texts, got {seeds!r}")
    data = task.get("data")
    if not isinstance(data, dict) or not any(k in data for k in ("path", "train")):
        raise ValueError(f"{where}: 'data' must be a data spec with 'path' (or 'train', 'val', 'test' files); "
                         f"see trainables/data.py, got {data!r}")
    for key in ("max_length", "test_size"):
        value = task.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    data = dict(data)
    for key in ("path", "train", "val", "test"):
        entry = data.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            data[key] = {**entry, "path": _absolute(entry["path"], base_dir, data.get("format"), where)}
        elif isinstance(entry, str):
            data[key] = _absolute(entry, base_dir, data.get("format"), where)
    return {**task, "name": name.strip(), "task": description.strip(), "seed_prompts": [x.strip() for x in seeds],
            "data": data}


def _absolute(path: str, base_dir: str, fmt: str | None, where: str) -> str:
    if fmt == "hf":  # a Hugging Face dataset name, not a file
        return path
    full = path if os.path.isabs(path) else os.path.join(base_dir, os.path.expanduser(path))
    if not os.path.exists(full):
        raise ValueError(f"{where}: data file {path!r} not found (looked for {full})")
    return os.path.abspath(full)


def task_from_flags(args) -> dict | None:
    """The task given by ``--data`` and its flags, or None."""
    if not args.data:
        if args.task_description or args.seed_prompts:
            raise ValueError("--task-description and --seed-prompts describe a task given with --data")
        return None
    if not args.task_description or not args.seed_prompts:
        raise ValueError("--data needs --task-description and --seed-prompts (or write a --task-file)")
    data: dict = {"path": args.data}
    if args.text_column:
        data["text_column"] = args.text_column
    if args.label_column:
        data["label_column"] = args.label_column
    task = {"name": args.name or os.path.splitext(os.path.basename(args.data.rstrip("/")))[0] or "task",
            "task": args.task_description, "seed_prompts": args.seed_prompts, "data": data}
    return check_task(task, os.getcwd(), where="--data")


# The arguments that change a run's result (beside the budget): a run recorded with other values is not
# the run asked for. Paths, CPU counts, the LLM's endpoint and key variable are not among them.
RESULT_ARGS = ("model", "head", "shots", "val_shots", "test_size", "max_length", "lr", "batch_size", "prompt_length",
               "max_prompt_words", "elites", "llm", "llm_model", "candidate_start", "screen_margin", "tell_length")
# What only the mentor reads: a run without an LLM (gradient only, the no-LLM twins) is the same run either way.
MENTOR_ARGS = ("llm", "llm_model", "tell_length")


NEW_ARG_DEFAULTS = {"candidate_start": "text", "screen_margin": 0, "tell_length": False}


def check_recorded(run: dict, args, b: dict) -> None:
    """A run already in results.json is reused only if it was made at this budget and with these settings."""
    where = f"results.json holds {run['dataset']}/{run['arm']}/seed {run['seed']}"
    if {"kind": "compute", **run["budget"]} != b:  # runs recorded before --budget existed: equal compute
        raise ValueError(f"{where} at another budget ({run['budget']}); use --force or another --out")
    recorded = {**NEW_ARG_DEFAULTS, **run.get("args", {})}  # runs recorded before these flags existed
    differ = {k: (recorded.get(k), setting(args, run["dataset"], k) if k in GLOBAL_DEFAULTS else getattr(args, k))
              for k in RESULT_ARGS}
    differ = {k: v for k, v in differ.items() if v[0] != v[1] and not (k in MENTOR_ARGS and run.get("llm") is None)}
    if run["dataset"] in user_tasks(args):  # the task file may have changed: other data, task, seeds
        recorded_task = (run.get("args", {}).get("user_tasks") or {}).get(run["dataset"])
        if recorded_task != user_tasks(args)[run["dataset"]]:
            differ["task"] = (recorded_task, user_tasks(args)[run["dataset"]])
    if differ:
        said = ", ".join(f"{k}: recorded {old!r}, asked {new!r}" for k, (old, new) in differ.items())
        raise ValueError(f"{where} with other settings ({said}); use --force or another --out")


def budget(args) -> dict:
    """The budget every arm of a run spends (``--budget``). ``"compute"``: ``gradient_steps`` = ``G*P*K`` and
    ``evaluations`` = ``G*P*E`` in all, however many trials run at once. ``"workers"``: ``P`` workers
    (``workers``), each ``worker_steps`` = ``G*K`` steps and ``worker_evaluations`` = ``G*E`` evaluations (one
    gradient chain's), at most ``P`` trials at once; ``gradient_steps`` and ``evaluations`` are then what the
    ``P`` workers hold together, which a design that leaves workers idle does not spend."""
    if args.steps % args.eval_every:
        raise ValueError(f"--steps ({args.steps}) must be a multiple of --eval-every ({args.eval_every})")
    kind = getattr(args, "budget", "compute")
    if kind not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {kind!r}")
    evals_per_phase = args.steps // args.eval_every + 1
    b = {"kind": kind, "generations": args.generations, "population": args.population, "steps_per_phase": args.steps,
         "eval_every": args.eval_every, "evals_per_phase": evals_per_phase,
         "gradient_steps": args.generations * args.population * args.steps,
         "evaluations": args.generations * args.population * evals_per_phase,
         "llm_calls": args.generations - 1}
    if kind == "workers":
        b.update(workers=args.population, worker_steps=args.generations * args.steps,
                 worker_evaluations=args.generations * evals_per_phase)
    return b


def budget_kind(run: dict) -> str:
    """The budget a recorded run was made at (runs recorded before ``--budget`` existed: ``"compute"``)."""
    return run.get("budget", {}).get("kind", "compute")


def design_population(arm: str, args) -> int:
    """How many trials the arm runs at once at ``--population`` ``P``: ``P``, or the preset's own (the authors'
    designs and text-first run one chain: 1). Under ``--budget workers`` a design gets the budget of that many
    workers (``presets.budget(population=...)``): one chain gets one worker's steps."""
    if arm not in ARM_PRESETS:
        return args.population
    return presets.preset(ARM_PRESETS[arm], population=args.population, generations=args.generations,
                          steps=args.steps, eval_every=args.eval_every)["population"]


def base_config(args, dataset: str, seed: int) -> dict:
    user = user_tasks(args).get(dataset)
    if user is not None:
        data = {**user["data"], "shots": args.shots, "val_shots": args.val_shots or args.shots, "seed": seed}
        test_size = setting(args, dataset, "test_size")
        if test_size is not None:
            data["test_size"] = test_size
    else:
        data = BENCHMARKS[dataset].data_spec(root=args.data_root, shots=args.shots, val_shots=args.val_shots,
                                             test_size=setting(args, dataset, "test_size"), seed=seed)
    return {"data": data, "model": args.model, "head": args.head, "steps": args.steps, "eval_every": args.eval_every,
            "lr": args.lr, "batch_size": args.batch_size, "prompt_length": args.prompt_length,
            "max_length": setting(args, dataset, "max_length"), "device": "cpu" if args.cpu else "auto",
            **({"keep_all_vectors": True} if getattr(args, "keep_vectors", False) else {})}


def make_llm(args, seed: int):
    return llm_from_flags(args, seed, **({"max_new_tokens": 24} if args.llm == "local" else {}))


def run_arm(args, dataset: str, seed: int, arm: str, storage: str, llm_factory=None) -> dict:
    """One arm on one dataset and seed: the search, the budget checks, the selected best on test."""
    from ray import tune

    from trainables.text_prompt import evaluate_prompt, train_text_prompt

    task, seeds = task_of(args, dataset)
    seeds = seeds[: args.population]  # generation 0 is exactly P phases in every arm
    b = budget(args)
    name = f"{dataset}_{arm.replace('+', '_')}_seed{seed}"
    log_dir = os.path.join(storage, name, "llm_search")
    config = base_config(args, dataset, seed)
    if args.backend == "tune" and getattr(args, "warm", False):
        # the arm's trial processes boot while its LLM loads (ray_llm_search.warm, opt-in); each trial takes one CPU
        import ray

        from ray_llm_search import warm

        warm.prestart_trial_workers(min(int(ray.cluster_resources().get("CPU", 1)), args.population),
                                    keep_alive_s=120)
    search, llm = make_search(args, arm, task, seeds, seed, log_dir, config, llm_factory)
    recorder = Recorder()
    started = time.time()
    if args.backend == "inline":
        drive_inline(search, config, recorder)
    else:
        # at most P trials at once under the workers budget; PBT's exploits and explored rates (pbt_scheduler)
        extra = {"max_concurrent_trials": args.population} if b["kind"] == "workers" else {}
        if arm == "pbt":  # PBT takes no search algorithm: the chains are a grid over the config (make_search)
            extra.update(scheduler=pbt_scheduler(args, seed), stop={"step": config["steps"]})
        else:
            extra.update(search_alg=search)
        tune.run(train_text_prompt, name=name, storage_path=storage, config=config,
                 num_samples=1 if search is None else search.total_trials, resources_per_trial={"cpu": 1},
                 metric="val_acc", mode="max",
                 callbacks=[recorder], verbose=args.verbose, raise_on_failed_trial=False, reuse_actors=True,
                 trial_dirname_creator=lambda trial: f"phase_{trial.trial_id}", **extra)
    search_wall = time.time() - started
    evaluations = recorder.evaluations()
    counts = check_budget(arm, evaluations, b)

    rule = "loss" if getattr(search, "select", "metric") == "loss" else "acc"
    best = select_best(evaluations, rule)
    t = time.time()
    test = evaluate_prompt(config, vectors_path=best["path"])
    usage = dict(llm.usage) if llm is not None else {}
    return {
        "dataset": dataset, "seed": seed, "arm": arm, "llm": _run_llm(args, llm, llm_factory), "budget": b, **counts,
        "test_acc": test["acc"], "select": rule, "test_by_rule": {rule: test["acc"]}, "test_n": test["n"], "best_val_acc": best["val_acc"], "best_prompt": test["prompt_text"],
        "best_generation": best["generation"], "best_origin": best["origin"],
        "search_wall_s": round(search_wall, 1), "test_eval_s": round(time.time() - t, 1),
        "llm_calls": int(usage.get("calls", 0)),
        "llm_tokens": int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
        "llm_prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "llm_completion_tokens": int(usage.get("completion_tokens", 0)),
        "llm_s": round(getattr(search, "llm_seconds", 0.0), 1),
        "curve_steps": best_so_far(evaluations, curve_budget(b), "steps"),
        "curve_evals": best_so_far(evaluations, curve_budget(b), "evals"),
        "evaluations": evaluations, "experiment": os.path.join(storage, name),
        "split_sizes": _split_sizes(config),
    }


def _run_llm(args, llm, llm_factory=None) -> str | None:
    """The mentor a run asked, by name (``flags.llm_label``; a factory's LLM by its class); ``None`` for an arm
    that asks none."""
    if llm is None or isinstance(llm, NoLLM):
        return None
    return llm_label(args) if llm_factory is None else type(llm).__name__


def pbt_scheduler(args, seed: int):
    """Tune's ``PopulationBasedTraining`` for the ``pbt`` arm: every ``K`` steps (``time_attr="step"``, the
    phases' own step count) the chains in the bottom quantile take the vectors, head, optimizer state and step of
    one in the top quantile (its Tune checkpoint: ``trainables.phase``'s restart path) and explore the learning
    rate (Tune's perturbation: resampled from ``--lr`` / 10 .. ``--lr`` * 10 with probability 0.25, else times 0.8
    or 1.2). ``synch=True``: every chain waits at each ``K`` steps for the others, so an exploited chain continues
    at the step it reached itself (its steps are counted like any chain's). PBT draws its choices from Python's
    ``random`` module, seeded here with the run's seed; Tune draws from it too, so two runs of the same seed may
    explore other rates (the donors and the steps of the exploits have been the same in the runs seen)."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    random.seed(seed)
    return PopulationBasedTraining(time_attr="step", perturbation_interval=args.steps, synch=True,
                                   hyperparam_mutations={"lr": tune.loguniform(args.lr / 10, args.lr * 10)})


def make_search(args, arm: str, task: str, seeds: list[str], seed: int, log_dir: str, config: dict,
                llm_factory=None) -> tuple[Searcher, object]:
    """The arm's searcher and its LLM (``None`` for gradient only and PBT); LLM only sets ``config["steps"] = 0``.
    PBT has no searcher (Tune's ``PopulationBasedTraining`` refuses one): ``config`` becomes its ``P`` chains, a
    grid over ``chain`` whose start text and phase seed are those of the gradient arm's generation 0 (the same
    ``random.Random(seed)`` draws), each of one chain's ``G*K`` steps, every evaluation's vectors kept
    (``select_best``)."""
    from ray import tune

    from ray_llm_search import LLMSearch

    if arm == "gradient":
        return GradientChains(seeds, args.population, args.generations, seed, log_dir), None
    if arm == "pbt":
        rng = random.Random(seed)
        starts = [(seeds[i % len(seeds)], rng.randrange(2**31)) for i in range(args.population)]
        config.update(chain=tune.grid_search(list(range(args.population))),
                      prompt_init=tune.sample_from(lambda spec: starts[spec.config.chain][0]),
                      phase_seed=tune.sample_from(lambda spec: starts[spec.config.chain][1]),
                      resume_from=None, generation=0, origin="seed", vector_dir=os.path.join(log_dir, "vectors"),
                      steps=args.generations * args.steps, keep_all_vectors=True)
        return None, None
    perturbed = arm == "perturb+gradient" or (arm in SCREENED_ARMS and SCREENED_ARMS[arm][0] == "perturb")
    llm = NoLLM() if perturbed else (llm_factory or make_llm)(args, seed)
    common = {"metric": "val_acc", "mode": "max", "max_prompt_words": args.max_prompt_words, "seed": seed,
              "log_dir": log_dir, "prompt_tokens": args.prompt_length if getattr(args, "tell_length", False) else None}
    if arm == "llm":
        config["steps"] = 0
        width = args.population * budget(args)["evals_per_phase"]  # as many evaluations per generation as the others
        return LLMSearch(llm, task, seeds, population=width, generations=args.generations, elites=0,
                         candidates_per_round=width, **common), llm
    if arm in ("llm+gradient", "perturb+gradient"):
        return LLMSearch(llm, task, seeds, population=args.population, generations=args.generations,
                         elites=args.elites, proposals="perturb" if arm == "perturb+gradient" else "llm",
                         **common), llm
    proposals, _, candidate_start, _ = SCREENED_ARMS[arm]
    # under the workers budget a design gets as many workers' steps as it runs trials at once
    population = design_population(arm, args) if budget(args)["kind"] == "workers" else args.population
    return LLMSearch.from_preset(
        llm, task, seeds, ARM_PRESETS[arm], steps=args.steps, eval_every=args.eval_every,
        population=population, generations=args.generations, proposals=proposals,
        candidate_start=candidate_start or args.candidate_start, screen_margin=args.screen_margin, **common), llm


def _split_sizes(config: dict) -> dict:
    from trainables.text_prompt import dataset_for

    data = dataset_for(config)
    return {"train": len(data.train), "val": len(data.val), "test": len(data.test)}


def screened_schedule(args, when: str = "early") -> list[dict]:
    """The screened arms' generations at the gradient arm's budget: ``presets.chains_schedule``."""
    return presets.chains_schedule(args.generations, args.steps, when)


AUTHORS_ROUNDS = presets.AUTHORS_ROUNDS


def authors_schedule(args, faithful: bool = False) -> list[dict]:
    """The MaaO authors' regime at the gradient arm's budget: ``presets.authors_schedule``."""
    return presets.authors_schedule(args.population, args.generations, args.steps, args.eval_every, faithful)


def drive_inline(search, config: dict, recorder: Recorder, max_wait_s: float = 900.0) -> None:
    """The search without Tune: trials one after another in this process, fed to the searcher as Tune would
    (suggest, each result, completion). Same phases, seeds and results as ``tune.run`` (a phase does not depend
    on what runs beside it); used to measure many arms quickly on few cores."""
    from ray.tune.search import Searcher

    from trainables.phase import run_phase
    from trainables.text_prompt import build_classifier, dataset_for

    search.set_search_properties("val_acc", "max", config, num_samples=search.total_trials)
    data = dataset_for(config)
    count, deadline = 0, time.monotonic() + max_wait_s
    while True:
        trial_id = f"inline{count:05d}"
        suggested = search.suggest(trial_id)
        if suggested == Searcher.FINISHED:
            return
        if suggested is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the searcher gave no trial for {max_wait_s}s after {count} trials")
            time.sleep(0.02)  # an LLM round is running
            continue
        count += 1
        deadline = time.monotonic() + max_wait_s
        cfg = {**config, **suggested, "trial_id": trial_id}
        last: dict = {}

        def report(metrics: dict, checkpoint, trial_id=trial_id, cfg=cfg, last=last) -> None:
            last.clear()
            last.update(metrics)
            search.on_trial_result(trial_id, dict(metrics))
            recorder.add(trial_id, cfg, metrics)

        run_phase(cfg, build_classifier(cfg, data), data.train, data.val, report=report)
        search.on_trial_complete(trial_id, dict(last))


class Recorder(Callback):
    """A Tune callback keeping every evaluation each trial reported (what the budget checks count)."""

    def __init__(self) -> None:
        self.rows: dict[tuple, dict] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.add(trial.trial_id, trial.config, result)

    def add(self, trial_id: str, cfg: dict, result: dict) -> None:
        if "val_acc" not in result or "step" not in result:
            return
        # a function trainable's final result may repeat its last report: one row per (trial, step, screen)
        # (a projection evaluated as text is a screen row of its own, after the phase's last step)
        # (an exploit's start, at a step the trial has evaluated itself before, is one of its own too, and so is a
        # candidate adopted mid-phase, overlap=True, at the step it won at)
        index = (-2 if result.get("projection") else int(result.get("screen_index", -1)) if result.get("screen")
                 else -3 if result.get("exploited_from") or result.get("adopted") else -1)
        key = (trial_id, int(result["step"]), index)
        self.rows[key] = {
            "trial_id": trial_id, "generation": int(cfg.get("generation", 0)),
            "origin": cfg.get("origin"), "prompt_init": cfg.get("prompt_init"),
            "phase_seed": cfg.get("phase_seed"), "resumed": bool(cfg.get("resume_from")),
            "step": int(result["step"]), "val_acc": float(result["val_acc"]),
            "loss": float(result.get("loss", math.nan)), "prompt_text": result.get("prompt_text"),
            "vectors_path": None if result.get("screen") else result.get("vectors_path"),
            "screen": bool(result.get("screen")), "reused": bool(result.get("reused")),
            "projection": bool(result.get("projection")), "evaluations": result.get("evaluations"), "start": result.get("start"),
            "start_text": result.get("start_text"), "step_vectors_path": result.get("step_vectors_path"),
            "loss_vectors_path": None if result.get("screen") else result.get("loss_vectors_path"),
            "exploited_from": result.get("exploited_from"), "lr": cfg.get("lr"),
        }

    def evaluations(self) -> list[dict]:
        return sorted(self.rows.values(), key=lambda r: (r["generation"], r["trial_id"], r["step"], not r["screen"]))


def trial_work(evaluations: list[dict]) -> dict[str, dict]:
    """Per trial, from what it reported: its ``generation``, gradient ``steps`` (its last step) and forward
    ``evaluations`` (the count it says it computed: screened candidates included, a reused start score excluded;
    counted by its rows where it does not say, or where it started from another trial's checkpoint, a PBT exploit,
    whose count continues the donor's). An exploited trial must have reached the exploit's step itself (PBT in
    synchronous mode): its steps are then its last step, as for any other trial."""
    work: dict[str, dict] = {}
    said: dict[str, int] = {}
    own_steps: dict[str, set] = {}
    for e in evaluations:
        t = e["trial_id"]
        w = work.setdefault(t, {"generation": int(e.get("generation", 0)), "steps": 0, "rows": 0, "exploits": []})
        w["steps"] = max(w["steps"], int(e["step"]))
        w["rows"] += 0 if e.get("reused") else 1
        if e.get("exploited_from"):
            w["exploits"].append(int(e["step"]))
        else:
            own_steps.setdefault(t, set()).add(int(e["step"]))
        if e.get("evaluations") is not None:
            said[t] = max(said.get(t, 0), int(e["evaluations"]))
    for t, w in work.items():
        behind = [s for s in w["exploits"] if s not in own_steps.get(t, set())]
        if behind:
            raise AssertionError(f"trial {t} took another trial's checkpoint at step {behind[0]}, which it had not "
                                 "reached itself: its steps cannot be counted by its last step (run PBT with synch=True)")
        w["evaluations"] = w["rows"] if w["exploits"] or t not in said else said[t]
    return work


def worker_span(work: dict[str, dict], workers: int) -> tuple[int, int]:
    """``(steps, evaluations)`` of the busiest of ``workers`` workers when the trials run as Tune runs them: the
    generations one after another (a generation's trials wait for the last one before), each generation's trials
    in the order they were created (trial ids), each taken by the worker that has done least so far; steps and
    evaluations each scheduled this way on their own. One trial per generation puts all of a chain's steps on
    one worker; ``P`` chains on ``P`` workers give each its chain's."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    span = [0, 0]
    for g in sorted({w["generation"] for w in work.values()}):
        trials = [work[t] for t in sorted(work) if work[t]["generation"] == g]
        for i, key in enumerate(("steps", "evaluations")):
            lanes = [0] * workers
            for w in trials:
                lanes[lanes.index(min(lanes))] += w[key]
            span[i] += max(lanes)
    return span[0], span[1]


def check_budget(arm: str, evaluations: list[dict], b: dict) -> dict:
    """Gradient steps and evaluations as the trials reported them (``trial_work``); raises if they are not the
    budget ``b``.

    ``b["kind"] == "compute"``: the steps and evaluations of all trials. ``"workers"``: those of the busiest of
    ``P`` workers (``worker_span``) against one chain's ``G*K`` steps and ``G*E`` evaluations. The PBT arm
    spends every step but evaluates a chain's start once, not at every ``K`` steps (its trials continue), plus
    once after each exploit: its evaluations must not exceed the budget's."""
    work = trial_work(evaluations)
    steps = sum(w["steps"] for w in work.values())
    n_evals = sum(w["evaluations"] for w in work.values())
    span_steps, span_evals = worker_span(work, b["population"])
    if b.get("kind", "compute") == "workers":
        got, want, what = (span_steps, span_evals), (b["worker_steps"], b["worker_evaluations"]), "per worker"
    else:
        got, want, what = (steps, n_evals), (b["gradient_steps"], b["evaluations"]), "in all"
    want = (0 if arm == "llm" else want[0], want[1])
    evals_ok = got[1] <= want[1] if arm == "pbt" else got[1] == want[1]
    if got[0] != want[0] or not evals_ok:
        raise AssertionError(f"arm {arm}: trials reported {got[0]} gradient steps and {got[1]} evaluations {what}; "
                             f"the budget is {want[0]} and {'at most ' if arm == 'pbt' else ''}{want[1]} "
                             f"({len(work)} trials, {b.get('kind', 'compute')} budget)")
    return {"gradient_steps": steps, "n_evaluations": n_evals, "trials": len(work),
            "worker_steps": span_steps, "worker_evaluations": span_evals,
            "exploits": sum(len(w["exploits"]) for w in work.values()),
            "reused_scores": sum(e.get("reused", False) for e in evaluations),
            "screened": sum(e.get("screen", False) for e in evaluations) + sum(
                str(e.get("start") or "").startswith("candidate") for e in evaluations)}


def arm_select(arm: str) -> str:
    """How an arm chooses its final prompt: ``"loss"`` where its design's search does (``select="loss"``),
    else ``"acc"`` (gradient only, LLM only and the first designs)."""
    if arm not in ARM_PRESETS:
        return "acc"
    return "loss" if presets.preset(ARM_PRESETS[arm], steps=8, eval_every=4).get("select") == "loss" else "acc"


def select_best(evaluations: list[dict], rule: str = "acc") -> dict:
    """The arm's final evaluation, with ``"path"``: the vectors file that holds it.

    ``"acc"``: highest validation accuracy, then lower loss, then earliest; a phase saves its best vectors
    whenever it improves under this same order, so the trial's ``vectors_path`` holds exactly this
    evaluation's vectors. ``"loss"``: lowest validation loss, then higher accuracy, then earliest; held in the
    trial's ``loss_vectors_path`` (``keep_lowest_loss``), or in its ``step_vectors_path`` where every step's
    vectors were kept. A screened candidate that lost (no vectors of its own) is never chosen; it scored below
    the start its phase took, which is a candidate here too."""
    usable = [e for e in evaluations if not e.get("screen")]
    if rule == "acc":
        best = max(usable, key=lambda e: (e["val_acc"], -e["loss"], -e["generation"], -e["step"]))
        # a trial that took another's checkpoint (a PBT exploit) keeps its best since then in its vectors file,
        # which may have replaced its best before: its evaluations are found in their own files (the PBT arm
        # keeps every evaluation's vectors)
        if any(e.get("exploited_from") and e["trial_id"] == best["trial_id"] for e in evaluations):
            if not best.get("step_vectors_path"):
                raise ValueError(f"trial {best['trial_id']} took another trial's checkpoint and did not keep each "
                                 "evaluation's vectors (keep_all_vectors): its best cannot be found")
            return {**best, "path": best["step_vectors_path"]}
        return {**best, "path": best.get("vectors_path")}
    if rule != "loss":
        raise ValueError(f"rule must be 'acc' or 'loss', got {rule!r}")
    finite = [e for e in usable if math.isfinite(e["loss"])] or usable
    best = min(finite, key=lambda e: (e["loss"], -e["val_acc"], e["generation"], e["step"]))
    return {**best, "path": best.get("loss_vectors_path") or best.get("step_vectors_path")}


def rescore(run: dict, rule: str, args, cache: dict | None = None) -> bool:
    """A recorded run re-scored on test under another selection rule, from its own recorded evaluations and
    the vectors it kept (``--keep-vectors``): what the run would have reported had its arm chosen by ``rule``
    (the search does not depend on the rule). The earlier score stays in ``test_by_rule``. ``cache``: test
    accuracies by vectors file that ``python -m ray_llm_search.selection`` already computed (its
    ``selection_cache.json``), used instead of evaluating again and given what is evaluated here. False (and the run untouched) where the chosen
    evaluation's vectors were not kept."""
    from trainables.text_prompt import evaluate_prompt

    old = run.get("select", "acc")
    chosen = select_best(run["evaluations"], rule)
    path = chosen["path"]
    if cache and path in cache:
        acc, text = cache[path], chosen.get("prompt_text")
    elif path and os.path.isfile(path):
        run_args = argparse.Namespace(**{**vars(args), **run.get("args", {})})
        test = evaluate_prompt(base_config(run_args, run["dataset"], run["seed"]), vectors_path=path)
        acc, text = test["acc"], test["prompt_text"]
        if cache is not None:
            cache[path] = acc
    else:
        return False
    run.setdefault("test_by_rule", {})[old] = run["test_acc"]
    run["test_by_rule"][rule] = acc
    run.update(test_acc=acc, best_val_acc=chosen["val_acc"], best_prompt=text, best_generation=chosen["generation"],
               best_origin=chosen["origin"], select=rule, rescored=True)
    return True


def best_so_far(evaluations: list[dict], b: dict, axis: str) -> list[tuple[float, float]]:
    """Best validation accuracy so far, as ``(x, value)`` points.

    Phases of a generation run side by side, so an evaluation at step ``s`` of generation ``g`` lies at
    ``x = g*P*K + P*s`` gradient steps (``axis="steps"``) or ``g*P*E + P*(s/k + 1)`` evaluations
    (``axis="evals"``). The LLM-only arm's generation ``g`` (0 steps) is placed where the other arms'
    generation ``g`` starts (``g*P*K``) and, on the evaluation axis, where it ends."""
    p, k, e, every = b["population"], b["steps_per_phase"], b["evals_per_phase"], b["eval_every"]
    width = p * k
    zero_step = all(q["step"] == 0 for q in evaluations)
    gen_steps: dict[int, int] = {}
    for r in evaluations:
        gen_steps[r["generation"]] = max(gen_steps.get(r["generation"], 0), r["step"])
    scheduled = any(r.get("screen") or r.get("reused") for r in evaluations) or (
        len(gen_steps) > 1 and gen_steps.get(0) == 0 and not zero_step)
    points = []
    if scheduled:  # generations of different lengths: place points by the steps and evaluations before them
        offset_steps = {g: p * sum(gen_steps[h] for h in gen_steps if h < g) for g in gen_steps}
        spent = 0
        for r in evaluations:
            spent += 0 if r.get("reused") else 1
            x = offset_steps[r["generation"]] + p * r["step"] if axis == "steps" else spent
            points.append((x, r["val_acc"]))
    else:
        for r in evaluations:
            g, s = r["generation"], r["step"]
            if axis == "steps":
                x = g * width + p * s
            else:
                x = (g + 1) * p * e if zero_step else g * p * e + p * (s // every + 1)
            points.append((x, r["val_acc"]))
    points.sort()
    curve, best = [], -math.inf
    for x, v in points:
        best = max(best, v)
        if curve and curve[-1][0] == x:
            curve[-1] = (x, best)
        else:
            curve.append((x, best))
    end = b["gradient_steps"] if axis == "steps" else b["evaluations"]
    if curve and curve[-1][0] < end:
        curve.append((end, curve[-1][1]))
    return curve


def curve_budget(b: dict) -> dict:
    """The budget ``best_so_far`` places a run's evaluations in: ``b`` itself (steps and evaluations of all
    trials), or under the workers budget one worker's (``G*K`` steps, ``G*E`` evaluations; the trials of a
    generation side by side on their workers)."""
    if b.get("kind", "compute") != "workers":
        return b
    return {**b, "population": 1, "gradient_steps": b["worker_steps"], "evaluations": b["worker_evaluations"]}


def seed_prompt_test(args, dataset: str, seed: int) -> dict:
    from trainables.text_prompt import evaluate_prompt

    config = base_config(args, dataset, seed)
    out = evaluate_prompt(config, text=task_of(args, dataset)[1][0])
    return {"dataset": dataset, "seed": seed, "arm": "seed prompt", "test_acc": out["acc"], "test_n": out["n"]}


# -- outputs -------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_table(results: dict, path: str) -> str:
    """The tables of ``results`` (written to ``path``), one set per budget: runs made at different budgets are
    never in one table, and never paired (``budget_kind``)."""
    runs = results["runs"]
    kinds = [k for k in BUDGETS if any(budget_kind(r) == k for r in runs)]
    if kinds in ([], ["compute"]):
        lines = _tables(runs, results.get("seed_prompt", []))
    else:
        lines = []
        for kind in kinds:
            lines += [f"Budget: {BUDGET_LABELS[kind]} (`--budget {kind}`).", "",
                      *_tables([r for r in runs if budget_kind(r) == kind], results.get("seed_prompt", []),
                               per_worker=kind == "workers"), ""]
        lines = lines[:-1]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def _tables(runs: list[dict], seed_prompt: list[dict], per_worker: bool = False) -> list[str]:
    """The summary, per-seed and paired tables of runs made at one budget; ``per_worker``: the steps and
    evaluations columns also give the busiest worker's (the workers budget)."""
    unit = " (per worker)" if per_worker else ""
    lines = [f"| dataset | arm | seeds | test acc (mean ± std) | best val acc | gradient steps / run{unit} | "
             f"evaluations / run{unit} | LLM calls / run | LLM tokens / run | phases from LLM / pool | "
             "candidates adopted / screened (all runs) | search wall / run (s) | wins (test, per seed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in sorted({r["dataset"] for r in runs}):
        rows = [r for r in runs if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in rows})
        by = {(r["arm"], r["seed"]): r for r in rows}
        baseline = [r for r in seed_prompt if r["dataset"] == dataset]
        if baseline:
            lines.append(f"| {dataset} | seed prompt as text, no search | {len(baseline)} | "
                         f"{_mean_std([r['test_acc'] for r in baseline])} | - | 0 | 0 | 0 | 0 | - | - | - | - |")
        for arm in ARMS:
            mine = [by[(arm, s)] for s in seeds if (arm, s) in by]
            if not mine:
                continue
            wins = sum(1 for r in mine if all(r["test_acc"] >= by[(a, r["seed"])]["test_acc"]
                                             for a in ARMS if (a, r["seed"]) in by))
            lines.append(
                f"| {dataset} | {ARM_LABELS[arm]} | {len(mine)} | {_mean_std([r['test_acc'] for r in mine])} | "
                f"{_mean_std([r['best_val_acc'] for r in mine])} | {_count(mine[0], 'gradient_steps', per_worker)} | "
                f"{_count(mine[0], 'n_evaluations', per_worker)} | {statistics.mean(r['llm_calls'] for r in mine):.0f} | "
                f"{statistics.mean(r['llm_tokens'] for r in mine):.0f} | "
                f"{statistics.mean(_starts(r, 'llm') for r in mine):.1f} / {statistics.mean(_starts(r, 'pool') for r in mine):.1f} | "
                f"{sum(adopted(r) for r in mine)} / {sum(r.get('screened', 0) for r in mine)} | "
                f"{statistics.mean(r['search_wall_s'] for r in mine):.0f} | {wins}/{len(mine)} |")
    lines += ["", "Per seed: test accuracy (best validation accuracy) and the selected prompt's generation.", "",
              "| dataset | seed | test n | seed prompt | " + " | ".join(ARM_LABELS[a] for a in ARMS) + " |",
              "|---|---|---|---|" + "---|" * len(ARMS)]
    for dataset in sorted({r["dataset"] for r in runs}):
        by = {(r["arm"], r["seed"]): r for r in runs if r["dataset"] == dataset}
        base = {r["seed"]: r for r in seed_prompt if r["dataset"] == dataset}
        for seed in sorted({s for _, s in by}):
            cells = [f"{by[(a, seed)]['test_acc']:.3f} ({by[(a, seed)]['best_val_acc']:.3f}), gen "
                     f"{by[(a, seed)]['best_generation']}" if (a, seed) in by else "-" for a in ARMS]
            test_n = next(r["test_n"] for (a, s), r in by.items() if s == seed)
            first = f"{base[seed]['test_acc']:.3f}" if seed in base else "-"
            lines.append(f"| {dataset} | {seed} | {test_n} | {first} | " + " | ".join(cells) + " |")
    lines += ["", *paired_table(runs)]
    return lines


def _count(run: dict, key: str, per_worker: bool) -> str:
    """A run's steps or evaluations in all, with the busiest worker's where ``per_worker``."""
    if not per_worker:
        return str(run[key])
    return f"{run[key]} ({run['worker_steps' if key == 'gradient_steps' else 'worker_evaluations']})"


RESULTS_BEGIN, RESULTS_END = "<!-- compare:begin -->", "<!-- compare:end -->"


def regenerate_command(results: dict, out: str, results_md: str, prog: str) -> str:
    """One command that runs every (dataset, seed, arm) recorded in ``results`` (those already recorded are
    skipped: it finishes an interrupted study, and on a fresh ``out`` redoes it) and writes the tables again."""
    commands = []
    for kind in BUDGETS:  # one command per budget (runs of the compute budget alone: the command it always was)
        runs = [r for r in results["runs"] if budget_kind(r) == kind]
        if not runs:
            continue
        datasets = sorted({r["dataset"] for r in runs})
        seeds = sorted({r["seed"] for r in runs})
        arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
        b = runs[0].get("budget", {})
        backend = "--backend tune" if "pbt" in arms else "--backend inline --jobs 2"  # PBT needs real Tune trials
        shape = ("" if kind == "compute" else f"--budget {kind} --population {b['population']} --generations "
                 f"{b['generations']} --steps {b['steps_per_phase']} --eval-every {b['eval_every']} ")
        commands.append(f"{prog} --datasets {' '.join(datasets)} --seeds {' '.join(map(str, seeds))} --arms "
                        f"{' '.join(arms)} {shape}{backend} --keep-vectors --out {out} --results-md {results_md}")
    return "\n".join(commands)


def write_results_md(path: str, table: str, results: dict, command: str) -> None:
    """Put ``table`` (what ``write_table`` wrote) between the markers of the Markdown file ``path``, with
    ``command``, the one that regenerates it; the text outside the markers is kept (markers are added after
    the first line where the file has none; a missing file is created)."""
    block = [RESULTS_BEGIN, "",
             f"The tables below are generated ({len(results['runs'])} runs); this command regenerates them, running "
             "whatever its results file lacks:", "", "```bash", command, "```", "",
             table.rstrip("\n"), "", RESULTS_END]
    text = open(path, encoding="utf-8").read() if os.path.isfile(path) else "# Results\n"
    if RESULTS_BEGIN in text and RESULTS_END in text.split(RESULTS_BEGIN, 1)[1]:
        before, rest = text.split(RESULTS_BEGIN, 1)
        after = rest.split(RESULTS_END, 1)[1]
    else:
        first, _, rest = text.partition("\n")
        before, after = first + "\n\n", "\n\n" + rest.lstrip("\n")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(before + "\n".join(block) + after)
    os.replace(path + ".tmp", path)


def paired(values: list[float]) -> str:
    """``mean ± half-width`` of a 95% t-interval over seeds (a single seed: the value alone; ``stats.mean_ci``)."""
    return mean_ci(values)


def paired_table(runs: list[dict]) -> list[str]:
    """Test accuracy of each arm minus gradient only's, seed by seed (same splits, same generation 0), with a
    95% interval; and the screened LLM arm minus its no-LLM control. The last row averages the datasets."""
    if len({budget_kind(r) for r in runs}) > 1:
        raise ValueError("paired_table: runs made at different budgets are never paired; pass one budget's runs")
    pairs = [(a, "gradient") for a in ARMS if a != "gradient"] + list(CONTROLS) + list(ABLATIONS) + list(PEERS)
    by = {(r["dataset"], r["arm"], r["seed"]): r["test_acc"] for r in runs}
    datasets = sorted({r["dataset"] for r in runs})
    present = [(a, b) for a, b in pairs if any((d, a, s) in by and (d, b, s) in by for d, _, s in by)]
    if not present:
        return []
    head = ["| dataset | " + " | ".join(f"{ARM_LABELS[a]} − {ARM_LABELS[b]}" for a, b in present) + " |",
            "|---|" + "---|" * len(present)]
    rows, means = [], {p: [] for p in present}
    for d in datasets:
        cells = []
        for a, b in present:
            seeds = sorted(s for dd, aa, s in by if dd == d and aa == a and (d, b, s) in by)
            diffs = [by[(d, a, s)] - by[(d, b, s)] for s in seeds]
            cells.append(f"{paired(diffs)} (n={len(diffs)})" if diffs else "-")
            if diffs:
                means[(a, b)].append(statistics.mean(diffs))
        rows.append(f"| {d} | " + " | ".join(cells) + " |")
    rows.append("| mean over datasets | " + " | ".join(
        f"{statistics.mean(means[p]):+.3f} ({len(means[p])} sets)" if means[p] else "-" for p in present) + " |")
    return ["Paired test-accuracy differences per seed (mean ± 95% t-interval over seeds):", "", *head, *rows]


def adopted(run: dict) -> int:
    """Screened candidates a chain took in a run (its phase started from ``candidate i``)."""
    return sum(1 for e in run["evaluations"] if str(e.get("start") or "").startswith("candidate"))


def _starts(run: dict, origin: str) -> int:
    """Phases of a run that started from an LLM candidate (``llm``) or a pool fill-in (``pool``)."""
    return len({e["trial_id"] for e in run["evaluations"] if e["origin"] == origin})


def write_plots(results: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {"gradient": "tab:blue", "llm": "tab:orange", "llm+gradient": "tab:green", "screened": "tab:red",
              "screened-perturb": "tab:purple", "late-mix": "tab:brown", "late-mix-perturb": "tab:gray",
              "perturb+gradient": "tab:olive", "authors": "tab:cyan", "authors-perturb": "tab:pink",
              "screened-paired": "darkred", "screened-perturb-paired": "indigo", "late-text": "goldenrod",
              "authors-faithful": "teal", "authors-paired": "navy", "authors-perturb-paired": "salmon",
              "text-first": "darkgreen", "text-first-perturb": "lightgreen", "halving": "darkviolet",
              "halving-perturb": "plum", "descent-shown": "darkorange", "descent-shown-perturb": "navajowhite",
              "pbt": "black"}
    if set(ARMS) - set(colors):
        raise RuntimeError(f"compare.write_plots: no colour for {sorted(set(ARMS) - set(colors))}")
    for kind, dataset in sorted({(budget_kind(r), r["dataset"]) for r in results["runs"]}):
        # one figure per budget (curve_budget: one worker's steps and evaluations under the workers budget)
        runs = [r for r in results["runs"] if r["dataset"] == dataset and budget_kind(r) == kind]
        per = " per worker" if kind == "workers" else ""
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, label in ((axes[0], "curve_steps", f"gradient steps spent{per} (phases of a generation side by side)"),
                               (axes[1], "curve_evals", f"validation evaluations{per}")):
            for arm in ARMS:
                mine = [r for r in runs if r["arm"] == arm]
                if not mine:
                    continue
                xs = sorted({x for r in mine for x, _ in r[key]})
                ys = [[_value_at(r[key], x) for x in xs] for r in mine]
                mean = [statistics.mean(col) for col in zip(*ys, strict=True)]
                std = [statistics.pstdev(col) for col in zip(*ys, strict=True)]
                ax.step(xs, mean, where="post", color=colors[arm], label=f"{ARM_LABELS[arm]} (n={len(mine)})")
                ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                                [m + s for m, s in zip(mean, std, strict=True)], step="post", color=colors[arm],
                                alpha=0.15)
            ax.set_xlabel(label)
            ax.set_ylabel("best-so-far validation accuracy")
            ax.grid(alpha=0.3)
        axes[0].set_title(f"{dataset}: mean ± std over seeds (LLM only: 0 steps, at its round)", fontsize=9)
        axes[1].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = os.path.join(out, f"curves_{dataset}{'' if kind == 'compute' else '_' + kind}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _value_at(curve: list, x: float) -> float:
    value = curve[0][1]
    for cx, v in curve:
        if cx > x:
            break
        value = v
    return value


def write_tensorboard(run: dict, out: str) -> None:
    from tensorboardX import SummaryWriter

    kind = budget_kind(run)  # runs of another budget than equal compute: a folder of their own
    folder = os.path.join(out, "tensorboard", run["dataset"], f"{run['arm'].replace('+', '_')}_seed{run['seed']}"
                          + ("" if kind == "compute" else f"_{kind}"))
    writer = SummaryWriter(folder)
    for x, v in run["curve_steps"]:
        writer.add_scalar("best_so_far_val_acc/by_gradient_steps", v, int(x))
    for x, v in run["curve_evals"]:
        writer.add_scalar("best_so_far_val_acc/by_evaluations", v, int(x))
    writer.add_scalar("test_acc", run["test_acc"], 0)
    writer.add_text("best_prompt", run["best_prompt"] or "", 0)
    writer.close()


def load_results(path: str) -> dict:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {"runs": [], "seed_prompt": [], "commands": []}


def merge_results(results: dict, paths: list[str]) -> dict:
    """Add the runs of other invocations' ``results.json`` files (each run keyed by task, seed, arm and budget
    kind; a run of a later file replaces the same key's), their seed-prompt rows and commands; returns counts.
    Runs of one budget kind whose numbers differ (another ``P``, ``G``, ``K`` or ``E``) are refused: they do not
    pair."""
    added = replaced = 0

    def budget_of(run: dict) -> str:
        return json.dumps({"kind": "compute", **run["budget"]}, sort_keys=True)

    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"--merge: no results file at {path!r}")
        other = load_results(path)
        for kind in BUDGETS:
            budgets = {budget_of(r) for r in results["runs"] + other["runs"] if budget_kind(r) == kind}
            if len(budgets) > 1:
                raise ValueError(f"--merge: {path} holds runs at another budget than the results it would join "
                                 f"({sorted(budgets)})")
        for run in other["runs"]:
            key = (run["dataset"], run["seed"], run["arm"], budget_kind(run))
            before = len(results["runs"])
            results["runs"] = [r for r in results["runs"]
                               if (r["dataset"], r["seed"], r["arm"], budget_kind(r)) != key]
            replaced += before - len(results["runs"])
            added += before == len(results["runs"])
            results["runs"].append(run)
        have = {(r["dataset"], r["seed"]) for r in results["seed_prompt"]}
        results["seed_prompt"] += [r for r in other.get("seed_prompt", []) if (r["dataset"], r["seed"]) not in have]
        results.setdefault("commands", []).extend(c for c in other.get("commands", [])
                                                  if c not in results["commands"])
    return {"added": added, "replaced": replaced}


def save_results(results: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


# -- main ------------------------------------------------------------------------------------------------------


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """The tasks of ``--task-file`` and ``--data`` into ``args.user_tasks`` and ``args.datasets``; combinations
    that cannot work end the command with a message (``p.error``)."""
    try:
        tasks = [load_task_file(path) for path in args.task_file]
        flagged = task_from_flags(args)
    except ValueError as e:
        p.error(str(e))
    tasks += [flagged] if flagged else []
    args.user_tasks = {}
    for task in tasks:
        if task["name"] in args.user_tasks:
            p.error(f"two tasks are named {task['name']!r}; give each task its own name")
        args.user_tasks[task["name"]] = task
    args.datasets = list(args.datasets or ([] if tasks else ["sst2"])) + list(args.user_tasks)
    if "pbt" in args.arms and not args.replot:
        if args.backend != "tune":
            p.error("--arms pbt runs Tune's PopulationBasedTraining, which needs real Tune trials: use --backend tune "
                    "(the default), not --backend inline")
        if args.generations < 2:
            p.error(f"--arms pbt needs --generations 2 or more (PBT exploits between the {args.steps}-step intervals of "
                    f"each chain's generations x steps), got --generations {args.generations}")
    if args.budget == "workers" and not args.replot:
        for arm in args.arms:  # a one-chain design gets one worker's steps: can its schedule fit them?
            if arm in ARM_PRESETS:
                try:
                    workers = design_population(arm, args)
                    presets.preset(ARM_PRESETS[arm], population=workers, generations=args.generations,
                                   steps=args.steps, eval_every=args.eval_every)
                except ValueError as e:
                    p.error(f"--budget workers: arm {arm} gets {args.generations * args.steps} steps for each trial it "
                            f"runs at once, which its design cannot spend ({e}); raise --generations")
    if args.head == "linear" and not args.replot:
        # A linear head is trained with the prompt: evaluated without gradient steps it is its random init.
        if "llm" in args.arms:
            p.error("--head linear: the LLM-only arm evaluates prompts without gradient steps, so its linear head "
                    "would stay untrained; use --arms gradient llm+gradient (or --head label_names)")
        if not args.no_seed_prompt:
            p.error("--head linear: the seed prompt's test row would use an untrained linear head; add "
                    "--no-seed-prompt")


def parse_args(argv=None, default_out: str | None = None, prog: str | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=None, choices=sorted(TASKS),
                   help="shared benchmarks (presets); default sst2 when no task of your own is given")
    p.add_argument("--task-file", nargs="+", default=[], help="your task(s): JSON or YAML files (see above)")
    p.add_argument("--data", default=None, help="your task's data file or folder (instead of a task file)")
    p.add_argument("--text-column", default=None, help="with --data: the text column (default 'text')")
    p.add_argument("--label-column", default=None, help="with --data: the label column (default 'label')")
    p.add_argument("--task-description", default=None, help="with --data: the task, as the LLM should read it")
    p.add_argument("--seed-prompts", nargs="+", default=None, help="with --data: the starting prompts")
    p.add_argument("--name", default=None, help="with --data: the task's name in the results (default: file name)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="each seed fixes the splits and phases")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    p.add_argument("--candidate-start", default="text", choices=["text", "mix"],
                   help="screened arms: a winning candidate starts from its embedding, or mixed with the chain's")
    p.add_argument("--screen-margin", type=float, default=0,
                   help="screened arms: validation examples a candidate must gain over the chain to replace it")
    p.add_argument("--backend", default="tune", choices=["tune", "inline"],
                   help="tune: real tune.run; inline: the same trials one after another in one process (fast)")
    p.add_argument("--budget", default="compute", choices=list(BUDGETS),
                   help="compute: every arm G*P*K steps and G*P*E evaluations in all; workers: P workers, each arm at "
                        "most P trials at once and each worker one chain's G*K steps and G*E evaluations (equal "
                        "wall-clock on a cluster: a one-chain design gets G*K steps in all)")
    p.add_argument("--keep-vectors", action="store_true",
                   help="save the vectors of every evaluation (to study how the final prompt is chosen)")
    p.add_argument("--jobs", type=int, default=1, help="inline backend: runs side by side in this many processes")
    add_search_flags(p, steps=8, eval_every=4, seed=None)  # P, G, elites (of the restarts arms), K, eval every
    p.add_argument("--shots", type=int, default=16, help="training examples per class")
    p.add_argument("--val-shots", type=int, default=None, help="validation examples per class (default: shots)")
    p.add_argument("--test-size", type=int, default=None,
                   help="cap on test examples (default: 1000 for sst2, else the preset's: all, or 1000 for ag_news)")
    p.add_argument("--data-root", default=None, help="shared/data folder (default: beside the checkout)")
    p.add_argument("--model", default=None, help="backbone: None = all-MiniLM-L6-v2 offline; or e.g. roberta-large")
    p.add_argument("--head", default="label_names", choices=["label_names", "linear"])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prompt-length", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="tokens per input (default: 128 for rte, else 64)")
    p.add_argument("--max-prompt-words", type=int, default=12)
    p.add_argument("--tell-length", action="store_true",
                   help="tell the mentor that a prompt keeps --prompt-length tokens and ask for about that many "
                        "words (LLMSearch(prompt_tokens=...))")
    add_llm_flags(p, dtype="float32")  # the precision every recorded run's mentor had
    p.add_argument("--cpus", type=int, default=None, help="Ray CPUs (default: all); one per trial")
    p.add_argument("--warm", action="store_true",
                   help="tune backend: start each arm's trial processes while its LLM loads (ray_llm_search.warm, "
                        "experimental; off by default)")
    p.add_argument("--cpu", action="store_true", help="force CPU even with a GPU")
    p.add_argument("--out", default=default_out or "compare_results", help="results.json, the table, the plots")
    p.add_argument("--storage", default=os.path.expanduser("~/ray_results/compare"),
                   help="Tune's experiment folders (per-trial logs, checkpoints, the searcher's TensorBoard)")
    p.add_argument("--force", action="store_true", help="rerun runs already in results.json")
    p.add_argument("--no-seed-prompt", action="store_true", help="skip the seed prompt's test accuracy row")
    p.add_argument("--replot", action="store_true", help="only rewrite the table and plots from results.json")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="add the runs of other invocations' results.json files (e.g. runs made side by side in other "
                        "--out folders) to --out's, a run of a later file replacing the same task, seed and arm; "
                        "then rewrite the table and plots; run nothing")
    p.add_argument("--results-md", default=None,
                   help="also write the tables into this Markdown file, between its lines <!-- compare:begin --> "
                        "and <!-- compare:end --> (added after its title where missing); the rest is kept")
    p.add_argument("--rescore-only", action="store_true",
                   help="only re-score recorded runs whose arm now chooses its final prompt by another rule (from "
                        "their kept vectors); run nothing new")
    p.add_argument("--verbose", type=int, default=0)
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def ray_init_options(args) -> dict:
    """Extra ``ray.init`` arguments of the tune backend: none, unless ``--warm`` asks that worker processes
    import the trainable before they take work (``ray_llm_search.warm``, experimental)."""
    if not getattr(args, "warm", False):
        return {}
    from ray_llm_search import warm

    return warm.init_options("trainables.text_prompt")


def main(argv=None, llm_factory=None, default_out: str | None = None,
         prog: str = "python -m ray_llm_search.compare") -> dict:
    """Run what the arguments ask (see the module docstring); ``llm_factory(args, seed)`` replaces the LLM
    (tests use a scripted one). Returns the results, the table's text and the plots' paths."""
    args = parse_args(argv, default_out=default_out, prog=prog)
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = load_results(results_path)
    if args.merge:
        counts = merge_results(results, args.merge)
        save_results(results, results_path)
        print(f"merged {', '.join(args.merge)}: {counts['added']} runs added, {counts['replaced']} replaced")
    elif not args.replot:
        import ray

        results.setdefault("commands", []).append(f"{prog} " + " ".join(sys.argv[1:] if argv is None else argv))
        if args.backend == "tune":  # the inline backend needs no Ray cluster
            ray.init(num_cpus=args.cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True, **ray_init_options(args))
        print(f"budget per arm and seed: {budget(args)}")
        units = _pending_units(args, results, results_path)
        _run_units(args, units, results, results_path, llm_factory)
        if ray.is_initialized():
            ray.shutdown()
    table = write_table(results, os.path.join(args.out, "RESULTS_TABLE.md"))
    print(table)
    if args.results_md:
        write_results_md(args.results_md, table, results, regenerate_command(results, args.out, args.results_md, prog))
    try:
        plots = write_plots(results, args.out)
        print("plots: " + ", ".join(plots))
    except ImportError:
        plots = []
        print("matplotlib is not installed: no plot (pip install matplotlib, then --replot)")
    return {"results": results, "table": table, "plots": plots}


def _pending_units(args, results: dict, results_path: str) -> list[tuple[str, int, str]]:
    """The (dataset, seed, arm) runs still to do; on the way, each seed prompt's test score is recorded and
    recorded runs whose arm now chooses its final prompt by another rule are re-scored from their vectors."""
    b = budget(args)
    cache_path = os.path.join(args.out, "selection_cache.json")  # test scores the selection study computed
    cache = json.load(open(cache_path)) if os.path.isfile(cache_path) else {}
    units = []
    for dataset in args.datasets:
        for seed in args.seeds:
            if not args.no_seed_prompt and not args.rescore_only and not any(
                    r["dataset"] == dataset and r["seed"] == seed for r in results["seed_prompt"]):
                results["seed_prompt"].append(seed_prompt_test(args, dataset, seed))
                save_results(results, results_path)
            for arm in args.arms:
                done = [r for r in results["runs"] if (r["dataset"], r["seed"], r["arm"]) == (dataset, seed, arm)
                        and budget_kind(r) == b["kind"]]
                if done and not args.force:
                    check_recorded(done[0], args, b)
                    rule = arm_select(arm)
                    if done[0].get("select", "acc") == rule:
                        continue
                    if rescore(done[0], rule, args, cache):  # the arm now chooses its final prompt otherwise
                        print(f"{dataset} seed {seed} {arm}: recorded run re-scored by {rule}: test "
                              f"{done[0]['test_by_rule']}", flush=True)
                        save_results(results, results_path)
                        with open(cache_path, "w") as f:
                            json.dump(cache, f)
                        continue
                    print(f"{dataset} seed {seed} {arm}: recorded by {done[0].get('select', 'acc')}, its "
                          f"vectors not kept: run again to choose by {rule}", flush=True)
                if not args.rescore_only:
                    units.append((dataset, seed, arm))
    return units


def _run_units(args, units: list[tuple[str, int, str]], results: dict, results_path: str, llm_factory) -> None:
    """Run each unit (in ``--jobs`` processes with the inline backend), saving every run as it ends."""
    storage = os.path.abspath(os.path.expanduser(args.storage))

    def keep(run: dict) -> None:
        dataset, seed, arm, kind = run["dataset"], run["seed"], run["arm"], budget_kind(run)
        run["args"] = {k: v for k, v in vars(args).items() if k not in ("force", "replot", "rescore_only", "verbose", "jobs")}
        run["args"].update({k: setting(args, dataset, k) for k in GLOBAL_DEFAULTS})
        results["runs"] = [r for r in results["runs"]
                           if (r["dataset"], r["seed"], r["arm"], budget_kind(r)) != (dataset, seed, arm, kind)]
        results["runs"].append(run)
        save_results(results, results_path)
        write_tensorboard(run, args.out)
        per_worker = (f" (per worker {run['worker_steps']} / {run['worker_evaluations']}, {run['exploits']} exploits)"
                      if kind == "workers" or arm == "pbt" else "")
        print(f"{dataset} seed {seed} {arm:>16}: test {run['test_acc']:.3f}  val {run['best_val_acc']:.3f}  "
              f"steps {run['gradient_steps']}  evals {run['n_evaluations']}{per_worker}  LLM calls {run['llm_calls']}  "
              f"{run['search_wall_s']:.0f}s  \"{run['best_prompt']}\"", flush=True)

    if args.jobs > 1 and args.backend == "inline" and llm_factory is None:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_one_thread) as pool:
            futures = [pool.submit(run_arm, args, d, s, a, storage) for d, s, a in units]
            for future in concurrent.futures.as_completed(futures):
                keep(future.result())
    else:
        # inline runs compute with one torch thread whatever --jobs is: a thread count changes floating point,
        # and runs recorded with --jobs 2 must pair with runs made one at a time
        threads = _one_thread() if args.backend == "inline" else None
        try:
            for dataset, seed, arm in units:
                keep(run_arm(args, dataset, seed, arm, storage, llm_factory))
        finally:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)


def _one_thread() -> int:
    """One torch thread in this process; returns the count it had."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


if __name__ == "__main__":
    main()
