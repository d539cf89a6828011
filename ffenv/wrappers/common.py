"""What the search wrappers share: the :class:`Resumable` contract and the walk over a wrapper chain."""

from __future__ import annotations

import abc
from typing import Any

import gymnasium as gym


class Resumable(abc.ABC):
    """A wrapper whose progress a checkpoint must hold (e.g. the curriculum's position in its schedule)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue exactly where this wrapper is."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""


def wrapper_chain(env: gym.Env) -> list[gym.Env]:
    """``env`` and every environment it wraps, outermost first, down to the unwrapped one."""
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def resumable_states(env: gym.Env) -> dict[str, dict[str, Any]]:
    """The :meth:`Resumable.state_dict` of every :class:`Resumable` wrapper in ``env``'s chain, by class name."""
    return {type(w).__name__: w.state_dict() for w in wrapper_chain(env) if isinstance(w, Resumable)}


def load_resumable_states(env: gym.Env, states: dict[str, dict[str, Any]]) -> None:
    """Give every :class:`Resumable` wrapper in ``env``'s chain its state from :func:`resumable_states`."""
    for w in wrapper_chain(env):
        if isinstance(w, Resumable) and type(w).__name__ in states:
            w.load_state_dict(states[type(w).__name__])
