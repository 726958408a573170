"""``python -m segagent_backend.cli``: the ``segagent`` command."""
import sys

from . import main

sys.exit(main())
