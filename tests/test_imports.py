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


def test_only_the_comparison_package_of_the_search_imports_the_trainables():
    """The searcher and its modules never import ``trainables`` (the models): only ``ray_llm_search.compare``,
    the experiment that runs the text trainable, does (ARCHITECTURE.md)."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1] / "ray_llm_search"
    importers = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "compare":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "trainables" or n.startswith("trainables.") for n in names):
                importers.append(f"{path.relative_to(root)}:{node.lineno}")
    assert importers == []


def test_the_contract_and_the_phase_load_without_ray():
    """A trainable on a machine with torch alone (the GPU benchmark's image) imports the contract and the
    phase; the searcher's names still import on first use."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ray' or name.startswith('ray.'):\n"
            "            raise ImportError('no ray on this machine')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import trainables.phase, trainables.clip\n"
            "from ray_llm_search import contract, presets\n"
            "assert trainables.phase.TIMING_KEYS == contract.TIMING_KEYS\n"
            "print('ray' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_phase_reports_the_contracts_keys_and_the_searcher_adds_only_its_keys(tmp_path):
    import math

    from ray_llm_search import LLMSearch, contract
    from ray_llm_search.llm.base import LLM
    from trainables.phase import run_phase

    class Words(LLM):
        style = "completion"

        def propose(self, meta_prompt, n):
            return ["good words here"] * n

    class Model:  # the smallest PromptModel: one number per vector
        import torch as _torch
        device = _torch.device("cpu")

        def init_vectors(self, text):
            return self._torch.full((2, 3), float(len(text) % 5))

        def project(self, vectors):
            return f"p{float(vectors.sum()):.2f}"

        def loss(self, vectors, batch):
            return (vectors ** 2).sum()

        def evaluate(self, vectors, examples):
            value = float((vectors ** 2).sum())
            return value, 1.0 / (1.0 + value)

        def extra_parameters(self):
            return []

        def extra_state(self):
            return {}

        def load_extra_state(self, state):
            pass

        def identity(self):
            return {"model": "tiny"}

    assert isinstance(Model(), contract.PromptModel)
    search = LLMSearch(Words(), "t", ["a b", "c d"], metric="val_acc", mode="max", population=2, generations=1,
                       log_dir=str(tmp_path))
    config = search.suggest("t0")
    assert set(contract.CONFIG_KEYS) <= set(config) <= set(contract.CONFIG_KEYS) | set(contract.OPTIONAL_CONFIG_KEYS)
    rows = []
    run_phase({**config, "steps": 2, "eval_every": 1}, Model(), [("x", 0)], [("y", 0)],
              report=lambda m, c: rows.append(m))
    for r in rows:
        assert set(contract.REPORTED_KEYS) <= set(r) and "val_acc" in r and math.isfinite(r["loss"])
        assert set(r) <= {"val_acc", *contract.REPORTED_KEYS, *contract.PHASE_KEYS, *contract.TIMING_KEYS}
