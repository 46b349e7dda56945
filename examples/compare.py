"""The comparison behind ``examples/RESULTS.md``: ``python -m ray_llm_search.compare`` with its results in
``examples/results``. See ``python examples/compare.py --help`` (the arms, presets and your own task files).

    python examples/compare.py --datasets sst2 trec ag_news rte --seeds 0 1 2
    python examples/compare.py --replot
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_llm_search.compare import main  # noqa: E402

if __name__ == "__main__":
    main(default_out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), prog="python examples/compare.py")
