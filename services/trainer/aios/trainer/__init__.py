"""aios.trainer: runs placed jobs. launcher.py starts a job's workers through the device agents (one per device,
torchrun-compatible environment) and turns their exits into JobSucceeded/JobFailed; it stops workers of preempted
and cancelled jobs. The built-in data-parallel trainer, collectives and checkpoints come with the trainer issue."""
