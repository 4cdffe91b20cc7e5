"""``medprobe`` entry point: discovers ``medprobe.cli.cmd_*`` modules, each adding one sub-command."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
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
