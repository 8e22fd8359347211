"""Job control under `tether run` on a terminal (issue 11, item 24): as without tether, Ctrl-Z
stops the job and the shell gets its prompt back, `fg` resumes it in the foreground (it reads
the terminal again, Ctrl-C reaches it), a job started with `&` that reads the terminal stops
and `fg` brings it back, and `kill %1` ends the tree.

Driven through a real interactive bash on a pseudo-terminal, itself run as a tether tree (so
nothing of the session can outlive the test). Every step waits for the text it expects, with
a deadline, never for a time. The terminal does not echo (`stty -echo`), so what `cat` prints
is the only copy of what we type to it.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracle
import tether

PY = sys.executable
PROMPT = "tether-test$ "
TIMEOUT = 120.0  # a generous bound for a loaded 2-vCPU machine; reached only on failure

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("setsid") is None,
    reason="needs bash and setsid (util-linux) to drive a job-control shell")


class Terminal:
    """An interactive bash on a fresh pseudo-terminal, which is its controlling terminal."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        env = {**os.environ, "PS1": PROMPT, "TERM": "dumb", "HISTFILE": "/dev/null"}
        try:
            self.shell = tether.spawn(
                ["setsid", "-w", "-c", "bash", "--norc", "--noprofile", "-i"],
                stdin=slave, stdout=slave, stderr=slave, env=env)
        finally:
            os.close(slave)
        self.seen = ""  # everything read so far
        self.at = 0  # where the next expect() starts looking

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, text: str) -> str:
        """Read until ``text`` appears after the last match; return what came before it."""
        deadline = time.monotonic() + TIMEOUT
        while text not in self.seen[self.at:]:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; the terminal said:\n{self.seen[-800:]}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the shell is gone
                    chunk = b""
                assert chunk, f"the terminal closed; it said:\n{self.seen[self.at:]}"
                self.seen += chunk.decode(errors="replace")
        end = self.seen.index(text, self.at)
        before = self.seen[self.at:end]
        self.at = end + len(text)
        return before

    def command(self, line: str) -> str:
        """Run one shell command line; its output, once the next prompt is there."""
        self.send(line + "\n")
        return self.expect(PROMPT)

    def close(self) -> None:
        self.shell.kill()
        self.shell.wait()
        os.close(self.master)


@pytest.fixture
def term() -> Iterator[Terminal]:
    t = Terminal()
    try:
        t.expect(PROMPT)
        t.command("stty -echo; set -b")  # no echo; report a job's state change at once
        yield t
    finally:
        t.close()
    assert oracle.reap_until(5.0).empty


TETHER_CAT = f"{PY} -m tether run -- cat"


def test_ctrl_z_stops_the_job_and_fg_resumes_it_in_the_foreground(term: Terminal) -> None:
    term.send(TETHER_CAT + "\n")
    term.send("ping1\n")
    term.expect("ping1")  # cat runs, in the foreground: it has read the terminal
    term.send("\x1a")  # Ctrl-Z
    term.expect("Stopped")  # the shell saw its job stop ...
    term.expect(PROMPT)  # ... and has the terminal back
    assert term.command("jobs -s").count("cat") == 1
    term.send("fg\n")
    term.send("ping2\n")
    term.expect("ping2")  # cat reads the terminal again: it is in the foreground
    term.send("\x03")  # Ctrl-C reaches it
    term.expect(PROMPT)
    assert term.command("jobs").strip() == ""


def test_a_background_job_that_reads_the_terminal_stops_and_fg_brings_it_back(
        term: Terminal) -> None:
    term.send(TETHER_CAT + " &\n")
    term.expect(PROMPT)
    term.expect("Stopped")  # cat read the terminal from the background: SIGTTIN (said
    term.send("fg\n")      # after the prompt, which bash does not print again)
    term.send("ping3\n")
    term.expect("ping3")
    term.send("\x04")  # end of input: cat exits 0, and so does tether
    term.expect(PROMPT)
    assert term.command("echo status=$?").strip() == "status=0"


def test_fg_of_a_running_background_job_hands_it_the_terminal(
        term: Terminal, tmp_path: Path) -> None:
    # bash sends no SIGCONT to a job that is running when it is brought to the foreground:
    # the program's first read of the terminal, gated until after `fg`, must still reach it
    # (found by a hostile review: the job stopped at once and needed a second `fg`).
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    term.send(f"{PY} -m tether run -- sh -c 'read g < {gate}; read line; echo got-$line' &\n")
    term.expect(PROMPT)
    term.send("fg\n")
    term.expect("sh -c")  # bash names the job it brought to the foreground
    with open(gate, "w") as f:  # (opening waits for the program's read end: a barrier)
        f.write("go\n")
    term.send("ping5\n")
    term.expect("got-ping5")
    term.expect(PROMPT)


def test_kill_ends_a_stopped_job_and_its_tree(term: Terminal, tmp_path: Path) -> None:
    # The background sleep holds the write end of a FIFO: EOF on our read end is the kernel
    # saying that no process of the tree is left holding it.
    fifo = tmp_path / "held"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        term.send(f"{PY} -m tether run -- sh -c "
                  f"'exec 3>{fifo}; sleep 300 & exec 3>&-; while read l; do echo got-$l; done'\n")
        term.send("ping4\n")
        # The program's answer, not the terminal's echo of what we typed: by now the sleep
        # holds the FIFO and the program reads the terminal.
        term.expect("got-ping4")
        term.send("\x1a")
        term.expect("Stopped")
        term.expect(PROMPT)
        term.send("kill %1\n")
        term.expect("Exit 143")  # tether's status for a program ended by SIGTERM
        term.expect("\n")  # (the rest of bash's notice: the job's command line)
        assert term.command("jobs").strip() == ""
        _wait_for_eof(held)  # the sleep is gone with the tree
    finally:
        os.close(held)


def _wait_for_eof(fd: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "a process of the tree still holds the FIFO"
        select.select([fd], [], [], left)
        try:
            if os.read(fd, 64) == b"":
                return
        except BlockingIOError:
            continue
