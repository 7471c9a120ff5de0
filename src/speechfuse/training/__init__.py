"""How a model learns: the Lightning module, the runner, checkpoints, the run folder."""
