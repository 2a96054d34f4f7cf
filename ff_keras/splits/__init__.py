"""Identity-disjoint splits: face descriptors, grouping, split assignment, leakage checks and report."""
