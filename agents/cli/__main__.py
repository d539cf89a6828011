"""``python -m ffprune.agents.cli``: the ``ffprune`` command without the console script."""

import sys

from ffprune.agents.cli import main

sys.exit(main())
