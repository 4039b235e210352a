"""The warm start before self-play: supervised fine-tuning on reference solutions and its hyper-parameter search."""
