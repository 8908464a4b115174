"""aios.trainer: runs placed jobs. launcher.py starts a job's workers through the device agents (one per device,
torchrun-compatible environment) and turns their exits into JobSucceeded/JobFailed; it stops workers of preempted
and cancelled jobs. The built-in data-parallel trainer, collectives and checkpoints come with the trainer issue."""

EXIT_INTERRUPTED = 75
"""A worker's exit code for "interrupted: resume me from my last checkpoint" (EX_TEMPFAIL): the built-in worker stopped
before its last step by a signal, or cut off from NATS; any command may use it. The built-in worker exited 0 when
stopped, which the launcher took for success whenever AIOS had not asked for the stop (a SIGTERM from elsewhere: the
job "succeeded" half-trained and its model was registered), and a NATS restart crashed and failed multi-rank jobs."""

MAX_INTERRUPTIONS_WITHOUT_PROGRESS = 5
"""Requeues on exit 75 in a row without progress (``state.made_progress``) after which the next exit 75 fails the job:
a program that exits 75 at once requeued itself for ever (Slurm stops automatic requeues at MaxBatchRequeue, 5 by
default)."""
