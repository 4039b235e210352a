"""Running azgym over several processes: the data-parallel learner (:mod:`agents.distributed.ddp`)."""
