"""Generation-level records: a JSON-lines summary and TensorBoard scalars and text.

Written by the searcher into its ``log_dir`` (by default inside the experiment folder), so that
``tensorboard --logdir <experiment folder>`` shows Tune's per-trial curves and these side by side.
"""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)

SUMMARY_FILE = "generations.jsonl"
BEST_FILE = "best.json"


class GenerationLog:
    """Appends one record per generation and mirrors it into TensorBoard (tensorboardX, no torch)."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._writer = None

    def _tb(self):
        if self._writer is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # TensorBoard is optional for the search itself
                logger.warning("tensorboardX is not installed; generation records go to %s only", SUMMARY_FILE)
                self._writer = False
            else:
                self._writer = SummaryWriter(os.path.join(self.log_dir, "llm_search"), flush_secs=5)
        return self._writer or None

    def write_generation(self, record: dict, metric: str) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, SUMMARY_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        tb = self._tb()
        if tb is None:
            return
        g = record["generation"]
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
        tb.add_text("llm_search/best_prompt", _md(record.get("best_prompt") or ""), g)
        if llm.get("meta_prompt"):
            tb.add_text("llm_search/meta_prompt", _md(llm["meta_prompt"]), g)
        if llm.get("replies") is not None:
            tb.add_text("llm_search/reply", _md("\n---\n".join(llm["replies"]) or "(empty)"), g)
        tb.add_text("llm_search/candidates", _md("\n".join(llm.get("candidates") or []) or "(none)"), g)
        tb.flush()

    def write_best(self, best: dict) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        tmp = os.path.join(self.log_dir, BEST_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(best, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(self.log_dir, BEST_FILE))

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None


def _md(text: str) -> str:
    # TensorBoard renders text as Markdown; indenting keeps line breaks and stops markup in LLM output.
    return "\n".join("    " + line for line in text.splitlines()) or "    "
