"""The one command-line face: `ood-audit <command>`. Errors are one line, never a traceback."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ood_audit.errors import EXIT_STATUSES, OodAuditError


class _ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` for progress; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{self.formatTime(record, self.datefmt)} " \
            f"{record.levelname}: {record.getMessage()}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, naming the argument
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ood_audit.commands import COMMANDS

    epilog = "exit status:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in sorted(EXIT_STATUSES.items()))
    p = _Parser(prog="ood-audit", description="Audit image datasets for out-of-distribution samples.",
                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ood_audit.console import ConsoleHandler, redact_root_handlers

    handler = ConsoleHandler()
    handler.setFormatter(_ConsoleFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    redact_root_handlers()  # no secret in any log line, at any level (-v included)
    # Libraries' INFO lines (botocore's "Found credentials in environment variables", faiss' loader) are
    # not progress for people; -v shows them.
    if not args.verbose:
        for name in ("faiss.loader", "botocore", "boto3", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except OodAuditError as e:
        return _fail(e)
    except Exception as e:  # noqa: BLE001 - storage failures a command did not translate: same one line
        from ood_audit.io.fs import storage_error

        err = storage_error(e)
        if err is None:
            raise
        return _fail(err)
    except KeyboardInterrupt:
        print("ood-audit: interrupted", file=sys.stderr)
        return 130


def _fail(e: OodAuditError) -> int:
    print(f"ood-audit: error: {' '.join(str(e).split())}", file=sys.stderr)
    return int(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())
