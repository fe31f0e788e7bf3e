"""What every `python -m gpu.X` entry point shares: the sub-command parser, and the one place where a library
exception becomes a one-line message and an exit status. Library code raises; only entry points exit.

Exit statuses: 0 success, 2 bad input or an unusable file/folder (ValueError, OSError: the message names it and
the fix), 1 a run that failed on its own (an exception carrying `exit_code`, e.g. gpu.train's non-finite loss),
130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

USER_ERRORS = (ValueError, OSError)  # OSError: missing file, permission denied, disk full; ValueError: bad values,
                                     # malformed JSON (json.JSONDecodeError) and bad UTF-8 (UnicodeDecodeError) included


def command_parser(prog: str, doc: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """An argparse parser for a `python -m gpu.X COMMAND` tool: first paragraph of `doc` as its description, the rest
    as its epilog; returns it with its required sub-command group."""
    head, _, tail = doc.partition("\n\n")
    ap = argparse.ArgumentParser(prog=prog, description=head, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=tail or None)
    return ap, ap.add_subparsers(dest="cmd", required=True)


def error_exit_code(err: BaseException) -> int | None:
    """The exit status for an exception an entry point should report in one line, or None to let it propagate."""
    if isinstance(err, KeyboardInterrupt):
        return 130
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(err, USER_ERRORS):
        return 2
    return None


def error_message(err: BaseException) -> str:
    """The one line an entry point prints for `err`: its message, with the file named for an OSError (a write that
    failed on a full disk carries no file name of its own) and `error: ` in front unless the exception says
    otherwise (a run stopped by a signal prints its own line)."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, OSError) and err.strerror:  # "[Errno 28] No space left on device: 'x'" -> "No space ...: x"
        message = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        message = str(err) or type(err).__name__
    return getattr(err, "prefix", "error: ") + " ".join(message.split("\n"))


def run_command(compute, report=None) -> int:
    """Run `compute()`; on success pass its result to `report` (if given) and return 0. A user error or a failed run
    prints one line (error_message) on stderr and returns its exit status (error_exit_code); anything else is a bug
    and keeps its traceback."""
    try:
        result = compute()
    except BaseException as err:
        code = error_exit_code(err)
        if code is None:
            raise
        sys.stdout.flush()
        if not getattr(err, "quiet", False):  # e.g. a torchrun rank other than 0, whose rank 0 says it
            print(error_message(err), file=sys.stderr, flush=True)
        return code
    if report is not None:
        report(result)
    return 0


def print_result(compute) -> int:
    """Run an analysis (a thunk returning dict(md=..., paths=...)): print its table and the files it wrote, or a
    one-line error with exit status 2 for bad input."""
    def report(res):
        print(res["md"])
        print("wrote " + ", ".join(res["paths"]))
    return run_command(compute, report)


# ----------------------------------------------------------------------------- option checks shared by the commands
def check_option(flag: str, value, ok: bool, accepted: str) -> None:
    """ValueError `--flag=value: expected <accepted>` unless ok."""
    if not ok:
        raise ValueError(f"{flag}={value!r}: expected {accepted}")


def check_int(flag: str, value, least: int = 1, optional: bool = False) -> None:
    """An int option that must be >= least (None allowed when optional)."""
    if value is None and optional:
        return
    check_option(flag, value, isinstance(value, int) and value >= least, f"an int >= {least}")


def check_float(flag: str, value, low: float | None = None, high: float | None = None, open_low: bool = False,
                open_high: bool = False, optional: bool = False) -> None:
    """A finite float option in [low, high] (either end open on request, None = unbounded)."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (low is None or (value > low if open_low else value >= low))
    ok = ok and (high is None or (value < high if open_high else value <= high))
    lo = "" if low is None else f"{low} {'<' if open_low else '<='} "
    hi = "" if high is None else f" {'<' if open_high else '<='} {high}"
    check_option(flag, value, ok, f"a finite number{' ' if lo or hi else ''}{lo}{'x' if lo or hi else ''}{hi}")


def read_json(path, fix: str = "") -> object:
    """The JSON document at `path`; ValueError naming the file (and `fix`) when it is not valid UTF-8 JSON, OSError
    (which names it) when it cannot be read."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}){'; ' + fix if fix else ''}") from None


def read_text(path, what: str = "file") -> str:
    """A UTF-8 text file; ValueError naming it when it is not UTF-8."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path!r} is not UTF-8 text (byte {err.start}: {err.reason}); convert it to "
                         f"UTF-8") from None
