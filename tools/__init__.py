"""Command-line tools: each ``tools/NAME.py`` parses arguments and calls one library function.

Run them as scripts (``python tools/train_net.py ...``) or, once the package is installed, as the
console commands of setup.py's ``CONSOLE_SCRIPTS`` (``gcvideo-train ...``), which call the same
``main``; installed, this folder is the package ``gcvideo.tools``.
"""
