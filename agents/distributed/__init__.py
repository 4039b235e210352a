"""Distributed self-play. :mod:`agents.distributed.ray_selfplay` imports Ray: import it only when workers are
asked for (``--workers N``); this package itself imports nothing."""
