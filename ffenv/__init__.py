"""ffenv: layer-wise LLM pruning allocation as a gymnasium environment (FastForward Pruning).

Pipeline, one way: corpus (:mod:`ffenv.data`) → model (:mod:`ffenv.models`) → importance, once
(:mod:`ffenv.importance`) → budget projector (:mod:`ffenv.projector`) → pruning (:mod:`ffenv.pruning`)
→ evaluation (:mod:`ffenv.evaluation`) → reward (:mod:`ffenv.env`).
"""

from ffenv.projector import project_budget
from ffenv.registration import env_ids, register_envs

__version__ = "0.1.0"
__all__ = ["project_budget", "env_ids", "register_envs", "__version__"]

register_envs()
