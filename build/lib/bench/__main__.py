"""`python -m bench`: see the package docstring and `python -m bench --help`."""

import sys

from .run import main

sys.exit(main())
