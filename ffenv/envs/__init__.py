"""The environment: the shared backend (model, statistics, windows, cache), the unit features, ``FFPruneEnv``
(reset / step / score and the population steps) and the population evaluator protocol."""
