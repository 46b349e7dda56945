"""``import ray_llm_search`` stays light: a driver that only searches (its trials run elsewhere) loads no torch."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_searcher_package_loads_no_torch():
    code = ("import sys, ray_llm_search, ray_llm_search.timeline; "
            "from ray_llm_search import LLMSearch; "
            "print(sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
