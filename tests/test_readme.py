"""The README's `mgr ...` commands are real: each parses with mgr's own CLI parser."""

import re
import shlex
from pathlib import Path

import pytest

from mgr.commands import COMMANDS, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands():
    text = README.read_text().replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        m = re.match(r"^\s{4}(?:[A-Z_]+=\S+\s+)*mgr (.+)$", line)
        if m:
            cmds.append(shlex.split(m.group(1).split("#", 1)[0]))
    return cmds


def test_readme_has_the_commands_of_every_job():
    kinds = {c[0] for c in readme_commands()}
    assert {"extract", "train", "evaluate", "label", "import-keras", "submit", "jobs", "reproduce"} <= kinds


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    assert argv[0] in COMMANDS
    if argv[0] == "submit":  # `mgr submit KIND ARGS`: ARGS are the local command's
        args = build_parser("submit").parse_args(argv)
        from mgr.commands.submit import job_arguments, split_submit_options

        _, rest = split_submit_options(list(args.args or []))
        job_arguments(args.kind, rest)
    else:
        args = build_parser(argv[0]).parse_args(argv)
    assert callable(args.func)
