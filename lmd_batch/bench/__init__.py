"""LMD benchmark: prompt sets and layout-level predicates, kept apart from the pipeline so they can be checked offline."""
