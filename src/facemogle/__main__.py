"""``python -m facemogle`` (also ``accelerate launch -m facemogle ...``)."""

import sys

from facemogle.cli import main

sys.exit(main())
