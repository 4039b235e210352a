"""Running azgym over several processes: the data-parallel learner (:mod:`agents.distributed.ddp`) and
self-play in Ray actors (:mod:`agents.distributed.ray_selfplay`, which imports Ray: import it only when workers
are asked for, ``--workers N``; this package itself imports nothing heavy)."""
