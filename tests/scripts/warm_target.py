"""A trainable module for tests/test_warm.py: importing it records the importing process and the time in the
file named by ``WARM_MARK`` (one line per import), so the test sees which worker process imported it when."""

import json
import os
import time

_MARK = os.environ.get("WARM_MARK")
if _MARK:
    with open(_MARK, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "at": time.time()}) + "\n")


def trainable(config):
    from ray import tune

    tune.report({"pid": os.getpid(), "entered": time.time()})
