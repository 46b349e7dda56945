"""How should the final prompt be chosen? Moved into the library: ``python -m ray_llm_search.compare.selection_study``.

    python examples/selection_study.py --out examples/results/screened --rules acc loss
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_llm_search.compare.selection_study import main  # noqa: E402

if __name__ == "__main__":
    main()
