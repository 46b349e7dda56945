"""A search's results as tables: every evaluation and every generation, as rows, CSV files and DataFrames.

``LLMSearch`` rewrites ``evaluations.csv`` and ``generations.csv`` in its ``log_dir`` each time a generation
completes (next to ``generations.jsonl``), and gives the same rows from ``search.evaluation_rows()`` /
``search.dataframe("evaluations")`` in a notebook::

    df = search.dataframe()                       # one row per reported evaluation
    df.groupby("generation").val_acc.max()        # the metric column is named after the search's metric

Cells that are lists or dicts (a generation's starts, an LLM round's details, sampled hyperparameters) are
JSON text in the CSV files and Python objects in the rows and DataFrames. pandas is only needed for
``dataframe``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable

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
