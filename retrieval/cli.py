"""`retrieve` command line: parses options, calls one library function per command, formats output.

No pipeline logic lives here. Library errors (retrieval.errors.RetrievalError) become a one-line message on
stderr and a non-zero exit code.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from retrieval import __version__
from retrieval.errors import RetrievalError


class _Group(click.Group):
    """Maps library errors to `error: <message>` + exit code instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RetrievalError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retrieve")
def cli() -> None:
    """Text -> image search with calibrated 0-1 relevance scores."""


# Commands are added below, one block each: report, train, score, evaluate, build-index, query, serve.


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
