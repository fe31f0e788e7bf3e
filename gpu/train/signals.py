"""SIGTERM (what schedulers and torchrun send) and SIGINT (Ctrl-C) during a run: finish the step, save, stop.

Inside the step loop the first signal only raises a flag; the loop finishes its current step, all processes agree
(torchrun: the flag is reduced over the ranks, so every rank stops after the same step), a checkpoint is written
and `Stopped` is raised, which an entry point turns into one line and exit status 130 (SIGINT) or 143 (SIGTERM).
A second signal, or one outside the step loop, stops at once (writes are atomic: nothing half-written is left).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stopped(Exception):
    """A run stopped on request (a signal). `exit_code` is 128 + the signal number; the message is the line to
    print (the entry point prints it without `error: `)."""

    prefix, quiet = "", False  # quiet: another process (rank 0) prints the line

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """`with StopSignals() as stop:` installs the handlers (in the main thread only) and restores the old ones.
    `stop.in_loop` says whether a stop can wait for the end of the step; `stop.received` is the first signal."""

    def __init__(self, announce: bool = True):
        self.received: int | None = None
        self.in_loop, self.announce = False, announce  # announce: rank 0 speaks for every process
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        return False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.in_loop and self.received is None:
            self.received, nl = signum, "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
            if self.announce:
                os.write(2, f"{nl}{name}: finishing this step, then writing a checkpoint (send {name} again to stop at "
                            f"once)\n".encode())
            return
        raise Stopped(f"stopped by {name} outside a training step, or at once on a second signal: nothing new saved "
                      f"(the run folder keeps its checkpoints)", EXIT_CODES[signum])

    def stopped(self, step: int, checkpoint: str, world: int) -> Stopped:
        """The exception that ends the run after `step`, saved as `checkpoint`."""
        sig = self.received if self.received is not None else signal.SIGTERM
        who = signal.Signals(sig).name if self.received is not None else "a signal to another process"
        also = f" (all {world} processes)" if world > 1 else ""
        stopped = Stopped(f"stopped by {who} after step {step}{also}: checkpoint {checkpoint} written; continue "
                          f"with --resume", EXIT_CODES[sig])
        stopped.quiet = not self.announce
        return stopped
