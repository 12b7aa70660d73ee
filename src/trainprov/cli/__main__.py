"""`python -m trainprov.cli`: the `trainprov` command."""

import sys

from . import main

sys.exit(main())
