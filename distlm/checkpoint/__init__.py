"""Checkpoints: directory layout, atomic commit, `latest` pointer and resume."""

from distlm.checkpoint.manager import CheckpointError, CheckpointManager

__all__ = ["CheckpointError", "CheckpointManager"]
