"""`python -m gpu.analyze SUBCOMMAND RUN`: see gpu.analyze.cli."""
import sys

from .cli import main

sys.exit(main())
