"""Named designs of ``LLMSearch``, each at the budget of gradient descent alone.

The budget of ``P`` gradient chains run for ``G`` generations of ``K`` steps, evaluated every ``E`` steps and
at their start: ``G*P*K`` gradient steps and ``G*P*(K/E + 1)`` forward evaluations of the validation split
(``budget``). Every preset below spends exactly that, counted the way trials report it (a reused start score
costs nothing; a screened candidate and a projection scored as text cost one evaluation each), so that a
preset can be compared with gradient descent alone, and with its own no-LLM twin (``proposals="perturb"``),
at equal budget. ``examples/RESULTS.md`` has what each one measured.

| preset | what it does | measured (issue #9, 4 tasks, 5 seeds) |
|---|---|---|
| ``"authors-paired"`` (``DEFAULT``) | the MaaO authors' regime (below) whose LLM candidates replace the chain's prompt only if they win a paired sign test against it on validation; the final prompt by the lowest validation loss; the chain descends while the mentor thinks (``overlap=True``: each round's candidates are screened against the chain where it stands when they arrive) | seeds 0-9: +4.4 points vs gradient only (SST-2 +0.3, TREC +8.9, AG News +3.5, BBC News +5.0), level with ``"authors"`` (+0.1); with the 135M mentor it adopted nothing (0 of 600 candidates), and its no-LLM twin scores the same in every run: the gain is the long descent's |
| ``"authors"`` | the MaaO authors' regime: one chain from the first seed prompt, 3 short phases each followed by an LLM round whose candidates are screened against the chain (a candidate must beat it on validation), then one long descent with the rest of the steps; the final prompt by the lowest validation loss | seeds 0-9: +4.3 (SST-2 −0.1); its no-LLM twin about as much |
| ``"chains-paired"`` | every chain continues; generation 0 scores the seed prompts as text; one LLM round gives each chain ``G-1`` candidates, and a candidate replaces a chain only if it wins a paired sign test on the validation examples where the two disagree; start scores are reused; ``P`` trials at a time | +0.2; a garbage mentor costs ~nothing |
| ``"chains-screened"`` | the same, a candidate wins on any gain | −0.9 |
| ``"late-mix"`` | every chain descends one generation, then screens ``G-1`` warm candidates ``(chain + text) / 2`` | −0.5 |
| ``"authors-faithful"`` | ``"authors"`` with the mentor shown text scores (``mentor_scores="text"``) | −0.5 vs ``"authors"`` (2 tasks) |
| ``"text-first"`` | 3 LLM rounds on text before any gradient (the mentor shown texts with their scores as text; each candidate screened as text against the best text so far: text against text), then one chain descends every step from the best text; the final prompt by the lowest validation loss | pilot with Qwen2.5-Coder-1.5B (issue #26, 4 tasks, 2 seeds): −1.8 vs its no-LLM twin, +2.7 vs gradient only |
| ``"halving"`` | the LLM's texts as lineages of their own, kept or dropped after they have descended: generation 0 scores the ``P`` seed prompts as text; one LLM round gives ``P`` new starts, and the best seed (its score reused) screens ``P`` more as text; those ``P + 1`` chains descend ``K`` steps; the best 2 descend on, then the best one takes the rest of the steps (successive halving); the final prompt by the lowest validation loss | issue #26, Qwen2.5-Coder-1.5B, 4 tasks, 5 seeds: −0.4 vs its no-LLM twin (every interval spans 0; the final chain came from the mentor in 17 of 20 runs), +4.6 vs gradient only (its twin +4.9) |
| ``"descent-shown"`` | the mentor shown what descent did to each start (issue #26's design (b)): generation 0 scores the ``P`` seed prompts as text; the ``P`` seed chains descend ``K`` steps; one LLM round, shown each seed's score as text, the score its chain reached and the chain's nearest words, gives ``P`` new starts that descend ``K`` steps; the best 2 of all ``2P`` lineages descend on, then the best one takes the rest; the final prompt by the lowest validation loss | issue #26, Qwen2.5-Coder-1.5B: ``examples/RESULTS.md`` |
| ``"restarts"`` | the first design: 1 elite continues, the LLM's texts restart the other ``P-1`` phases each generation | −2.8 (3 tasks, 3 seeds) |

The authors' designs run one trial at a time (one chain): give that trial every CPU or GPU of the machine
(``resources_per_trial``), as the quickstart does; ``"chains-paired"`` keeps ``P`` workers busy.

Example:
    >>> from ray_llm_search import presets
    >>> kw = presets.preset(population=4, generations=3, steps=8, eval_every=4)   # DEFAULT, "authors-paired"
    >>> kw["population"], [g["steps"] for g in kw["schedule"]], [g.get("screen", 0) for g in kw["schedule"]]
    (1, [8, 8, 8, 8, 64], [0, 5, 5, 5, 0])
"""

