"""Whole jobs built from the library: ``run_toy`` (the README's main job, ``make toy``).

A recipe prepares what a run needs (data), calls ``gcvideo.engine.train`` with a config and
writes the figures a user looks at afterwards; it sits above ``gcvideo.analysis`` in the
import order (utils -> layers -> models -> data/engine -> analysis -> recipes -> tools).
"""
from gcvideo.recipes.toy import run_toy

__all__ = ["run_toy"]
