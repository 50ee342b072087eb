"""The timer wheel: many periodic jobs on one reactor timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from callhome.timerwheel import TimerWheel, wheel_for


class TimerWheelTests(SynchronousTestCase):
    def test_jobs_run_on_their_periods_with_one_timer(self) -> None:
        clock = Clock()
        wheel = TimerWheel(clock)
        runs: dict[str, list[float]] = {"a": [], "b": []}
        wheel.every(10, lambda: runs["a"].append(clock.seconds()))
        clock.advance(3)
        wheel.every(5, lambda: runs["b"].append(clock.seconds()))
        for _ in range(30):
            clock.advance(1)
            self.assertLessEqual(len(clock.getDelayedCalls()), 1, "one reactor timer for every job")
        self.assertEqual(runs["a"], [10, 20, 30])
        self.assertEqual(runs["b"], [8, 13, 18, 23, 28, 33])

    def test_a_job_that_stops_itself_and_a_stopped_job(self) -> None:
        clock = Clock()
        wheel = TimerWheel(clock)
        ran: list[str] = []
        jobs = {}

        def once() -> None:
            ran.append("once")
            jobs["once"].stop()

        jobs["once"] = wheel.every(2, once)
        other = wheel.every(3, lambda: ran.append("other"))
        clock.advance(2)
        other.stop()
        clock.advance(10)
        self.assertEqual(ran, ["once"])
        self.assertEqual(clock.getDelayedCalls(), [], "nothing left armed")

    def test_an_earlier_job_added_while_a_later_one_waits(self) -> None:
        clock = Clock()
        wheel = TimerWheel(clock)
        ran: list[tuple[str, float]] = []
        wheel.every(30, lambda: ran.append(("slow", clock.seconds())))
        wheel.every(2, lambda: ran.append(("fast", clock.seconds())))
        clock.advance(2)
        self.assertEqual(ran, [("fast", 2)])

    def test_one_wheel_per_clock(self) -> None:
        one, two = Clock(), Clock()
        self.assertIs(wheel_for(one), wheel_for(one))
        self.assertIsNot(wheel_for(one), wheel_for(two))

    def test_never_late_whatever_the_fraction_of_the_start(self) -> None:
        """A clock that starts mid-second (a real one) still gets one run per period, within the period."""
        for start in (0.0, 0.27, 0.5, 0.73, 0.999):
            clock = Clock()
            clock.advance(1_800_000_000 + start)
            wheel = TimerWheel(clock)
            runs: list[float] = []
            wheel.every(10, lambda: runs.append(clock.seconds()))
            for _ in range(3):
                clock.advance(10)
            self.assertEqual(len(runs), 3, start)
            self.assertTrue(all(0 < b - a <= 10 for a, b in zip([1_800_000_000 + start] + runs, runs)), (start, runs))
