"""ffenv: layer-wise LLM pruning allocation as a gymnasium environment (FastForward Pruning).

Pipeline, one way: corpus (:mod:`ffenv.data`) → model (:mod:`ffenv.models`) → importance, once
(:mod:`ffenv.importance`) → budget projector (:mod:`ffenv.projector`) → pruning (:mod:`ffenv.pruning`)
→ evaluation (:mod:`ffenv.evaluation`) → reward (:mod:`ffenv.env`). Searches wrap the env with
:mod:`ffenv.wrappers` (curriculum, search accounting) and log with :class:`ffenv.logger.SearchLogger`.
"""

from ffenv.config import EnvConfig
from ffenv.env import FFPruneEnv, clear_cache
from ffenv.errors import FFPruneError
from ffenv.export import load_pruned
from ffenv.logger import SearchLogger
from ffenv.projector import project_budget
from ffenv.registration import env_ids, register_envs
from ffenv.wrappers import CurriculumWrapper, SearchAccounting

__version__ = "0.1.0"
__all__ = ["EnvConfig", "FFPruneEnv", "FFPruneError", "CurriculumWrapper", "SearchAccounting", "SearchLogger",
           "clear_cache", "load_pruned", "project_budget", "env_ids", "register_envs", "__version__"]

register_envs()
