"""Moved: labelled image data for CLIP is ``trainables.clip.images`` and the feature cache
``trainables.clip.features.FeatureCache``. This module keeps the old import path working."""

from trainables.clip.features import FeatureCache  # noqa: F401
from trainables.clip.images import *  # noqa: F403
