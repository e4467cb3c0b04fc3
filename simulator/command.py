"""Placeholder subcommand: replaced by its issue's implementation."""

import argparse

from spkdiff.errors import SpkdiffError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SpkdiffError("this command is not implemented yet")
