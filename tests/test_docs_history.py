"""The docs a user reads (README, docs/*.md, the shipped configs' comments) say what is and how to
use it; how it came to be belongs in git history and bench/results, not there."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NARRATION = re.compile(r"\b(used to|before this( change)?|issue \d+|session \d+|the previous recipe|"
                       r"has since|tried before|earlier recipe|recipe of \d{4}-\d\d-\d\d)\b", re.I)
FILES = ["README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT)),
         *sorted(glob.glob("configs/*/*.yaml", root_dir=ROOT))]


@pytest.mark.parametrize("name", FILES)
def test_no_history_narrated(name):
    text = open(os.path.join(ROOT, name), encoding="utf-8").read()
    found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for m in NARRATION.finditer(text)]
    assert not found, found


def test_the_pattern_finds_narration():
    assert NARRATION.search("Why runs used to spread (67.5-100% over the seeds and recipes tried before)")
    assert NARRATION.search("in the tries of issue 36") and not NARRATION.search("the issue of a key")
