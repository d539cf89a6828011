"""The search methods: FastForward, the stable-baselines3 agents, and the registry every experiment reads.

Adding a method is one :func:`register` call (see :mod:`ffprune.agents.methods.registry`).
"""

from ffprune.agents.methods.registry import METHODS, RunContext, SearchMethod, get_method, methods_for, register

__all__ = ["METHODS", "RunContext", "SearchMethod", "get_method", "methods_for", "register"]
