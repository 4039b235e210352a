"""Running azgym's learner over several processes: data parallelism under torchrun (:mod:`agents.distributed.ddp`).
Self-play in Ray actors is part of the loop (:mod:`agents.alphazero.ray_selfplay`); this package imports nothing
from it."""
