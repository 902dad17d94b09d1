"""A stand-in for ``PyJEM.TEM3.Stage3`` that behaves like the documented API, including
its pitfall: a setter returns before the axis starts moving, so the first status polls
still say "at rest" at the old position.

Time advances one tick per ``GetStatus`` call: an axis commanded by a setter stays at
rest for ``start_delay_polls`` polls, moves (status 1, halfway) for ``move_polls``
polls, then rests at the target (plus ``landing_error``). A target outside ``limits``
gives status 2 (hardware limit) and no motion.
"""

from __future__ import annotations

import sys
import types

AXES = ("x", "y", "z", "tx", "ty")
SETTERS = {"SetX": 0, "SetY": 1, "SetZ": 2, "SetTiltXAngle": 3, "SetTiltYAngle": 4}


class Stage3:
    """Stand-in ``TEM3.Stage3``: positions in nm and degrees."""

    def __init__(self, start_delay_polls: int = 2, move_polls: int = 3, landing_error=(0.0,) * 5,
                 limits=((-2e6, 2e6),) * 3 + ((-40.0, 40.0),) * 2, stuck_axis: int | None = None):
        self.pos = [0.0] * 5
        self.start_delay_polls = start_delay_polls
        self.move_polls = move_polls
        self.landing_error = tuple(landing_error)
        self.limits = limits
        self.stuck_axis = stuck_axis
        self.calls: list[tuple] = []
        self._moves: dict[int, dict] = {}
        self._status = [0] * 5

    def _command(self, index: int, value: float) -> None:
        self.calls.append((list(SETTERS)[index], value))
        low, high = self.limits[index]
        if not low <= value <= high:
            self._status[index] = 2
            return
        self._moves[index] = {"start": self.pos[index], "goal": float(value), "ticks": 0}

    def __getattr__(self, name):
        if name in SETTERS:
            return lambda value: self._command(SETTERS[name], value)
        raise AttributeError(name)

    def GetPos(self):
        return list(self.pos) + [0.0, 0.0]  # PyJEM lists more than the five axes

    def GetStatus(self):
        for index, move in list(self._moves.items()):
            move["ticks"] += 1
            if move["ticks"] <= self.start_delay_polls:
                self._status[index] = 0  # the pitfall: not started yet, reads "at rest"
            elif move["ticks"] <= self.start_delay_polls + self.move_polls or index == self.stuck_axis:
                self._status[index] = 1
                self.pos[index] = (move["start"] + move["goal"]) / 2
            else:
                self._status[index] = 0
                self.pos[index] = move["goal"] + self.landing_error[index]
                del self._moves[index]
        return list(self._status)

    def Stop(self):
        self.calls.append(("Stop",))
        self._moves.clear()
        self._status = [0 if s == 1 else s for s in self._status]


def install(stage3: Stage3) -> None:
    """Make ``from PyJEM import TEM3; TEM3.Stage3()`` return `stage3`."""
    package = types.ModuleType("PyJEM")
    tem3 = types.ModuleType("PyJEM.TEM3")
    tem3.Stage3 = lambda: stage3
    package.TEM3 = tem3
    sys.modules["PyJEM"] = package
    sys.modules["PyJEM.TEM3"] = tem3


def uninstall() -> None:
    """Remove the stand-in from ``sys.modules``."""
    sys.modules.pop("PyJEM", None)
    sys.modules.pop("PyJEM.TEM3", None)
