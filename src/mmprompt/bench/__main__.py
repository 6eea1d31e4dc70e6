"""Child-process entry point of the speed measurements (``python -m mmprompt.bench --child``)."""

import sys

from .core import main

sys.exit(main())
