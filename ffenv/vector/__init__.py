"""Batching: one same-step-autoreset vector env over the population steps, and the Ray population evaluator."""
