"""BrokenVideoTracker on a rerun: entries of videos no longer in the annotation file do not count;
the limit is printed as it is."""
import pytest

from gcvideo.data import BrokenVideoTracker, TooManyBrokenVideos


def test_rerun_counts_only_videos_of_the_current_list(tmp_path):
    (tmp_path / "broken_videos.txt").write_text("old/a.mp4\tmissing\nold/b.mp4\tempty\nkeep/c.mp4\tunreadable\n")
    current = ["keep/c.mp4", "keep/d.mp4", "keep/e.mp4"]
    t = BrokenVideoTracker(str(tmp_path), num_videos=3, max_fraction=0.5, videos=current)
    assert t.num_broken == 1 and list(t.broken) == ["keep/c.mp4"]
    # without the list (older callers) every entry counts, as before
    with pytest.raises(TooManyBrokenVideos):
        BrokenVideoTracker(str(tmp_path), num_videos=3, max_fraction=0.5).check()


def test_limit_is_printed_unrounded():
    t = BrokenVideoTracker(None, num_videos=10, max_fraction=0.195)
    t.update(["a.mp4\tx"])
    with pytest.raises(TooManyBrokenVideos, match=r"more than DATA\.MAX_BROKEN_FRACTION = 0\.195 \(1\.95 videos\)"):
        t.update(["b.mp4\ty"])
