"""``python -m ray_llm_search.compare``: the comparison's command (``cli.main``)."""

from ray_llm_search.compare.cli import main

main()
