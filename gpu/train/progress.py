"""What a run shows as it goes: a tqdm bar on a terminal; in a log file (stdout not a terminal) one plain line every
log_every steps instead of the bar's carriage-return fragments. Other lines (evaluations, warnings) always stand
on their own lines: through the bar's write() on a terminal, plain print()s otherwise (warnings on stderr)."""
from __future__ import annotations

import sys


class Progress:
    """Rank 0's progress display (nothing elsewhere, nor with --no-progress)."""

    def __init__(self, tc, start_step: int, enabled: bool):
        self.tc, self.enabled = tc, enabled and tc.progress
        self.bar = None
        if self.enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=tc.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def update(self, done: int, loss: float, depth: float, lr: float, tok_s: float) -> None:
        """After optimizer step `done`: advance the bar, or print a line every log_every steps (and at the last)."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", depth=f"{depth:.2f}", tok_s=f"{tok_s:.0f}")
        elif self.enabled and (done % self.tc.log_every == 0 or done == self.tc.max_steps):
            print(f"step {done}/{self.tc.max_steps} | loss {loss:.4f} | mean depth {depth:.2f} | lr {lr:.3g} | "
                  f"{tok_s:,.0f} tokens/s", flush=True)

    def write(self, line: str, warning: bool = False) -> None:
        """A line of its own: an evaluation on stdout, a warning on stderr."""
        stream = sys.stderr if warning else sys.stdout
        if self.bar is not None:
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
