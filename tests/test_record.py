"""
The call record's lifecycle: the first reason wins, states only go
forward, an unfinished call gets its outcome from where it stopped.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from callhome.call.record import CallRecord, CallState, Outcome


def record() -> CallRecord:
    return CallRecord(peer="192.0.2.1:50000", started=0.0, source="192.0.2.1")


class CallRecordTests(SynchronousTestCase):
    """One place decides how a call ended."""

    def test_first_reason_and_outcome_win(self):
        """A second end (a timeout racing a refusal) changes nothing."""
        r = record()
        r.end(Outcome.UNKNOWN_HOST_KEY, "unknown host key")
        r.end(Outcome.TIMEOUT, "no NETCONF session within 30s")
        self.assertEqual((r.outcome, r.reason), (Outcome.UNKNOWN_HOST_KEY, "unknown host key"))

    def test_a_reason_alone_is_kept_for_the_outcome_later(self):
        """conch's disconnect text is noted first; the outcome comes from the state at the end."""
        r = record()
        r.advance(CallState.AUTHENTICATING)
        r.note("authentication failed: tried publickey; device allows password")
        r.note("connection lost")
        self.assertEqual(r.finish(), Outcome.AUTH_FAILED)
        self.assertEqual(r.reason, "authentication failed: tried publickey; device allows password")
        self.assertEqual(r.state, CallState.DONE)

    def test_a_held_session_ends_with_what_ended_it(self):
        """Persistent: OK is the chain's verdict; a replacement or a dead keepalive is the call's."""
        r = record()
        r.advance(CallState.RUNNING)
        r.end(Outcome.OK)
        r.end(Outcome.KEEPALIVE_TIMEOUT, "no answer to 3 keepalives")
        self.assertEqual((r.outcome, r.reason), (Outcome.KEEPALIVE_TIMEOUT, "no answer to 3 keepalives"))

    def test_a_plain_disconnect_keeps_ok(self):
        """An API disconnect of a held session is not a failure."""
        r = record()
        r.advance(CallState.RUNNING)
        r.end(Outcome.OK)
        r.end(Outcome.DISCONNECTED, "disconnected through the API")
        self.assertEqual(r.finish(), Outcome.OK)
        self.assertEqual(r.reason, "disconnected through the API")

    def test_states_only_go_forward(self):
        """Going back is a bug and says so."""
        r = record()
        r.advance(CallState.HELLO)
        self.assertRaises(ValueError, r.advance, CallState.AUTHENTICATING)

    def test_outcomes_keep_their_strings(self):
        """Logs, events, metrics labels and the API show the same words as before."""
        self.assertEqual(f"{Outcome.CHAIN_FAILED}", "chain-failed")
        self.assertEqual(Outcome.AUTH_FAILED.status, "failed-auth")
        self.assertEqual(Outcome.TIMEOUT.status, "disconnected")
        self.assertTrue(Outcome.NOT_ALLOWED.is_refusal)
        self.assertEqual(Outcome.of_unfinished(CallState.SECURING), Outcome.HANDSHAKE_FAILED)
