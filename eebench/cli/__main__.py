"""``python -m eebench.cli``: the ``eebench`` command."""
import sys

from eebench.cli.main import main

sys.exit(main())
