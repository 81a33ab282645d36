"""The pieces the training loop calls: runtime, checkpoints, resume, signals, ranks, optimizers."""
