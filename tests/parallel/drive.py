"""Worker entry for the torchrun tests: `cadence train` for each config, in one torchrun launch.

The driver joins the default process group once; each run makes its own groups on it and leaves them at
its end (cadence.parallel); everything else runs as under `torchrun -m cadence train CONFIG` (one test
launches that exactly). Only the process start-up is shared between the runs. Rank 0 writes the exit
codes to the JSON file named first.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed

from cadence.cli import main

if __name__ == "__main__":
    torch.set_num_threads(1)
    # joined once for all runs: a default group left and joined again would meet the previous one's
    # addresses in torchrun's store; each run then makes (and leaves) only its own groups
    torch.distributed.init_process_group("gloo")
    codes = [main(["train", config]) for config in sys.argv[2:]]
    torch.distributed.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        Path(sys.argv[1]).write_text(json.dumps(codes))
    sys.exit(max(codes, default=0))
