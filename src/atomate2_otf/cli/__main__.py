"""``python -m atomate2_otf.cli``: the same as the ``atomate2-otf`` command."""

import sys

from atomate2_otf.cli import main

sys.exit(main())
