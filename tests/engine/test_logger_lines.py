"""The run's one-line messages (a stop signal's "saved ..." line) start on their own line on a terminal
where a progress bar is being drawn, instead of being glued to the end of the bar (seen in the README walk,
bench/readme_walk.py: "epoch 2/3:   0%|     | 0/3 [00:00<?, ?it/s]SIGINT: saved ...")."""
import io
import sys

from gcvideo.engine.logger import RunLogger


class Terminal(io.StringIO):
    """stdout and stderr of one terminal: what both streams write, in order."""

    def isatty(self):
        return True


def test_info_during_a_bar_starts_its_own_line(tmp_path, monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    log = RunLogger(str(tmp_path), enabled=True, progress=True)
    bar = log.progress_bar(total=3, initial=0, desc="epoch 2/3")
    bar.update(1)
    bar.refresh()
    log.info("SIGINT: saved ckpt.pth; run the same command again to resume")
    bar.close()
    log.close()
    text = term.getvalue()
    before, sep, _ = text.partition("SIGINT: saved ckpt.pth; run the same command again to resume\n")
    assert sep, text
    assert "epoch 2/3" in before  # the bar was drawn first
    # what a terminal shows: after the last carriage return or newline before the message, nothing
    assert before.endswith(("\r", "\n")), repr(before[-80:])
