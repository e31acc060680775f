"""The ``edgetl`` command line: thin wrappers that parse arguments and call one library function."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Sequence

from edgetl_runtime.errors import EdgeTLError
from edgetl_runtime.terminal import escape, escaped_output
from edgetl_runtime.terminal import one_line as joined
from edgetl_runtime.versions import distribution_version

COMMANDS = ("finetune", "export", "merge", "bench", "demo")  # modules of edgetl.commands (export has inspect)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default, once: not on required options, flags, options without one (None), or help that
    already says it; docstring markup (````name````) shown as plain backquotes."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("``", "`")
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return text if "%(default)" in text else f"{text} (default: %(default)s)"

    def _format_text(self, text: str) -> str:
        return super()._format_text(text.replace("``", "`"))


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's --help prints each flag's default (see :class:`HelpFormatter`)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version('edgetl')}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = f"edgetl.commands.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(subparsers)
    _show_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def one_line(message: Warning | str, *_: object, **__: object) -> None:  # not Python's file:line form
        print(f"edgetl {args.command}: warning: {escape(joined(str(message)))}", file=sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = one_line
    try:
        with escaped_output():  # labels, file names and manifest strings reach a terminal
            try:
                return int(args.func(args) or 0)
            except EdgeTLError as exc:  # one line: a list of problems follows its summary on the same line
                print(f"edgetl {args.command}: error: {escape(joined(str(exc)))}", file=sys.stderr)
                return 2
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
