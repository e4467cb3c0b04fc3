"""The ``spkdiff`` command and its ``spkdiff-export`` alias.

Each subcommand lives in the module that owns its work; that module defines
``add_arguments(parser)`` and ``run(args) -> int``, and only the chosen subcommand's module is
imported.  Modules keep heavy imports inside ``run`` so ``--help`` stays fast.  A
:class:`~spkdiff.errors.SpkdiffError` becomes one line on stderr and exit status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("spkdiff.train.command", "train the VQ-SVAE (stage 1) and/or the SDID (stage 2)"),
    "sample": ("spkdiff.sample_command", "generate images from a run, a bundle or a pretrained model"),
    "eval": ("spkdiff.eval.command", "FID/KID/CFD/precision-recall/MSE/SSIM of a run"),
    "export": ("spkdiff.export.command", "export the SNN stages to NIR, ONNX or a Lava bundle"),
    "sim": ("spkdiff.simulator.command", "simulated on-chip sampling with SOP, energy and mapping report"),
    "reconstruct": ("spkdiff.reconstruct_command", "encode and decode images on torch, the simulator or Lava "
                    "(MSE, 1-SSIM, energy)"),
}


class Parser(argparse.ArgumentParser):
    """argparse with the promised one-line usage error (``prog: error: ...``, exit 2), no usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def one_line(message: object) -> str:
    """A message as one line (a YAML snippet or a chained reason must not spread over several)."""
    return " ".join(str(message).split()) or "unknown error"


def build_parser(command: str | None = None, prog: str = "spkdiff") -> argparse.ArgumentParser:
    """The parser of one subcommand (importing only its module), or the top-level overview."""
    if command is not None:
        module = importlib.import_module(COMMANDS[command][0])
        parser = Parser(prog=prog, description=COMMANDS[command][1])
        module.add_arguments(parser)
        parser.set_defaults(_module=module)
        return parser
    parser = Parser(prog="spkdiff", description="Spiking-Diffusion toolchain: train, "
                                     "export to NIR/ONNX/Lava, simulate on a Loihi-style chip.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _dispatch(command: str, prog: str, argv: list[str]) -> int:
    from spkdiff.allocator import keep_freed_memory
    from spkdiff.errors import SpkdiffError

    try:
        parser = build_parser(command, prog=prog)
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help (0) or a usage error (2, one line): a status, also in-process
            return done.code if isinstance(done.code, int) else 2
        keep_freed_memory()
        return int(args._module.run(args) or 0)
    except SpkdiffError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permissions, a vanished file: the user's environment, not a bug
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {where}{one_line(err.strerror or err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A second Ctrl-C must not cut this message short (the training loop already saved its checkpoint).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        print(f"{prog}: interrupted", file=sys.stderr)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return _dispatch(argv[0], f"spkdiff {argv[0]}", argv[1:])
    build_parser().parse_args(argv)  # prints the overview / usage error and exits
    return 2


def export_main(argv: list[str] | None = None) -> int:
    """``spkdiff-export`` is ``spkdiff export``."""
    return _dispatch("export", "spkdiff-export", sys.argv[1:] if argv is None else list(argv))
