"""A simulated microscope that fails part-way through a run (for tests of interrupted runs)."""

from stage_acceptance.sim.microscope import SimulatedMicroscope


class FailingScope(SimulatedMicroscope):
    """The simulator, failing with `error` at acquisition number `after` + 1."""

    def __init__(self, config, after, error):
        super().__init__(config)
        self.after, self.error, self.calls = after, error, []

    def acquire(self):
        if len(self.truth) == self.after:
            raise self.error
        return super().acquire()

    def stop(self):
        self.calls.append("stop")
