"""Files shipped with gcvideo: the configs (``configs/``) and the Kinetics-400 label map
(``datasets/kinetics400/``).

In a source checkout (editable install) they sit at the repository's top level; a wheel
(``pip install .``, ``pip install git+...``) carries them as package data under
``gcvideo/configs/`` and ``gcvideo/datasets/`` (setup.py). ``shipped_file`` finds them in
either place, so a relative path such as ``configs/toy/slow_gc_toy.yaml`` works from any
working directory.
"""
from __future__ import annotations

import os

__all__ = ["SHIPPED_FOLDERS", "shipped_file", "resolve_shipped"]

# top-level folders of the source tree that the wheel ships inside the package (setup.py)
SHIPPED_FOLDERS = ("configs", "datasets")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../gcvideo
_SOURCE_ROOT = os.path.dirname(_PACKAGE_ROOT)  # the checkout holding gcvideo/, configs/, datasets/


def shipped_file(relpath: str) -> str:
    """The shipped copy of ``relpath`` (e.g. ``datasets/kinetics400/label_map.txt``): inside the
    installed package first, then in the source checkout; "" when neither has it."""
    rel = os.path.normpath(relpath)
    if os.path.isabs(rel) or rel.split(os.sep)[0] not in SHIPPED_FOLDERS:
        return ""
    for root in (_PACKAGE_ROOT, _SOURCE_ROOT):
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            return path
    return ""


def resolve_shipped(path: str) -> str:
    """``path`` as given when it exists (or is absolute or a URL), else its shipped copy when
    there is one, else ``path`` unchanged (the caller reports it missing)."""
    if not path or os.path.isabs(path) or "://" in path or os.path.exists(path):
        return path
    return shipped_file(path) or path
