"""``medprobe`` entry point: discovers ``medprobe.cli.cmd_*`` modules, each adding one sub-command."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from medprobe.errors import MedprobeError
from medprobe.version import __version__

EPILOG = """\
Start with: medprobe demo (offline, a pipeline check), then medprobe run --help.
Lists: medprobe models (encoders), medprobe datasets (dataset kinds), medprobe heads (heads per task family),
medprobe config keys (every task key). Each COMMAND has --help with examples."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medprobe", description="Benchmark frozen vision foundation models as "
                                "universal encoders for medical imaging.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"medprobe {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, e.g. medprobe -v run t.yaml")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    import medprobe.cli as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_")):
        importlib.import_module(f"medprobe.cli.{mod}").register(sub)
    return p


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread: extraction and training stop at the next
    batch, finished shards stay (atomic writes) for a resumed run, nothing is stored, and :func:`main` exits
    130. SIGINT is set explicitly because a shell starting ``medprobe ... &`` hands it over ignored (Python then
    never installs its own handler, and Ctrl-C / ``kill -INT`` did nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:  # a caller in the same process (tests, notebooks) gets its own handlers back
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with stop_on_signals():
            return int(args.func(args) or 0)
    except MedprobeError as e:
        print(f"medprobe: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except OSError as e:  # the machine said no (disk full, permissions, a folder removed under a running task)
        where = f"{e.filename}: " if e.filename else ""
        print(f"medprobe: error: {where}{e.strerror or type(e).__name__} (errno {e.errno})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medprobe: interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
