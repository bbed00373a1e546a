"""``python -m m2s2l ...`` and ``torchrun -m m2s2l train ...`` run the command line (m2s2l/cli.py)."""
import sys

from m2s2l.cli import main

sys.exit(main())
