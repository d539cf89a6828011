"""Wrappers for searches on FFPrune environments: the curriculum and the search accounting.

Compose them as ``SearchAccounting(CurriculumWrapper(gym.make(...)), budget)``: the curriculum chooses
each episode's target and fidelity, the accounting (outermost) counts what the search spends and keeps
the best allocation at the final target.
"""

from ffenv.wrappers.accounting import SearchAccounting
from ffenv.wrappers.common import Resumable, load_resumable_states, resumable_states, wrapper_chain
from ffenv.wrappers.curriculum import CurriculumWrapper

__all__ = ["CurriculumWrapper", "SearchAccounting", "Resumable", "load_resumable_states", "resumable_states",
           "wrapper_chain"]
