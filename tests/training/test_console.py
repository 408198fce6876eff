"""training.console: start-up log lines written to file descriptor 2, once each."""

import os

from training.console import once_each_on_stderr

ONEDNN = "port.cc:153] oneDNN custom operations are on."
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def test_a_repeated_log_line_passes_once_and_everything_else_unchanged(capfd):
    with once_each_on_stderr():
        os.write(2, f"{PREAMBLE}\nI0000 00:00:1796602322.201766   12683 {ONEDNN}\n".encode())
        os.write(2, b"  ^^^^\n  ^^^^\nTraceback (most recent call last):\n")  # not log lines: kept, repeats too
        os.write(2, f"{PREAMBLE}\nI0000 00:00:1796602337.065836   12683 {ONEDNN}\n".encode())  # again, later
        os.write(2, b"W0000 00:00:1796602337.1   12683 port.cc:153] another message\nno newline at the end")
    assert capfd.readouterr().err == (
        f"{PREAMBLE}\nI0000 00:00:1796602322.201766   12683 {ONEDNN}\n"
        "  ^^^^\n  ^^^^\nTraceback (most recent call last):\n"
        "W0000 00:00:1796602337.1   12683 port.cc:153] another message\nno newline at the end")
    os.write(2, f"I0000 00:00:1.0   1 {ONEDNN}\n".encode())  # after the block: untouched
    assert capfd.readouterr().err == f"I0000 00:00:1.0   1 {ONEDNN}\n"
