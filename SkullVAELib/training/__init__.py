"""The one training loop (checkpoints, resume, signals, CSV log, hooks) and its plan."""
