"""asv benchmarks for kstore (see asv.conf.json at the top of the repository)."""
