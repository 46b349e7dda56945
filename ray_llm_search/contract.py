"""The contract between the searcher and a trainable, in code: both sides import it (ARCHITECTURE.md,
"Contracts"). It imports no torch; tensors are typed as ``Any``.

- ``CONFIG_KEYS``: what ``LLMSearch`` adds to every trial's config; ``OPTIONAL_CONFIG_KEYS`` where they apply
  (a generation's own phase length, screening, reused start scores, a projection scored as text, the lowest-loss vectors kept).
- ``REPORTED_KEYS``: what a phase reports at each evaluation (the searcher's metric under its own name, e.g.
  ``val_acc``, besides these); ``PHASE_KEYS`` and ``TIMING_KEYS``: what ``trainables.phase.run_phase`` adds.
- ``PromptModel``: what ``run_phase`` drives, for a trainable of your own.

This module is where the contract is stated; ARCHITECTURE.md and docs/usage.md ("Your own trainable") link
here. What each config key means:

| key | meaning |
|---|---|
| ``prompt_init`` | text to start from (seed, LLM candidate, pool fill-in, or an elite's projection) |
| ``resume_from`` | ``None``, or the vectors file of an elite to start from exactly (prompt and head): a local path, or a URI in the parent trial's folder of Tune's storage (``s3://...``) |
| ``generation``, ``origin`` | round number; ``"seed"``, ``"llm"``, ``"elite"`` or ``"pool"`` |
| ``phase_seed`` | seed of the phase's batches |
| ``vector_dir`` | where the phase saves its best vectors (``<vector_dir>/<trial_id>.pt``; the searcher's ``<log_dir>/vectors``); inside Tune with ``storage_path`` on object storage a local ``vector_dir`` gives way to ``vectors/`` in the trial's folder there (``trainables.phase.vector_location``) |
| ``steps``, ``eval_every`` | a generation's own phase length, from ``schedule`` |
| ``prompt_candidates``, ``candidate_start``, ``mix_alpha``, ``screen_margin``, ``screen_test`` | screening (``trainables/phase.py``) |
| ``reuse_start_score`` | an elite's saved score (and per-example results) stand for its start evaluation |
| ``project_best`` | after its last step the phase scores its best vectors' projection as text (a ``screen`` row with ``projection: True``, before its final result) |
| ``keep_lowest_loss`` | the phase also keeps its lowest-validation-loss vectors and reports them as ``loss_vectors_path`` (``select="loss"``) |
| ``mailbox`` | ``overlap=True``: where the running phase reads its chain's screened candidates, from which one on, and whether it waits at its end for those still owed (``ray_llm_search.mailbox``) |

Reported at each evaluation: the metric and ``loss`` on validation, never test; ``prompt_text`` (the
nearest-token projection of the current vectors); ``step`` (gradient steps done in this phase); optionally
``vectors_path`` (the saved best vectors; without it an elite restarts from its projected text) and
``loss_vectors_path``.

Example:
    >>> from ray_llm_search.contract import CONFIG_KEYS, REPORTED_KEYS
    >>> "prompt_init" in CONFIG_KEYS and "prompt_text" in REPORTED_KEYS
    True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

# Keys the searcher adds to each trial's config, always.
CONFIG_KEYS = ("prompt_init", "resume_from", "generation", "origin", "phase_seed", "vector_dir")
# Keys added only where they apply: a generation's steps from ``schedule``; the screened-start keys of
# ``trainables.phase``; ``project_best`` for a mentor shown text scores.
OPTIONAL_CONFIG_KEYS = ("steps", "eval_every", "prompt_candidates", "candidate_start", "mix_alpha",
                        "screen_margin", "screen_test", "reuse_start_score", "project_best",
                        "keep_lowest_loss", "mailbox")
# Keys a phase reports at each evaluation, besides the metric itself (``vectors_path`` is optional: without
# it an elite restarts from its projected text).
REPORTED_KEYS = ("loss", "prompt_text", "step")
# What run_phase reports besides: forward evaluations computed (for budgets), where a screened or projected
# text's row is (``screen``, ``screen_index``, ``projection``), how the phase started (``exploited_from``: the
# trial whose Tune checkpoint it took, a PBT exploit).
PHASE_KEYS = ("evaluations", "generation", "origin", "screen", "screen_index", "projection", "start", "start_text",
              "reused", "best_val_acc", "train_loss", "torch_threads", "vectors_path",
              "loss_vectors_path", "exploited_from", "adopted", "mailbox_cursor")
# Wall-clock keys of every result (they differ between two runs of the same phase).
TIMING_KEYS = ("started_at", "setup_s", "first_step_s", "first_compute_s", "elapsed_s", "compute_s", "report_s", "wait_s")


class PromptOnly:
    """The ``PromptModel`` methods of a model that trains nothing but the prompt (no head, no extra state)."""

    def extra_parameters(self) -> list:
        return []

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


@runtime_checkable
class PromptModel(Protocol):
    """What ``trainables.phase.run_phase`` drives. Optional, found with ``getattr``: ``evaluate_each(vectors,
    examples) -> (loss, accuracy, [right per example])`` (for ``screen_test="paired"``) and ``lr_at(base_lr,
    step) -> float`` (a learning-rate schedule that depends on the step alone)."""

    device: Any

    def init_vectors(self, text: str) -> Any: ...  # Tensor[L, D]

    def project(self, vectors: Any) -> str: ...

    def loss(self, vectors: Any, batch: list) -> Any: ...  # a scalar Tensor

    def evaluate(self, vectors: Any, examples: list) -> tuple[float, float]: ...  # (loss, accuracy)

    def extra_parameters(self) -> list: ...

    def extra_state(self) -> dict: ...

    def load_extra_state(self, state: dict) -> None: ...

    def identity(self) -> dict: ...
