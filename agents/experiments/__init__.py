"""Experiments over the methods: one search, a bench of methods × seeds, the suite, statistics and reports."""
