"""
The fuzz properties (tests/fuzz.py) in a short, deterministic pass: the
same examples on every run, so CI is repeatable; `python -m tests.fuzz
--minutes N` runs them at length with fresh seeds.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.fuzz import hypothesis_test

CI = {"max_examples": 150, "derandomize": True}


class FuzzTests(SynchronousTestCase):
    """Every reader of untrusted input, on generated input."""

    def test_eom_framer_round_trip(self):
        """End-of-message framing gives back the messages however the bytes are cut."""
        hypothesis_test("eom_framer_round_trip", **CI)()

    def test_chunked_framer_round_trip(self):
        """Chunked framing gives back the messages however the bytes are cut."""
        hypothesis_test("chunked_framer_round_trip", **CI)()

    def test_framers_refuse_garbage_cleanly(self):
        """Garbage is a FramingError, within the size limit, never a crash."""
        hypothesis_test("framers_refuse_garbage_cleanly", **CI)()

    def test_parser_accepts_or_rejects(self):
        """The hardened parser gives an element or XMLRejected, and never accepts a DTD."""
        hypothesis_test("parser_accepts_or_rejects", **CI)()

    def test_hello_parser_accepts_or_rejects(self):
        """A hello is valid (session id, base capability) or rejected."""
        hypothesis_test("hello_parser_accepts_or_rejects", **CI)()

    def test_session_survives_anything(self):
        """Any interleaving of bytes, RPCs, time and close: every RPC answered, the session closed with a reason."""
        hypothesis_test("session_survives_anything", **CI)()

    def test_config_reader_is_total(self):
        """Any YAML is a Config or a ConfigError naming its key path."""
        hypothesis_test("config_reader_is_total", **CI)()
