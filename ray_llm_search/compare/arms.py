"""The comparison's arms: their names (each design's arm is named after its preset, ``<preset>-perturb`` its
no-LLM twin; the names of earlier results are aliases), labels, the pairs the tables report, and the searcher and
LLM each arm runs at the budget of gradient chains."""

from __future__ import annotations

import os
import random

from ray.tune.search import Searcher

from ray_llm_search import presets
from ray_llm_search.compare.accounting import budget
from ray_llm_search.compare.gradient_only import GradientChains
from ray_llm_search.flags import llm_from_flags, llm_label

ARMS = ("gradient", "llm", "restarts", "restarts-perturb", "chains-screened", "chains-screened-perturb", "chains-paired",
        "chains-paired-perturb", "late-mix", "late-mix-perturb", "late-mix-text", "authors", "authors-perturb",
        "authors-faithful", "authors-paired", "authors-paired-perturb", "text-first", "text-first-perturb", "halving",
        "halving-perturb", "descent-shown", "descent-shown-perturb", "pbt")


# The arms' earlier names (before they were named after their presets): still accepted by --arms, and the runs
# recorded under them in results.json files are read under the names above (canonical_arm).
ARM_ALIASES = {"llm+gradient": "restarts", "perturb+gradient": "restarts-perturb", "screened": "chains-screened",
               "screened-perturb": "chains-screened-perturb", "screened-paired": "chains-paired",
               "screened-perturb-paired": "chains-paired-perturb", "authors-perturb-paired": "authors-paired-perturb",
               "late-text": "late-mix-text"}


def canonical_arm(name: str) -> str:
    """An arm's name now: ``name`` itself, or the arm an earlier name (``ARM_ALIASES``) stands for."""
    return ARM_ALIASES.get(name, name)


ARM_LABELS = {"gradient": "gradient only", "llm": "LLM only (OPRO-style)", "restarts": "LLM + gradient (LLMSearch, restarts)",
              "chains-screened": "chains + screened LLM starts", "chains-screened-perturb": "chains + screened perturbed starts (no LLM)",
              "late-mix": "chains + late warm LLM restarts",
              "late-mix-perturb": "chains + late warm perturbed restarts (no LLM)",
              "late-mix-text": "chains + late LLM restarts from text",
              "restarts-perturb": "restarts without an LLM (LLMSearch, perturbed texts)",
              "chains-paired": "chains + LLM starts screened by a paired test",
              "chains-paired-perturb": "chains + perturbed starts screened by a paired test (no LLM)",
              "authors": "authors' regime (1 chain, 3 screened LLM rounds, long descent)",
              "authors-perturb": "authors' regime, perturbed texts (no LLM)",
              "authors-faithful": "authors' regime, mentor shown text scores",
              "authors-paired": "LLMSearch default: authors' regime, LLM candidates adopted on a paired test",
              "authors-paired-perturb": "authors' regime, perturbed texts adopted on a paired test (no LLM)",
              "text-first": "3 LLM rounds on text (text against text), then one descent",
              "text-first-perturb": "3 rounds of perturbed texts on text, then one descent (no LLM)",
              "halving": "LLM starts as lineages, the best kept after descent (successive halving)",
              "halving-perturb": "perturbed starts as lineages, the best kept after descent (no LLM)",
              "descent-shown": "seed chains descend, the LLM shown what descent did; its starts as lineages",
              "descent-shown-perturb": "seed chains descend, perturbed starts as lineages (no LLM)",
              "pbt": "Tune's PopulationBasedTraining over P gradient chains (no LLM)"}


# The arms in which new starts are screened: arm -> (where candidates come from, when they are screened, how
# a winning candidate starts: None = --candidate-start, the test it must pass). "early": generation 0 scores
# the seed prompts as text and every chain screens candidates before its first step; "late": the chains
# descend one generation first, then screen candidates against what they have reached; "authors": one chain
# (authors_schedule).
SCREENED_ARMS = {"chains-screened": ("llm", "early", None, "gain"), "chains-screened-perturb": ("perturb", "early", None, "gain"),
                 "chains-paired": ("llm", "early", None, "paired"),
                 "chains-paired-perturb": ("perturb", "early", None, "paired"),
                 "late-mix": ("llm", "late", "mix", "gain"), "late-mix-perturb": ("perturb", "late", "mix", "gain"),
                 "late-mix-text": ("llm", "late", "text", "gain"),
                 "authors": ("llm", "authors", "text", "gain"), "authors-perturb": ("perturb", "authors", "text", "gain"),
                 "authors-faithful": ("llm", "authors", "text", "gain"),
                 "authors-paired": ("llm", "authors", "text", "paired"),
                 "authors-paired-perturb": ("perturb", "authors", "text", "paired"),
                 "text-first": ("llm", "text-first", "text", "gain"),
                 "text-first-perturb": ("perturb", "text-first", "text", "gain"),
                 "halving": ("llm", "halving", "text", "gain"), "halving-perturb": ("perturb", "halving", "text", "gain"),
                 "descent-shown": ("llm", "descent-shown", "text", "gain"),
                 "descent-shown-perturb": ("perturb", "descent-shown", "text", "gain")}


