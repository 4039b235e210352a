"""What learns: losses, the learner, the on-disk replay buffer and checkpoints."""
