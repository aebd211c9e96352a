"""The exit codes of `portjournal`, defined once: commands, help and README use these.

A script can tell an error it should report (1) from a mistyped command line (2) and from a
check that ran and found something wrong (3).
"""

import click

OK = 0                   # the command did what it was asked
ERROR = 1                # an error was reported, naming the problem and the fix
USAGE = 2                # the command line was wrong (click's usage errors): see the command's --help
CHECK_FAILED = 3         # a check ran and failed: 'journal verify' found damage, a committed restore
#                          did not read back as written, the demo's restore is not the shadow
INTERRUPTED = 130        # stopped by Ctrl-C (128 + SIGINT) before it finished

TABLE = (
    (OK, "success ('sim', 'collect' and 'serve' also end so on Ctrl-C)"),
    (ERROR, "error: the message says what is wrong and how to fix it"),
    (USAGE, "usage error: unknown command, bad option or value (see --help)"),
    (CHECK_FAILED, "check failed: 'journal verify' found damage, a restore committed"),
    (None, "with --commit did not read back as written, or the demo's restore"),
    (None, "differs from the storage model's volume"),
    (INTERRUPTED, "interrupted by Ctrl-C"),
)


def help_table() -> str:
    """The table for a help text, as one click paragraph that is not rewrapped."""
    return "\b\nExit codes:\n" + "\n".join(f"  {'' if code is None else code:<4} {meaning}"
                                          for code, meaning in TABLE)


class CheckFailed(click.ClickException):
    """A check ran and found something wrong: exit code 3."""

    exit_code = CHECK_FAILED
