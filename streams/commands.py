"""Commands with more moving parts: generate and demo (filled in below)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    return None
