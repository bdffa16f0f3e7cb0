"""``atomate2-otf``: run on-the-fly fine-tuning MD from the shell.

    atomate2-otf demo                      # ethanol, 300 K, CHGNet + GFN2-xTB, embedded store
    atomate2-otf run POSCAR --reference emt --steps 2000 --store runs/ [--json]
    atomate2-otf batch candidates/ --reference emt --store runs/ [--launchpad my_launchpad.yaml]
    atomate2-otf status --store runs/
    atomate2-otf resume --store runs/ [--json]   # finish runs killed mid-way
    atomate2-otf report --store runs/ [--run RUN_ID | --batch] [--out DIR]   # figures, summary

``--store`` is a folder (the embedded store), a jobflow store file (.yaml/.json, e.g.
MongoDB + GridFS) or a ``mongodb://`` URI.

Bad input prints one line starting with "error:" and exits with status 2 (no traceback).
"""

from __future__ import annotations

import logging
import sys

from atomate2_otf.cli.commands import COMMANDS
from atomate2_otf.cli.parser import DEFAULT_STORE, UsageError, build_parser
from atomate2_otf.cli.process import command_stdout, interruptible

logger = logging.getLogger("atomate2_otf.cli")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:  # known third-party chatter would bury the summary (-v shows it)
        from atomate2_otf.runtime import silence_known_warnings

        silence_known_warnings()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from atomate2_otf.local import RunInterrupted
    from atomate2_otf.resources import resources
    from atomate2_otf.runtime import keep_freed_memory

    keep_freed_memory()  # the command owns its process (see the function's docstring)
    with command_stdout() as out, interruptible():
        args.out = out
        try:
            return COMMANDS[args.command](args)
        except UsageError as err:
            sys.stderr.write(f"error: {err}\n")
            return 2
        except RuntimeError as err:  # a job failed: its traceback is in the log (-v)
            if args.verbose:
                logger.exception("run failed")
            sys.stderr.write(f"error: {err}\n")
            return 1
        except RunInterrupted as err:
            resources().close(timeout=0)  # the chain workers stop now, not at exit
            store = getattr(args, "store", DEFAULT_STORE)
            sys.stderr.write(f"error: {err}; the run is journalled as interrupted: "
                             f"'atomate2-otf resume --store {store}' finishes it\n")
            return 128 + err.signum

