"""`python -m gpu.train` (and `torchrun ... -m gpu.train`): see gpu.train."""
import sys

from .runner import main

sys.exit(main())
