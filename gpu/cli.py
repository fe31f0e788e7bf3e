"""What every `python -m gpu.X` entry point shares: the sub-command parser, and the one place where a library
exception becomes a one-line message and an exit status. Library code raises; only entry points exit.

Exit statuses: 0 success, 2 bad input or an unusable file/folder (ValueError, OSError: the message names it and
the fix), 1 a run that failed on its own (an exception carrying `exit_code`, e.g. gpu.train's non-finite loss),
130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import argparse
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


def run_command(compute, report=None) -> int:
    """Run `compute()`; on success pass its result to `report` (if given) and return 0. A user error or a failed run
    prints `error: <message>` on stderr and returns its exit status (error_exit_code); anything else is a bug and
    keeps its traceback."""
    try:
        result = compute()
    except BaseException as err:
        code = error_exit_code(err)
        if code is None:
            raise
        message = str(err) or type(err).__name__
        print(f"error: {message}" if code != 130 else "interrupted", file=sys.stderr)
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
