"""ffenv: layer-wise LLM pruning allocation as a gymnasium environment (FastForward Pruning).

Pipeline, one way: corpus (:mod:`ffenv.lm.data`) → model (:mod:`ffenv.lm.models`) → importance, once
(:mod:`ffenv.pruning.importance`) → budget projector (:mod:`ffenv.pruning.projector`) → pruning (:mod:`ffenv.pruning.engines`)
→ evaluation (:mod:`ffenv.lm.perplexity`) → reward (:mod:`ffenv.envs.prune_env`). Searches wrap the env with
:mod:`ffenv.wrappers` (curriculum, search accounting) and log with :class:`ffenv.wrappers.logger.SearchLogger`.
"""

from ffenv.config import EnvConfig
from ffenv.envs.prune_env import FFPruneEnv, clear_cache
from ffenv.errors import FFPruneError, SearchInterrupted, WorkerLostError
from ffenv.lm.models import load_pruned
from ffenv.pruning.projector import project_budget
from ffenv.registration import env_creator, env_ids, register_envs, resolve_config, twin_env_id
from ffenv.wrappers import CurriculumWrapper, SearchAccounting
from ffenv.wrappers.logger import SearchLogger

__version__ = "0.1.0"
__all__ = ["EnvConfig", "FFPruneEnv", "FFPruneError", "SearchInterrupted", "WorkerLostError", "CurriculumWrapper",
           "SearchAccounting", "SearchLogger", "clear_cache", "load_pruned", "project_budget", "env_creator", "env_ids",
           "register_envs", "resolve_config", "twin_env_id", "__version__"]

register_envs()
