"""`python -m cadence ...`: what torchrun and accelerate launch run (`torchrun -m cadence train CONFIG`)."""

import sys

from cadence.cli import main

if __name__ == "__main__":
    sys.exit(main())
