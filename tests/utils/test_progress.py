"""Progress bars: redraw every second on a terminal, rarely in a log file."""
import io

import pytest

from gcvideo.utils.progress import LOG_INTERVAL_S, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, interval", [(_Terminal(), 1.0), (io.StringIO(), LOG_INTERVAL_S)])
def test_redraw_interval_follows_the_stream(stream, interval):
    bar = progress_bar(total=1000, desc="x", file=stream)
    assert bar.mininterval == interval
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().replace("\r", "\n").split("\n")
    drawn = [ln for ln in lines if ln.startswith("x:")]
    if interval == LOG_INTERVAL_S:  # a fast loop in a log file: the first and the final state only
        assert len(drawn) == 2 and "1000/1000" in drawn[-1]
    else:
        assert "1000/1000" in drawn[-1]