# The preset (ray_llm_search.presets) each screened arm runs; its table entry above says where candidates
# come from and how a winner starts.
ARM_PRESETS = {"chains-screened": "chains-screened", "chains-screened-perturb": "chains-screened", "chains-paired": "chains-paired",
               "chains-paired-perturb": "chains-paired", "late-mix": "late-mix", "late-mix-perturb": "late-mix",
               "late-mix-text": "late-mix", "authors": "authors", "authors-perturb": "authors",
               "authors-faithful": "authors-faithful", "authors-paired": "authors-paired",
               "authors-paired-perturb": "authors-paired", "text-first": "text-first",
               "text-first-perturb": "text-first", "halving": "halving", "halving-perturb": "halving",
               "descent-shown": "descent-shown", "descent-shown-perturb": "descent-shown"}


# Arms whose mentor is shown texts with what they score as text (LLMSearch(mentor_scores="text")), each a
# copy of the arm named beside it with the projections' evaluations taken from its screening.
FAITHFUL_ARMS = {"authors-faithful": "authors"}


# What the LLM adds: each LLM arm minus its no-LLM control (the same allocation, perturbed texts).
CONTROLS = (("restarts", "restarts-perturb"), ("chains-screened", "chains-screened-perturb"),
            ("chains-paired", "chains-paired-perturb"), ("late-mix", "late-mix-perturb"), ("authors", "authors-perturb"),
            ("authors-faithful", "authors-perturb"), ("authors-paired", "authors-paired-perturb"),
            ("text-first", "text-first-perturb"), ("halving", "halving-perturb"),
            ("descent-shown", "descent-shown-perturb"))


# Ablations: an arm minus the same arm with one thing changed (the mentor shown vector scores; candidates
# adopted on any gain instead of a paired test; a warm restart instead of a restart from the text).
ABLATIONS = tuple((a, b) for a, b in FAITHFUL_ARMS.items()) + (("authors-paired", "authors"), ("late-mix", "late-mix-text"))


# LLMSearch's default against the peer a Ray user would pick without it (Tune's PBT over the same chains).
PEERS = (("authors-paired", "pbt"), ("authors-paired-perturb", "pbt"))


# gradient only, its no-LLM twin (the same allocation as LLMSearch's default, perturbed texts), LLM only,
# LLMSearch's default design (presets.DEFAULT)
DEFAULT_ARMS = ("gradient", "authors-paired-perturb", "llm", "authors-paired")


class NoLLM:
    """The mentor of the arms that must not ask one (``proposals="perturb"``): any call is a bug."""

    style = "completion"
    usage: dict = {}
    faults: dict = {}

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        raise AssertionError("this arm asks no LLM")


def design_population(arm: str, args) -> int:
    """How many trials the arm runs at once at ``--population`` ``P``: ``P``, or the preset's own (the authors'
    designs and text-first run one chain: 1). Under ``--budget workers`` a design gets the budget of that many
    workers (``presets.budget(population=...)``): one chain gets one worker's steps."""
    arm = canonical_arm(arm)
    if arm not in ARM_PRESETS:
        return args.population
    return presets.preset(ARM_PRESETS[arm], population=args.population, generations=args.generations,
                          steps=args.steps, eval_every=args.eval_every)["population"]


def make_llm(args, seed: int):
    return llm_from_flags(args, seed, **({"max_new_tokens": 24} if args.llm == "local" else {}))


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

    arm = canonical_arm(arm)
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
    perturbed = arm == "restarts-perturb" or (arm in SCREENED_ARMS and SCREENED_ARMS[arm][0] == "perturb")
    llm = NoLLM() if perturbed else (llm_factory or make_llm)(args, seed)
    common = {"metric": "val_acc", "mode": "max", "max_prompt_words": args.max_prompt_words, "seed": seed,
              "log_dir": log_dir, "prompt_tokens": args.prompt_length if getattr(args, "tell_length", False) else None}
    if arm == "llm":
        config["steps"] = 0
        width = args.population * budget(args)["evals_per_phase"]  # as many evaluations per generation as the others
        return LLMSearch(llm, task, seeds, population=width, generations=args.generations, elites=0,
                         candidates_per_round=width, **common), llm
    if arm in ("restarts", "restarts-perturb"):
        return LLMSearch(llm, task, seeds, population=args.population, generations=args.generations,
                         elites=args.elites, proposals="perturb" if arm == "restarts-perturb" else "llm",
                         **common), llm
    proposals, _, candidate_start, _ = SCREENED_ARMS[arm]
    # under the workers budget a design gets as many workers' steps as it runs trials at once
    population = design_population(arm, args) if budget(args)["kind"] == "workers" else args.population
    return LLMSearch.from_preset(
        llm, task, seeds, ARM_PRESETS[arm], steps=args.steps, eval_every=args.eval_every,
        population=population, generations=args.generations, proposals=proposals,
        candidate_start=candidate_start or args.candidate_start, screen_margin=args.screen_margin, **common), llm


def screened_schedule(args, when: str = "early") -> list[dict]:
    """The screened arms' generations at the gradient arm's budget: ``presets.chains_schedule``."""
    return presets.chains_schedule(args.generations, args.steps, when)


AUTHORS_ROUNDS = presets.AUTHORS_ROUNDS


def authors_schedule(args, faithful: bool = False) -> list[dict]:
    """The MaaO authors' regime at the gradient arm's budget: ``presets.authors_schedule``."""
    return presets.authors_schedule(args.population, args.generations, args.steps, args.eval_every, faithful)


def arm_select(arm: str) -> str:
    """How an arm chooses its final prompt: ``"loss"`` where its design's search does (``select="loss"``),
    else ``"acc"`` (gradient only, LLM only and the first designs)."""
    arm = canonical_arm(arm)
    if arm not in ARM_PRESETS:
        return "acc"
    return "loss" if presets.preset(ARM_PRESETS[arm], steps=8, eval_every=4).get("select") == "loss" else "acc"
