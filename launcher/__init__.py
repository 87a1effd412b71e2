"""launcher: turns a run config and a cluster description into torchrun, DeepSpeed-runner or SLURM jobs."""
__version__ = "0.1.0"
