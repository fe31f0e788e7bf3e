"""`python -m gpu.experiments`: see gpu.experiments."""
import sys

from .cli import main

sys.exit(main())
