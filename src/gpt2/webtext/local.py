"""datatrove's local executor as `gpt2 webtext` runs it: every process it starts ends with the run (a run killed
with SIGKILL leaves no worker, pool or manager behind), and what its tasks write (datatrove's logs, its steps'
progress bars, library warnings) goes to each task's files under OUTPUT/logs/PIPELINE/logs, not to the terminal,
where the command reports the stages itself."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any, TextIO

from datatrove.executor import LocalPipelineExecutor
from datatrove.utils.stats import PipelineStats

_PR_SET_PDEATHSIG = 1
_terminal: TextIO | None = None  # the task's own stderr while it writes to its file
_LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"


_armed_in = 0  # the process that asked already


def die_with_parent() -> None:
    """Has Linux kill this process when the one that started it dies (PR_SET_PDEATHSIG), so that no worker
    outlives a killed run; once per process, and a no-op elsewhere than Linux."""
    global _armed_in
    if not sys.platform.startswith("linux") or _armed_in == os.getpid():
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _armed_in = os.getpid()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _task_logger(logging_dir: Any, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
    """datatrove's add_task_logger without its terminal sink: the task's log file only."""
    from loguru import logger

    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    logger.add(logfile, colorize=False, level="DEBUG", format=_LOG_FORMAT)
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


def _close_task_logger(logfile: Any) -> None:
    from loguru import logger

    logger.complete()
    logger.remove()
    logfile.close()


def _file_logs_only() -> tuple[Any, Any]:
    """Points datatrove's executors at _task_logger and drops loguru's terminal sink; returns what was there."""
    import datatrove.executor.base as base
    from loguru import logger

    saved = base.add_task_logger, base.close_task_logger
    base.add_task_logger, base.close_task_logger = _task_logger, _close_task_logger
    logger.remove()
    return saved


@contextmanager
def logs_in_files() -> Iterator[None]:
    """datatrove's loguru output off the terminal while the block runs: its tasks log to their files, the rest is
    dropped (the same facts are in each stage's stats files); its default sink comes back after."""
    import datatrove.executor.base as base
    from datatrove.utils.logging import setup_default_logger

    saved = _file_logs_only()
    try:
        yield
    finally:
        base.add_task_logger, base.close_task_logger = saved
        setup_default_logger()


def _start_worker() -> None:
    die_with_parent()
    _file_logs_only()  # a pool worker runs only our tasks: no need to put datatrove's logging back


def terminal() -> TextIO:
    """Where our own steps' progress bars go: the terminal, also while a task's stderr goes to its file."""
    return _terminal or sys.stderr


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    global _terminal
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = sys.stderr
    with open(path, "a", encoding="utf-8", errors="replace") as f:
        _terminal, sys.stderr = saved, f
        try:
            yield
        finally:
            sys.stderr, _terminal = saved, None


class LocalExecutor(LocalPipelineExecutor):
    """datatrove's LocalPipelineExecutor, running the unfinished tasks in this process (one worker) or in a pool
    whose workers die with this process; without the multiprocessing Manager datatrove starts, which outlived a
    killed run."""

    def run(self) -> PipelineStats:
        ranks = self.get_incomplete_ranks(range(self.local_rank_offset, self.local_rank_offset + self.local_tasks))
        self._launched = True
        if not ranks:
            return PipelineStats()
        self.save_executor_as_json()
        with logs_in_files():
            if self.workers == 1:
                pipeline, stats = self.pipeline, []
                for rank in ranks:
                    self.pipeline = deepcopy(pipeline)  # each task starts from fresh steps, as datatrove's does
                    stats.append(self._run_for_rank(rank))
                self.pipeline = pipeline
            else:
                import multiprocess

                context = multiprocess.get_context(self.start_method)
                with context.Pool(min(self.workers, len(ranks)), initializer=_start_worker) as pool:
                    stats = list(pool.imap_unordered(self._run_for_rank, ranks))
        return sum(stats, start=PipelineStats())

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        with _stderr_to(Path(self.logging_dir.path) / "logs" / f"task_{rank:05d}.stderr"):
            return super()._run_for_rank(rank, local_rank, node_rank)
