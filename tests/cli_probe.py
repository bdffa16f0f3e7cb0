"""Run ``atomate2-otf`` with a flag file that says when the chain workers are mid-update.

``python -m tests.cli_probe FLAG ARGS...`` runs ``atomate2_otf.cli.main(ARGS)`` unchanged,
except that the first progress message of a ChainPool update (sent by a worker from inside
an SGHMC chain) writes ``FLAG`` with the pool's worker process ids, one per line. The
process-hygiene tests signal the command once the flag exists, so they hit a real update.
"""

from __future__ import annotations

import sys
from pathlib import Path


def install_flag(flag: Path) -> None:
    from atomate2_otf.bnn.parallel import ChainPool

    original = ChainPool.update

    def update(self, posterior, config, callback=None):
        def on_progress(chain: int, t: int) -> None:
            if not flag.exists():
                tmp = flag.with_suffix(".tmp")
                tmp.write_text("".join(f"{pid}\n" for pid in self.pids))
                tmp.rename(flag)
            if callback is not None:
                callback(chain, t)

        return original(self, posterior, config, on_progress)

    ChainPool.update = update


def main(argv: list[str]) -> int:
    from atomate2_otf.cli import main as cli_main

    install_flag(Path(argv[0]))
    return cli_main(argv[1:])


if __name__ == "__main__":
    from tests.cli_probe import main as importable_main  # Makers resolve as tests.*

    sys.exit(importable_main(sys.argv[1:]))
