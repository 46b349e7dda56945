"""Moved: CoOp on open_clip is the package ``trainables.clip`` (backbone, text encoder, features and their
cache, model, trainable). This module keeps the old import path working with the same names."""

from trainables.clip import *  # noqa: F403
from trainables.clip import __all__  # noqa: F401
