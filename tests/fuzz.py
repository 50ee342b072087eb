"""
Property-based tests of everything that reads a device's bytes or an
operator's config: the two framers, the hardened XML parser, the hello
parser, the NETCONF session state machine and the config reader.

CI runs a short deterministic pass (``tests/test_fuzz.py``).  A long run:

    python -m tests.fuzz --minutes 30

runs every property with fresh random seeds until the time is up and
prints how many examples each tried and what failed.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from typing import Any, Callable

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from callhome import config
from callhome.netconf import operations, xml
from callhome.netconf.framing import ChunkedFramer, EndOfMessageFramer, FramingError
from callhome.netconf.session import NetconfSession

NS = xml.NETCONF_NS
LIMIT = 64 * 1024

# --- strategies --------------------------------------------------------------------


def split_points(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """C{data} cut into pieces at arbitrary points."""
    return st.lists(st.integers(0, len(data)), max_size=12).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])]
    )


messages = st.lists(st.binary(min_size=1, max_size=300).filter(lambda m: b"]]>]]>" not in m), min_size=1, max_size=5)

tags = st.sampled_from(["hello", "capabilities", "capability", "session-id", "rpc-reply", "ok", "data",
                        "notification", "eventTime", "rpc-error", "error-tag", "x"])
namespaces = st.sampled_from([NS, xml.NOTIFICATION_NS, "urn:example", ""])
texts = st.one_of(st.sampled_from([xml.BASE_1_0, xml.BASE_1_1, "7", "0", "-1", "99999999999", "", "<", "&amp;", "&lt;"]),
                  st.text(max_size=20))


@st.composite
def elements(draw: Any, depth: int = 0) -> str:
    """Random NETCONF-ish XML, namespaces and all, sometimes not well-formed."""
    tag, ns = draw(tags), draw(namespaces)
    attrs = f' xmlns="{ns}"' if ns else ""
    if draw(st.booleans()):
        attrs += f' message-id="{draw(st.sampled_from(["1", "2", "101", "x", ""]))}"'
    children = "".join(draw(st.lists(elements(depth + 1), max_size=3))) if depth < 3 else ""
    body = children or draw(texts)
    if draw(st.integers(0, 20)) == 0:
        return f"<{tag}{attrs}>{body}"  # unclosed
    return f"<{tag}{attrs}>{body}</{tag}>"


hostile_prefixes = st.sampled_from([
    "", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>', "<!DOCTYPE x [<!ENTITY a 'b'>]>",
    '<!DOCTYPE hello SYSTEM "file:///etc/passwd">', "\ufeff", "<!-- c -->",
])
documents = st.one_of(
    st.binary(max_size=400),
    st.tuples(hostile_prefixes, elements()).map(lambda p: (p[0] + p[1]).encode("utf-8", "surrogatepass")),
)

# --- properties ------------------------------------------------------------------------


def _round_trip(framer_class: Any, batch: list[bytes], cuts: list[int]) -> None:
    """However the framed bytes are cut, the same messages come out."""
    data = b"".join(framer_class.encode(m) for m in batch)
    points = sorted(set(c % (len(data) + 1) for c in cuts))
    framer, out = framer_class(LIMIT), []
    for a, b in zip([0, *points], [*points, len(data)]):
        out += framer.feed(data[a:b])
    assert out == batch, (out, batch)


def eom_framer_round_trip(batch: list[bytes], cuts: list[int]) -> None:
    """End-of-message framing: however the bytes are cut, the same messages come out."""
    _round_trip(EndOfMessageFramer, batch, cuts)


def chunked_framer_round_trip(batch: list[bytes], cuts: list[int]) -> None:
    """Chunked framing: however the bytes are cut, the same messages come out."""
    _round_trip(ChunkedFramer, batch, cuts)


def framers_refuse_garbage_cleanly(garbage: list[bytes]) -> None:
    """Arbitrary bytes: messages, or a FramingError; never another exception, never more than the limit buffered."""
    for framer in (EndOfMessageFramer(1024), ChunkedFramer(1024)):
        try:
            for piece in garbage:
                framer.feed(piece)
                assert framer.buffered() <= 1024 + 64, framer.buffered()
        except FramingError:
            pass


def parser_accepts_or_rejects(document: bytes) -> None:
    """The hardened parser: an element or XMLRejected; a DOCTYPE is always rejected."""
    try:
        root = xml.parse_message(document)
    except xml.XMLRejected:
        return
    # Accepted means no document type declaration anywhere (RFC 6241 §3).
    assert b"<!DOCTYPE" not in document
    assert root is not None


def hello_parser_accepts_or_rejects(document: bytes) -> None:
    """parse_hello on anything that parses: a Hello with a valid session id and base capability, or XMLRejected."""
    try:
        hello = xml.parse_hello(xml.parse_message(document))
    except xml.XMLRejected:
        return
    assert hello.session_id is None or (hello.session_id.isdigit() and not hello.session_id.startswith("0"))
    assert xml.BASE_1_0 in hello.capabilities or xml.BASE_1_1 in hello.capabilities


session_events = st.lists(st.one_of(
    st.tuples(st.just("bytes"), documents),
    st.tuples(st.just("frame"), elements().map(lambda e: e.encode("utf-8", "surrogatepass"))),
    st.tuples(st.just("hello"), st.booleans()),
    st.tuples(st.just("rpc"), st.just(b"")),
    st.tuples(st.just("tick"), st.integers(0, 70)),
    st.tuples(st.just("close"), st.just(b"")),
    st.tuples(st.just("lost"), st.just(b"")),
), max_size=25)


def session_survives_anything(events: list[tuple[str, Any]]) -> None:
    """
    Any interleaving of device bytes, our RPCs, time and the connection
    ending: nothing escapes dataReceived, and once the connection is gone
    every RPC has an answer and the session is closed with a reason.
    """
    clock = task.Clock()
    transport = StringTransport()
    session = NetconfSession(clock, label="fuzz", hello_timeout=30, rpc_timeout=60, max_message_size=LIMIT)
    session.hello_received.addErrback(lambda f: None)  # as the SSH channel does
    session.makeConnection(transport)
    pending = []
    chunked = False
    for kind, value in events:
        if kind == "bytes":
            session.dataReceived(value)
        elif kind == "frame":
            session.dataReceived((ChunkedFramer if chunked else EndOfMessageFramer).encode(value or b"x"))
        elif kind == "hello":
            caps = f"<capability>{xml.BASE_1_0}</capability>" + (f"<capability>{xml.BASE_1_1}</capability>" if value else "")
            session.dataReceived(EndOfMessageFramer.encode(
                f'<hello xmlns="{NS}"><capabilities>{caps}</capabilities><session-id>3</session-id></hello>'.encode()))
            chunked = chunked or (value and session.hello is not None and session.framing == "base:1.1")
        elif kind == "rpc":
            d = session.rpc(operations.get())
            d.addErrback(lambda f: None)
            pending.append(d)
        elif kind == "tick":
            clock.advance(value)
        elif kind == "close":
            session.close(timeout=5)
        elif kind == "lost":
            session.connectionLost(Failure(ConnectionError("gone")))
            break
    else:
        session.connectionLost(Failure(ConnectionError("gone")))
    assert all(d.called for d in pending)
    assert session.closed.called and session.close_reason


config_keys = st.sampled_from([
    "listen", "results_dir", "state_dir", "defaults", "groups", "devices", "chains", "netconf", "ssh",
    "admission", "unknown_devices", "duplicate_sessions", "plugin_paths", "step_timeout", "store", "api",
    "shutdown_grace", "log", "workers", "name", "host_keys", "username", "password", "private_key", "chain",
    "mode", "group", "get", "get-config", "timeout", "on_error", "level", "format", "database", "retention",
    "max_pending", "offer_base_1_1", "legacy_algorithms", "idle_timeout", "on_notification", "token",
])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                    st.sampled_from(["tcp:4334", "tcp:0", "unix:/x", "persistent", "reject", "main", "debug",
                                     "SHA256:" + "A" * 43, "quarantine", "", "x"]), st.text(max_size=12))
yaml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(config_keys, st.text(max_size=6)), inner, max_size=5)),
    max_leaves=25)


def config_reader_is_total(document: Any) -> None:
    """Any YAML: a valid Config, or a ConfigError naming a key path (once the document is a mapping with keys)."""
    try:
        text = yaml.safe_dump(document)
    except yaml.YAMLError:
        return
    try:
        config.loads(text, environ={})
    except config.ConfigError as e:
        assert e.problem
        if isinstance(document, dict) and document:
            assert e.path, f"no key path for: {e}"


# --- runs ----------------------------------------------------------------------------

#: each property with the strategies it is given.
PROPERTIES: dict[str, tuple[Callable[..., None], tuple[st.SearchStrategy[Any], ...]]] = {
    "eom_framer_round_trip": (eom_framer_round_trip, (messages, st.lists(st.integers(0, 10_000), max_size=12))),
    "chunked_framer_round_trip": (chunked_framer_round_trip, (messages, st.lists(st.integers(0, 10_000), max_size=12))),
    "framers_refuse_garbage_cleanly": (framers_refuse_garbage_cleanly, (st.lists(st.one_of(
        st.binary(max_size=200), st.sampled_from([b"\n#", b"\n#1\n", b"\n##\n", b"\n#4294967296\n", b"]]>]]>", b"\n#0\n"])), max_size=20),)),
    "parser_accepts_or_rejects": (parser_accepts_or_rejects, (documents,)),
    "hello_parser_accepts_or_rejects": (hello_parser_accepts_or_rejects, (documents,)),
    "session_survives_anything": (session_survives_anything, (session_events,)),
    "config_reader_is_total": (config_reader_is_total, (yaml_values,)),
}


def hypothesis_test(name: str, **options: Any) -> Callable[[], None]:
    """C{name}'s property as a hypothesis test with these settings."""
    function, strategies = PROPERTIES[name]
    base = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}
    base.update(options)
    return settings(**base)(given(*strategies)(function))  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    """A long run: every property, fresh seeds, until the minutes are up."""
    parser = argparse.ArgumentParser(description="callhome's fuzz run")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--examples", type=int, default=2000, help="examples per property per round")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.minutes * 60
    tried = {name: 0 for name in PROPERTIES}
    failures: dict[str, str] = {}
    rounds = 0
    while time.monotonic() < deadline and len(failures) < len(PROPERTIES):
        rounds += 1
        for name in PROPERTIES:
            if name in failures or time.monotonic() >= deadline:
                continue
            counted = [0]
            function, strategies = PROPERTIES[name]

            @functools.wraps(function)
            def counting(*args: Any, _function: Callable[..., None] = function, **kwargs: Any) -> None:
                counted[0] += 1
                _function(*args, **kwargs)

            test = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None,
                            max_examples=args.examples, derandomize=False)(given(*strategies)(counting))
            try:
                test()
            except Exception:
                failures[name] = traceback.format_exc(limit=3)
            tried[name] += counted[0]
        print(f"round {rounds}: " + ", ".join(f"{n} {c}" for n, c in tried.items()), file=sys.stderr, flush=True)
    print(f"fuzz run, {args.minutes:g} minutes, {rounds} rounds")
    for name, count in tried.items():
        print(f"{name:34}{count:10d} examples  {'FAILED' if name in failures else 'ok'}")
    for name, text in failures.items():
        print(f"\n== {name}\n{text}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
