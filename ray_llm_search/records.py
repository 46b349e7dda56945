"""The search's records in its ``log_dir``: one JSON line per generation (``generations.jsonl``), the final
prompt (``best.json``), and the same as TensorBoard scalars and text. (The LLM's crash journal,
``llm_rounds.jsonl``, belongs to the round engine: ``ray_llm_search.rounds``.) Every evaluation and every
generation also as rows, CSV files (``evaluations.csv``, ``generations.csv``) and DataFrames (below).

Written by the searcher into its ``log_dir`` (by default inside the experiment folder), so that
``tensorboard --logdir <experiment folder>`` shows Tune's per-trial curves and these side by side.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable

logger = logging.getLogger(__name__)

SUMMARY_FILE = "generations.jsonl"
BEST_FILE = "best.json"


class GenerationLog:
    """One record per generation in ``generations.jsonl``, mirrored into TensorBoard (tensorboardX, no torch).

    A record is keyed by ``(search_id, generation)``: writing one again (a search restored from a state saved
    before the record was first written) replaces the old line instead of adding a second one.

    Each generation gets its own event file, closed (so on disk) before ``write_generation`` returns: a driver
    killed later loses nothing. The file starts a TensorBoard session at the generation's step
    (``SessionLog.START``, tensorboardX's ``purge_step``), which TensorBoard reads as a restart: it drops what
    earlier files hold from that step on, i.e. what a crashed driver wrote past the state a search was restored
    from. In one uninterrupted run there is nothing later to drop.
    """

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._tensorboard: bool | None = None

    def _writer(self, generation: int, search_id: str | None):
        if self._tensorboard is None:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:  # TensorBoard is optional for the search itself
                logger.warning("tensorboardX is not installed; generation records go to %s only", SUMMARY_FILE)
                self._tensorboard = False
            else:
                self._tensorboard = True
        if not self._tensorboard:
            return None
        from tensorboardX import SummaryWriter

        # File names sort by creation second, then by this suffix: generations of one run stay in order.
        suffix = f".{search_id or 'search'}.g{generation:06d}"
        return SummaryWriter(os.path.join(self.log_dir, "llm_search"), purge_step=generation, filename_suffix=suffix)

    def write_generation(self, record: dict, metric: str) -> None:
        _write_keyed(os.path.join(self.log_dir, SUMMARY_FILE), record)
        g = record["generation"]
        tb = self._writer(g, record.get("search_id"))
        if tb is None:
            return
        try:
            for key in ("best_metric", "mean_metric", "best_so_far"):
                if record.get(key) is not None:
                    tb.add_scalar(f"llm_search/{key.replace('metric', metric)}", record[key], g)
            llm = record.get("llm") or {}
            for kind, count in (llm.get("faults") or {}).items():
                tb.add_scalar(f"llm_search/faults/{kind}", count, g)
            for reason, count in (llm.get("rejected") or {}).items():
                tb.add_scalar(f"llm_search/rejected/{reason}", count, g)
            if llm.get("seconds") is not None:
                tb.add_scalar("llm_search/llm_seconds", llm["seconds"], g)
            tb.add_scalar("llm_search/errored_trials", record.get("errored") or 0, g)
            budget = record.get("llm_budget")
            if budget:
                tb.add_scalar("llm_search/llm_budget_reached", float(bool(budget.get("reached"))), g)
                for key, value in (budget.get("spent") or {}).items():
                    tb.add_scalar(f"llm_search/llm_spent/{key}", value, g)
            tb.add_text("llm_search/best_prompt", _md(record.get("best_prompt") or ""), g)
            if llm.get("meta_prompt"):
                tb.add_text("llm_search/meta_prompt", _md(llm["meta_prompt"]), g)
            if llm.get("replies") is not None:
                tb.add_text("llm_search/reply", _md("\n---\n".join(llm["replies"]) or "(empty)"), g)
            if llm:  # generation 0 has no LLM round
                tb.add_text("llm_search/candidates", _md("\n".join(llm.get("candidates") or []) or "(none)"), g)
                tb.add_text("llm_search/filled", _md("\n".join(llm.get("filled") or []) or "(none)"), g)
        finally:
            tb.close()  # drains tensorboardX's writer thread: flush() alone leaves queued events in memory

    def write_best(self, best: dict) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        tmp = os.path.join(self.log_dir, BEST_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(best, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(self.log_dir, BEST_FILE))

    def close(self) -> None:
        """Nothing stays open between generations; kept for callers that close the log at the end."""

    def write_all(self, record: dict, metric: str, evaluations: list[dict], records: list[dict]) -> None:
        """A generation's record, and the evaluations and generations so far as CSV files; a failure is logged."""
        try:
            self.write_generation(record, metric)
            write_csv(os.path.join(self.log_dir, EVALUATIONS_FILE), evaluations)
            write_csv(os.path.join(self.log_dir, GENERATIONS_FILE), records)
        except OSError:
            logger.exception("could not write the generation summary to %s", self.log_dir)

    def rewrite_rounds(self, records: list[dict], rounds: dict, metric: str) -> None:
        """Records whose LLM round ended after they were written (``overlap=True``), written again with it."""
        for record in records:
            rnd = rounds.get(record["generation"])
            if rnd is not None and record.get("llm") != rnd.record():
                record["llm"] = rnd.record()
                try:
                    self.write_generation(record, metric)
                except OSError:
                    logger.exception("could not write the generation summary to %s", self.log_dir)
        try:
            write_csv(os.path.join(self.log_dir, GENERATIONS_FILE), records)
        except OSError:
            logger.exception("could not write the generations to %s", self.log_dir)

    def finish(self, best: dict | None) -> None:
        """``best.json`` (where there is a best), at the search's end; a failure is logged."""
        try:
            if best is not None:
                self.write_best(best)
            self.close()
        except OSError:
            logger.exception("could not write best.json to %s", self.log_dir)


def generation_record(pool, members: list, generation: int, rnd, screened: dict[int, list[dict]],
                      suspicious: dict[str, dict[str, int]]) -> dict:
    """What ``generations.jsonl`` says of a completed generation: its trials, their origins and errors, its best
    and mean metric, the best so far, the starts, the candidates screened and adopted, non-finite results and
    its LLM round (``Round.record``)."""
    mode = pool.mode
    scores = [s for s in (pool.score(t) for t in members) if s is not None]
    best = pool.ranked(generation)
    overall = pool.best()
    return {
        "generation": generation,
        "trials": len(members),
        "errored": sum(t.status == "error" for t in members),
        "origins": dict(Counter(t.origin for t in members)),
        "best_metric": best[0].best(mode).metric if best else None,
        "mean_metric": sum(scores) / len(scores) if scores else None,
        "best_prompt": best[0].best(mode).text if best else None,
        "best_start": best[0].prompt_init if best else None,
        "best_hyperparameters": dict(best[0].hyperparameters) if best else None,
        "best_so_far": overall.best(mode).metric if overall else None,
        "starts": [t.prompt_init for t in members],
        "screened": len(screened.get(generation, [])) + sum(bool(t.adopted) for t in members),
        "adopted": [t.adopted for t in members if t.adopted],
        "non_finite": sum(suspicious.get(t.trial_id, {}).get("non_finite", 0) for t in members),
        "llm": rnd.record() if rnd is not None else None,
    }


def _key(record: dict) -> tuple:
    return record.get("search_id"), record.get("generation")


def _write_keyed(path: str, record: dict) -> None:
    """Append ``record`` as a JSON line, or replace the line with the same key (written before a crash)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    lines: list[str] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    kept = [old for old in lines if not _same_key(old, record)]
    if len(kept) == len(lines):
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
        return
    logger.info("generation %s was written before a restore; replacing its line in %s", record.get("generation"),
                path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept + [line])
    os.replace(tmp, path)


def _same_key(line: str, record: dict) -> bool:
    try:
        return _key(json.loads(line)) == _key(record)
    except (ValueError, AttributeError):
        return False


def _md(text: str) -> str:
    # TensorBoard renders text as Markdown; indenting keeps line breaks and stops markup in LLM output.
    return "\n".join("    " + line for line in text.splitlines()) or "    "


# -- as tables: rows, CSV files, DataFrames -------------------------------------------------------------------------

# A search's results as tables: every evaluation and every generation, as rows, CSV files and DataFrames.
#
# ``LLMSearch`` rewrites ``evaluations.csv`` and ``generations.csv`` in its ``log_dir`` each time a generation
# completes (next to ``generations.jsonl``), and gives the same rows from ``search.evaluation_rows()`` /
# ``search.dataframe("evaluations")`` in a notebook::
#
#     df = search.dataframe()                       # one row per reported evaluation
#     df.groupby("generation").val_acc.max()        # the metric column is named after the search's metric
#
# Cells that are lists or dicts (a generation's starts, an LLM round's details, sampled hyperparameters) are
# JSON text in the CSV files and Python objects in the rows and DataFrames. pandas is only needed for
# ``dataframe``.

EVALUATIONS_FILE = "evaluations.csv"
GENERATIONS_FILE = "generations.csv"
EVALUATION_COLUMNS = ("search_id", "trial_id", "generation", "origin", "status", "prompt_init", "lineage",
                      "adopted", "step", "prompt_text", "loss")


def evaluation_rows(trajectories: Iterable, metric: str, search_id: str | None = None) -> list[dict]:
    """One dict per reported evaluation, in the order the trials were suggested and the steps reported."""
    rows = []
    for t in trajectories:
        for e in t.evaluations:
            rows.append({"search_id": search_id, "trial_id": t.trial_id, "generation": t.generation,
                         "origin": t.origin, "status": t.status, "prompt_init": t.prompt_init,
                         "lineage": t.lineage or t.trial_id, "adopted": t.adopted, "step": e.step,
                         "prompt_text": e.text, metric: e.metric, "loss": e.loss,
                         "hyperparameters": dict(t.hyperparameters)})
    return rows


def write_csv(path: str, rows: list[dict], columns: list[str] | None = None) -> None:
    """``rows`` as CSV (atomically: a reader never sees half a file); list and dict cells as JSON."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    os.replace(tmp, path)


def dataframe(rows: list[dict]):
    try:
        import pandas as pd
    except ImportError as e:  # ray[tune] brings pandas; a bare install may not have it
        raise ImportError("search.dataframe() needs pandas (pip install pandas); the same rows are in "
                          "search.evaluation_rows() and the CSV files in the search's log_dir") from e
    return pd.DataFrame(rows)


def _cell(value):
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # nan, inf, -inf: what pandas and float() read back
    return value
