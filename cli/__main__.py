"""``python -m cli ARGS``: the same as ``keel ARGS``."""

import sys

from cli.main import main

sys.exit(main())