from __future__ import annotations

DEFAULT = "authors-paired"
AUTHORS_ROUNDS = 3
PRESETS = ("chains-paired", "chains-screened", "late-mix", "authors", "authors-faithful", "authors-paired", "text-first",
           "halving", "descent-shown", "restarts")


def budget(population: int, generations: int, steps: int, eval_every: int) -> dict:
    """Gradient steps and evaluations of ``population`` chains for ``generations`` phases of ``steps`` steps,
    each evaluated at its start and every ``eval_every`` steps."""
    for name, value in (("population", population), ("generations", generations), ("steps", steps),
                        ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if steps % eval_every:
        raise ValueError(f"steps ({steps}) must be a multiple of eval_every ({eval_every})")
    per_phase = steps // eval_every + 1
    return {"generations": generations, "population": population, "steps_per_phase": steps,
            "eval_every": eval_every, "evals_per_phase": per_phase, "gradient_steps": generations * population * steps,
            "evaluations": generations * population * per_phase, "llm_calls": generations - 1}


def chains_schedule(generations: int, steps: int, when: str = "early") -> list[dict]:
    """Every chain continuing (its start score reused, not recomputed), one generation screening ``G - 1``
    candidates per chain: that spends the ``P * (G - 1)`` evaluations that gradient chains use to evaluate
    the starts they resume from again.

    ``"early"``: generation 0 evaluates the seed prompts as text (``P`` evaluations), then ``G`` generations
    of ``K`` steps, the first of them screening. ``"late"``: ``G`` generations of ``K`` steps, the second
    screening (the chains have descended for ``K`` steps when candidates are scored against them)."""
    if when not in ("early", "late"):
        raise ValueError(f"when must be 'early' or 'late', got {when!r}")
    screen = generations - 1
    if when == "late":
        gens = [{"steps": steps} for _ in range(generations)]
        if generations > 1:
            gens[1]["screen"] = screen
        return gens
    first = {"steps": steps, "screen": screen} if generations > 1 else {"steps": steps}
    return [{"steps": 0}, first] + [{"steps": steps} for _ in range(generations - 1)]


def authors_schedule(population: int, generations: int, steps: int, eval_every: int,
                     faithful: bool = False) -> list[dict]:
    """The MaaO authors' regime at the budget of ``budget(...)``: one chain; LLM rounds after each of the first
    ``3`` short phases (``steps`` steps, evaluated at their end), each screening ``S`` candidates as text
    against the chain (the authors take the LLM's first prompt blindly; here it must beat the chain); then
    one long descent with the remaining steps, evaluated every ``eval_every``. The rounds' ``S`` spend the
    evaluations exactly (earlier rounds one more where they do not divide); raises ``ValueError`` where a
    round would screen none. ``faithful``: the phases before
    each round also evaluate their best vectors' projection as text (``mentor_scores="text"``), one evaluation
    each, taken from ``S``."""
    b = budget(population, generations, steps, eval_every)
    rounds, short = AUTHORS_ROUNDS, steps
    final = b["gradient_steps"] - (rounds + 1) * short
    if final <= 0 or final % eval_every:
        raise ValueError(f"the authors' arm needs {rounds + 1} phases of --steps {short} and a final one with the "
                         f"rest of {b['gradient_steps']} steps, a positive multiple of --eval-every {eval_every}")
    # evaluations: 2 in generation 0 (start, end), S + 1 per round (the chain's start score is reused), and
    # final / eval_every in the long descent; the rounds share what is left, the earlier ones taking one more
    screens = b["evaluations"] - 2 - final // eval_every - (rounds if faithful else 0) - rounds
    if screens < rounds:
        raise ValueError(f"the authors' arm cannot spend {b['evaluations']} evaluations with {rounds} rounds of at "
                         f"least one screened candidate at this budget ({b}); change --generations, --population "
                         "or --steps")
    per_round = [screens // rounds + (1 if i < screens % rounds else 0) for i in range(rounds)]
    return ([{"steps": short, "eval_every": short}]
            + [{"steps": short, "eval_every": short, "screen": s} for s in per_round]
            + [{"steps": final, "eval_every": eval_every}])


def text_first_schedule(population: int, generations: int, steps: int, eval_every: int) -> list[dict]:
    """LLM rounds on text before any gradient, then one descent with every step, at the budget of ``budget(...)``:
    generation 0 scores the seed prompt as text (no step); ``3`` rounds follow, each a phase of no step whose
    start (the best text so far, its score reused) screens ``S`` candidates as text, text against text, and
    takes the winner; then one chain descends ``G*P*K`` steps from the best text, evaluated every
    ``eval_every``. The rounds' ``S`` spend the evaluations that are left (earlier rounds one more)."""
    b = budget(population, generations, steps, eval_every)
    final, rounds = b["gradient_steps"], AUTHORS_ROUNDS
    screens = b["evaluations"] - 1 - final // eval_every
    if screens < rounds:
        raise ValueError(f"the text-first design cannot spend {b['evaluations']} evaluations with {rounds} rounds of at "
                         f"least one screened candidate at this budget ({b})")
    per_round = [screens // rounds + (1 if i < screens % rounds else 0) for i in range(rounds)]
    return [{"steps": 0}] + [{"steps": 0, "screen": s} for s in per_round] + [{"steps": final, "eval_every": eval_every}]


def halving_schedule(population: int, generations: int, steps: int, eval_every: int) -> list[dict]:
    """The LLM's starts as lineages, narrowed after they have descended, at the budget of ``budget(...)``.

    Generation 0 scores the ``P`` seed prompts as text (no step, ``P`` evaluations). Generation 1 runs ``P + 1``
    chains for ``K`` steps, evaluated every ``E``: the best seed (its score reused), which first screens ``S``
    candidates as text against its own text, and ``P`` new starts from the round's candidates (one evaluation each
    at their start). Generation 2: the best 2 lineages descend ``K2`` steps (``K2``: a quarter of what is left, a
    multiple of ``E``); generation 3: the best one descends the rest. ``S`` spends the evaluations left over;
    raises ``ValueError`` where the numbers leave none, or no step for the last chain."""
    b = budget(population, generations, steps, eval_every)
    width = population + 1
    rest = b["gradient_steps"] - width * steps
    second = eval_every * (rest // (4 * eval_every))
    final = rest - 2 * second
    if second <= 0 or final <= 0 or final % eval_every:
        raise ValueError(f"the halving design needs {width} phases of --steps {steps} and steps left for two more "
                         f"generations, multiples of --eval-every {eval_every}, at this budget ({b})")
    per_phase = steps // eval_every
    used = population + per_phase + population * (per_phase + 1) + 2 * (second // eval_every) + final // eval_every
    screens = b["evaluations"] - used
    if screens < 0:
        raise ValueError(f"the halving design evaluates {used} times, more than the budget's {b['evaluations']} ({b})")
    first = {"steps": steps, "eval_every": eval_every, "population": width, "elites": 1, "screen": screens}
    return [{"steps": 0}, first, {"steps": second, "eval_every": eval_every, "population": 2, "elites": 2},
            {"steps": final, "eval_every": eval_every, "population": 1, "elites": 1}]


def descent_schedule(population: int, generations: int, steps: int, eval_every: int) -> list[dict]:
    """A pilot descent shown to the mentor, then its starts as lineages, at the budget of ``budget(...)``.

    Generation 0 scores the ``P`` seed prompts as text (no step). Generation 1: the ``P`` seed chains descend
    ``K`` steps, evaluated every ``E`` (their start scores reused). One LLM round is shown what descent did to
    each seed (``mentor_scores="descent"``) and gives ``P`` new starts, which descend ``K`` steps in generation 2
    (no elite: the seed chains wait, so that every lineage has descended ``K`` steps when they are compared).
    Generation 3: the best 2 lineages of all ``2P`` descend ``K2`` steps (a quarter of what is left, a multiple of
    ``E``); generation 4: the best one descends the rest. The last two generations are evaluated so as to
    spend the evaluations left exactly (the intervals nearest ``E`` that do); raises ``ValueError`` where no
    intervals do, or the numbers leave no step for the last chain."""
    b = budget(population, generations, steps, eval_every)
    rest = b["gradient_steps"] - 2 * population * steps
    second = eval_every * (rest // (4 * eval_every))
    final = rest - 2 * second
    per_phase = steps // eval_every
    left = b["evaluations"] - (population + population * per_phase + population * (per_phase + 1))
    fits = [] if second <= 0 or final <= 0 else sorted(
        (max(abs(e3 - eval_every), abs(ef - eval_every)), -ef, e3, ef)
        for e3 in range(1, second + 1) if second % e3 == 0 for ef in range(1, final + 1)
        if final % ef == 0 and 2 * (second // e3) + final // ef == left)
    if not fits:
        raise ValueError(f"the descent-shown design cannot spend this budget exactly ({b}): it needs "
                         f"{2 * population} phases of --steps {steps}, then two generations whose evaluations "
                         f"come to the {left} left; change --steps, --eval-every or --population")
    _, _, e3, ef = fits[0]
    return [{"steps": 0}, {"steps": steps, "eval_every": eval_every, "population": population, "elites": population},
            {"steps": steps, "eval_every": eval_every, "population": population, "elites": 0},
            {"steps": second, "eval_every": e3, "population": 2, "elites": 2},
            {"steps": final, "eval_every": ef, "population": 1, "elites": 1}]


def search_config(name: str = DEFAULT, *, task_description: str, seed_prompts: list[str], population: int = 4,
                  generations: int = 3, steps: int | None = None, eval_every: int | None = None, **settings):
    """The named design as a ``SearchConfig`` (``ray_llm_search.config``) at the budget of ``population`` gradient
    chains of ``generations`` phases of ``steps`` steps evaluated every ``eval_every`` (``None``: the trial
    config's, when Tune hands it over); ``settings`` override the design's own, as in ``LLMSearch.from_preset``.
    ``search_config(...).resolved()`` holds ``preset(...)``'s settings."""
    from ray_llm_search.config import SearchConfig

    return SearchConfig(task_description=task_description, seed_prompts=seed_prompts, preset=name,
                        population=population, generations=generations, steps=steps, eval_every=eval_every,
                        **settings)


def preset(name: str = DEFAULT, *, population: int = 4, generations: int = 3, steps: int, eval_every: int) -> dict:
    """``LLMSearch`` keyword arguments for the named design at the budget of ``population`` gradient chains run
    for ``generations`` phases of ``steps`` steps evaluated every ``eval_every`` (the trial config's values).

    ``"seed_prompts"`` in the result, where present, is how many of the seed prompts the design starts from
    (the authors' regime: 1)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    budget(population, generations, steps, eval_every)  # checks the numbers
    if name in ("chains-paired", "chains-screened"):
        return {"population": population, "elites": population, "schedule": chains_schedule(generations, steps),
                "reuse_start_score": True, "screen_test": "paired" if name == "chains-paired" else "gain"}
    if name == "late-mix":
        return {"population": population, "elites": population,
                "schedule": chains_schedule(generations, steps, "late"), "reuse_start_score": True,
                "candidate_start": "mix"}
    if name in ("authors", "authors-faithful", "authors-paired"):
        faithful = name == "authors-faithful"
        # the default design descends while the mentor thinks (overlap: issue #26; examples/PERFORMANCE.md)
        return {**({"screen_test": "paired", "overlap": True} if name == "authors-paired" else {}), "population": 1, "elites": 1, "seed_prompts": 1, "reuse_start_score": True,
                "schedule": authors_schedule(population, generations, steps, eval_every, faithful),
                "mentor_scores": "text" if faithful else "vectors", "select": "loss"}
    if name == "halving":
        return {"population": population, "elites": 1, "seed_prompts": population, "reuse_start_score": True,
                "schedule": halving_schedule(population, generations, steps, eval_every), "mentor_scores": "text",
                "select": "loss"}
    if name == "descent-shown":
        return {"population": population, "elites": population, "seed_prompts": population, "reuse_start_score": True,
                "schedule": descent_schedule(population, generations, steps, eval_every), "mentor_scores": "descent",
                "select": "loss"}
    if name == "text-first":
        return {"population": 1, "elites": 1, "seed_prompts": 1, "reuse_start_score": True,
                "schedule": text_first_schedule(population, generations, steps, eval_every), "mentor_scores": "text",
                "select": "loss"}
    return {"population": population, "generations": generations, "elites": 1}
