"""The AlphaZero loop: its config, self-play, the run (train, evaluate, checkpoint) and evaluation."""
