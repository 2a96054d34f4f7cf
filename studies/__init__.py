"""Study, benchmark and test helpers used by scripts/ and tests/ (not part of the ff_keras package)."""
