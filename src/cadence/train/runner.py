"""`cadence train CONFIG`: resolve the config, build the run, resume if possible, train, report.

Under torchrun / accelerate launch every process runs this: it joins the process group first
(`cadence.parallel.launch.start_parallel`), the main rank alone takes the run-folder lock and writes
log.txt, and the others follow its decisions (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

import torch

log = logging.getLogger(__name__)

OOM_ADVICE = (
    "out of memory. Knobs that lower memory: train.batch_size: 1, smaller datasets[].resolution or "
    "max_pixels_per_frame, fewer datasets[].num_frames, train.gradient_checkpointing: true, "
    "model.low_vram: true (idle expert off the GPU), train.cache_text_embeddings: true (text encoder unloaded), "
    "a lower network.linear rank."
)

DETERMINISM_ADVICE = (
    "train.deterministic: true asks for deterministic kernels only, and this operation has none: %s. "
    "Set train.deterministic: false (resume then matches within the GPU's run-to-run noise) or change the "
    "option that picks this kernel (e.g. train.attention_backend)."
)


def attach_log_file(path: Path) -> logging.Handler:
    """Mirror the run's log into {run_dir}/log.txt (appended across resumes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run_training(
    config_path: str | Path,
    exiting: bool = False,
    dataset_config: str | Path | None = None,
    restart: bool = False,
) -> int:
    """Train the job in `config_path`. `exiting=True` (the CLI) keeps ignoring signals after a clean stop.
    `dataset_config` (a musubi-tuner dataset file) replaces the config's datasets. `restart` moves a previous
    run's files aside and starts at step 0 (without it a run folder resumes, or refuses to overwrite)."""
    from cadence.config.errors import ConfigError
    from cadence.config.loader import load_config
    from cadence.data.media import DatasetError
    from cadence.models.base import ModelLoadError
    from cadence.parallel.launch import start_parallel
    from cadence.train.checkpoint import CheckpointManager, RunPaths
    from cadence.train.loop import StopFlag, Trainer
    from cadence.train.rng import deterministic_algorithms
    from cadence.train.run_history import (
        ANY_LABEL,
        NO_STATE,
        RunFolderNotResumable,
        move_previous_run,
        refuse_fresh_start,
    )
    from cadence.train.run_lock import RunLockedError, run_folder_lock
    from cadence.train.setup import build_training

    try:
        cfg = load_config(config_path, dataset_config)
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    try:
        parallel = start_parallel(cfg)  # a world of one without torchrun's variables
    except ValueError as error:  # malformed launch variables (the message names the variable)
        log.error("%s", error)
        return 2
    lock = ExitStack()  # the run-folder lock, held until training ends (by the main rank: one job, one lock)

    def claim_folder() -> None:
        lock.enter_context(run_folder_lock(cfg.run_dir))
        if restart:
            move_previous_run(RunPaths(cfg.run_dir, cfg.name))
        elif not CheckpointManager(RunPaths(cfg.run_dir, cfg.name), 1, ANY_LABEL).complete_steps():
            # before minutes of model loading: a folder of LoRA files without any state cannot resume
            refuse_fresh_start(RunPaths(cfg.run_dir, cfg.name), ANY_LABEL, NO_STATE)

    try:
        parallel.on_main(claim_folder)
    except (RunLockedError, RunFolderNotResumable, ValueError, OSError) as error:
        lock.close()
        parallel.close()
        log.error("%s", error)  # before log.txt is attached: the run folder is not this run's to write
        return 2
    own_logger, root_logger = logging.getLogger("cadence"), logging.getLogger()
    own_level, root_level = own_logger.level, root_logger.level
    if root_level > logging.INFO:  # log.txt holds the INFO lines; both levels are restored at the end
        root_logger.setLevel(logging.INFO)
    detach_logs = parallel.logs(lambda: attach_log_file(cfg.run_dir / "log.txt"))
    if cfg.logging.verbose:  # Cadence's own debug lines; third-party libraries stay at INFO
        own_logger.setLevel(logging.DEBUG)
    stop = StopFlag()
    try:
        # before build_training: the switch must precede the first CUDA (cuBLAS) call
        with deterministic_algorithms(cfg.train.deterministic):
            try:
                setup = build_training(cfg, parallel)
            except KeyboardInterrupt:
                # cache entries are written atomically one by one: the next run reuses what was finished
                log.warning("interrupted during setup/caching; finished cache entries are kept")
                return 130
            except (ModelLoadError, ConfigError, DatasetError, ValueError, FileNotFoundError) as error:
                # setup errors are the user's to fix (config, model folder, data); the message says what to do
                log.error("%s", error)
                log.debug("setup failed", exc_info=True)
                return 2
            stop.install()  # from here a Ctrl-C checkpoints at the next step boundary and exits 0
            return Trainer(setup, stop).run()
    except torch.OutOfMemoryError:
        log.error(OOM_ADVICE)
        return 4
    except RuntimeError as error:
        # torch's refusal of an op without a deterministic kernel (its message says "deterministic")
        if not (cfg.train.deterministic and "deterministic" in str(error)):
            raise
        log.error(DETERMINISM_ADVICE, str(error).strip().rstrip("."))
        log.debug("no deterministic kernel", exc_info=True)
        return 2
    finally:
        lock.close()
        stop.uninstall(keep_ignoring=exiting)
        own_logger.setLevel(own_level)
        root_logger.setLevel(root_level)
        detach_logs()
        parallel.close()


def train_command(args: argparse.Namespace) -> int:
    return run_training(
        args.config,
        exiting=True,
        dataset_config=getattr(args, "dataset_config", None),
        restart=getattr(args, "restart", False),
    )
