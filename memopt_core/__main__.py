"""``python -m memopt_core ...``: see memopt_core.cli."""
import sys

from memopt_core.cli import main

sys.exit(main())
