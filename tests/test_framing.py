"""
Tests for the sans-IO NETCONF framers (RFC 6242 §4).

Everything a device sends goes through one of these framers before anything
else looks at it, so they must produce the same messages however TCP/SSH
happens to split the stream, refuse every malformed chunked stream, and never
let a device make us buffer without bound.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from callhome.netconf import framing
from callhome.netconf.framing import (
    END_OF_MESSAGE,
    MAX_CHUNK_SIZE,
    ChunkedFramer,
    EndOfMessageFramer,
    FramingError,
    MessageTooLarge,
)

NS = "urn:ietf:params:xml:ns:netconf:base:1.0"

HELLO = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<hello xmlns="' + NS.encode() + b'"><capabilities>'
    b"<capability>urn:ietf:params:netconf:base:1.1</capability>"
    b"</capabilities><session-id>4</session-id></hello>"
)
REPLY = b'<rpc-reply xmlns="' + NS.encode() + b'" message-id="1"><ok/></rpc-reply>'
# Near misses of the end-of-message marker, and chunk-header look-alikes, in
# the payload itself: neither framer may be fooled by message content.
TRICKY = (
    b'<rpc-reply xmlns="' + NS.encode() + b'" message-id="2"><data>'
    b"]]>]] ]]]>]]]> ]> ]]>]\n#12\n\n##\n#\n"
    b"</data></rpc-reply>"
)
MESSAGES = [HELLO, REPLY, TRICKY]

KIB = 1024
MIB = 1024 * KIB


def feed_pieces(framer, pieces) -> list[bytes]:
    """Feed C{pieces} one after the other; return every message completed."""
    messages: list[bytes] = []
    for piece in pieces:
        messages.extend(framer.feed(piece))
    return messages


def one_byte_at_a_time(stream: bytes) -> list[bytes]:
    """Split C{stream} into single-byte pieces."""
    return [stream[i : i + 1] for i in range(len(stream))]


def in_reads(stream: bytes, size: int) -> list[bytes]:
    """Split C{stream} into reads of C{size} bytes (the last may be shorter)."""
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def big_payload(size: int) -> bytes:
    """
    A C{size}-byte XML message full of end-of-message near misses.

    Repeated ``]]>]]`` runs make the end-of-message search work at every read
    boundary without ever containing the real marker.
    """
    head = b'<rpc-reply xmlns="' + NS.encode() + b'" message-id="9"><data>'
    tail = b"</data></rpc-reply>"
    unit = b"abc]]>]]def\n"
    body_size = size - len(head) - len(tail)
    body = (unit * (body_size // len(unit) + 1))[:body_size]
    payload = head + body + tail
    assert len(payload) == size and END_OF_MESSAGE not in payload
    return payload


class EndOfMessageFramerTests(SynchronousTestCase):
    """base:1.0 framing: messages ended by ``]]>]]>``."""

    def test_encode_appends_the_end_of_message_marker(self):
        """
        The hello is always sent with this framing; a device only sees our
        message if it ends with exactly ``]]>]]>``.
        """
        self.assertEqual(EndOfMessageFramer.encode(REPLY), REPLY + b"]]>]]>")

    def test_round_trip(self):
        """Whatever we encode, a peer using the same framer reads back intact."""
        framer = EndOfMessageFramer()
        for message in MESSAGES:
            self.assertEqual(framer.feed(EndOfMessageFramer.encode(message)), [message])
        self.assertEqual(framer.buffered(), 0)

    def test_several_messages_in_one_read(self):
        """
        A device may send several messages back to back and they can arrive in
        a single read; every one must be returned, in order.
        """
        stream = b"".join(EndOfMessageFramer.encode(m) for m in MESSAGES)
        self.assertEqual(EndOfMessageFramer().feed(stream), MESSAGES)

    def test_message_split_over_many_reads(self):
        """
        A large reply arrives in many reads: nothing is returned until the
        marker arrives, then the whole message exactly once.
        """
        framer = EndOfMessageFramer()
        stream = EndOfMessageFramer.encode(TRICKY)
        pieces = in_reads(stream, 7)
        for piece in pieces[:-1]:
            self.assertEqual(framer.feed(piece), [])
        self.assertEqual(framer.feed(pieces[-1]), [TRICKY])

    def test_one_byte_at_a_time(self):
        """
        The marker can be split anywhere, even one byte per read; the result
        must be the same messages as reading the stream at once.
        """
        stream = b"".join(EndOfMessageFramer.encode(m) for m in MESSAGES)
        framer = EndOfMessageFramer()
        self.assertEqual(feed_pieces(framer, one_byte_at_a_time(stream)), MESSAGES)
        self.assertEqual(framer.buffered(), 0)

    def test_every_two_piece_split(self):
        """
        Splitting a multi-message stream at any byte boundary yields exactly
        the same messages: the incremental marker search must not miss a
        marker that straddles two reads, nor find one that is not there.
        """
        stream = b"".join(EndOfMessageFramer.encode(m) for m in MESSAGES)
        for cut in range(len(stream) + 1):
            framer = EndOfMessageFramer()
            messages = feed_pieces(framer, [stream[:cut], stream[cut:]])
            self.assertEqual(messages, MESSAGES, f"split at byte {cut}")
            self.assertEqual(framer.buffered(), 0, f"split at byte {cut}")

    def test_marker_overlapping_a_near_miss(self):
        """
        ``]]]>]]>`` ends a message whose last byte is ``]``: the marker is
        the first complete occurrence, not one starting at the first ``]``.
        """
        for pieces in ([b"a]]]>]]>"], one_byte_at_a_time(b"a]]]>]]>"), [b"a]]", b"]>]]>"]):
            self.assertEqual(feed_pieces(EndOfMessageFramer(), pieces), [b"a]"])

    def test_incomplete_message_stays_buffered(self):
        """
        Bytes without a marker are kept (and counted by buffered()) until the
        rest of the message arrives.
        """
        framer = EndOfMessageFramer()
        self.assertEqual(framer.feed(b"<rpc-reply>partial]]>]"), [])
        self.assertEqual(framer.buffered(), len(b"<rpc-reply>partial]]>]"))
        self.assertEqual(framer.feed(b"]>"), [b"<rpc-reply>partial"])
        self.assertEqual(framer.buffered(), 0)

    def test_empty_feed(self):
        """Feeding nothing is harmless and completes nothing."""
        framer = EndOfMessageFramer()
        self.assertEqual(framer.feed(b""), [])
        framer.feed(b"abc")
        self.assertEqual(framer.feed(b""), [])
        self.assertEqual(framer.buffered(), 3)

    def test_max_messages_leaves_the_rest_buffered(self):
        """
        After the hello the peer may switch to chunked framing, and the first
        chunked bytes can share a read with the hello: with max_messages=1
        the framer must stop after the hello and keep everything after it,
        byte for byte, for take_remaining().
        """
        chunked_rest = ChunkedFramer.encode(REPLY) + b"\n#3\nabc"
        data = EndOfMessageFramer.encode(HELLO) + chunked_rest
        framer = EndOfMessageFramer()
        self.assertEqual(framer.feed(data, max_messages=1), [HELLO])
        self.assertEqual(framer.buffered(), len(chunked_rest))
        self.assertEqual(framer.take_remaining(), chunked_rest)
        self.assertEqual(framer.buffered(), 0)
        self.assertEqual(framer.take_remaining(), b"")

    def test_max_messages_does_not_consume_later_complete_messages(self):
        """
        Even when the rest of the read holds complete base:1.0 messages,
        max_messages=1 returns only the first; a later feed (the session
        feeds b"" when the framing stays base:1.0) delivers the rest.
        """
        data = b"".join(EndOfMessageFramer.encode(m) for m in MESSAGES)
        framer = EndOfMessageFramer()
        self.assertEqual(framer.feed(data, max_messages=1), [HELLO])
        self.assertEqual(framer.feed(b""), [REPLY, TRICKY])

    def test_max_messages_with_partial_hello(self):
        """max_messages=1 waits for the hello across reads like any message."""
        framer = EndOfMessageFramer()
        stream = EndOfMessageFramer.encode(HELLO) + b"rest"
        self.assertEqual(framer.feed(stream[:10], max_messages=1), [])
        self.assertEqual(framer.feed(stream[10:], max_messages=1), [HELLO])
        self.assertEqual(framer.take_remaining(), b"rest")

    def test_framer_usable_after_take_remaining(self):
        """
        take_remaining() resets the search state, so the framer frames later
        input from scratch (nothing of the old scan position leaks).
        """
        framer = EndOfMessageFramer()
        framer.feed(b"0123456789]]>]]")
        self.assertEqual(framer.take_remaining(), b"0123456789]]>]]")
        self.assertEqual(framer.feed(b"ab]]>]]>"), [b"ab"])

    def test_empty_message(self):
        """An empty message is framed as a bare marker and read back as b""."""
        framer = EndOfMessageFramer()
        self.assertEqual(framer.feed(EndOfMessageFramer.encode(b"")), [b""])


class ChunkedFramerTests(SynchronousTestCase):
    """base:1.1 chunked framing (RFC 6242 §4.2): well-formed streams."""

    def test_encode_is_one_chunk(self):
        """A message is sent as ``\\n#<size>\\n<data>\\n##\\n`` (RFC 6242 §4.2)."""
        self.assertEqual(ChunkedFramer.encode(b"hello"), b"\n#5\nhello\n##\n")

    def test_encode_refuses_empty_message(self):
        """A chunk size of 0 is illegal, so an empty message cannot be framed."""
        self.assertRaises(ValueError, ChunkedFramer.encode, b"")

    def test_encode_splits_messages_over_the_chunk_limit(self):
        """
        A message longer than the largest legal chunk must be sent as several
        chunks, each within the limit, that read back as the original.
        (The limit is lowered here: a real one is 4 GiB.)
        """
        self.patch(framing, "MAX_CHUNK_SIZE", 4)
        encoded = ChunkedFramer.encode(b"abcdefghij")
        self.assertEqual(encoded, b"\n#4\nabcd\n#4\nefgh\n#2\nij\n##\n")
        self.assertEqual(ChunkedFramer().feed(encoded), [b"abcdefghij"])

    def test_round_trip(self):
        """Whatever we encode, a peer using the same framer reads back intact."""
        framer = ChunkedFramer()
        for message in MESSAGES:
            self.assertEqual(framer.feed(ChunkedFramer.encode(message)), [message])
        self.assertEqual(framer.buffered(), 0)

    def test_multi_chunk_message(self):
        """
        A device may send one message in several chunks; they are joined in
        order, and nothing is returned before the end-of-chunks marker.
        """
        framer = ChunkedFramer()
        self.assertEqual(framer.feed(b"\n#4\n<rpc"), [])
        self.assertEqual(framer.feed(b"\n#18\n-reply message-id="), [])
        self.assertEqual(framer.feed(b'\n#1\n"'), [])
        self.assertEqual(framer.feed(b'\n#12\n1"><ok/></rp'), [])
        self.assertEqual(framer.feed(b"\n#8\nc-reply>\n#"), [])
        self.assertEqual(framer.feed(b"#\n"), [b'<rpc-reply message-id="1"><ok/></rpc-reply>'])

    def test_rfc_6242_example(self):
        """The chunked example of RFC 6242 §4.2 decodes to its message."""
        stream = (
            b"\n#4\n<rpc"
            b"\n#18\n message-id=\"102\"\n"
            b"\n#79\n     xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\">\n"
            b"  <close-session/>\n</rpc>"
            b"\n##\n"
        )
        [message] = ChunkedFramer().feed(stream)
        self.assertTrue(message.startswith(b'<rpc message-id="102"\n'))
        self.assertTrue(message.endswith(b"<close-session/>\n</rpc>"))

    def test_several_messages_in_one_read(self):
        """Back-to-back messages in one read are all returned, in order."""
        stream = b"".join(ChunkedFramer.encode(m) for m in MESSAGES)
        self.assertEqual(ChunkedFramer().feed(stream), MESSAGES)

    def test_message_split_over_many_reads(self):
        """A message arriving in many reads is returned once, when complete."""
        framer = ChunkedFramer()
        pieces = in_reads(ChunkedFramer.encode(TRICKY), 5)
        for piece in pieces[:-1]:
            self.assertEqual(framer.feed(piece), [])
        self.assertEqual(framer.feed(pieces[-1]), [TRICKY])

    def test_one_byte_at_a_time(self):
        """
        Chunk headers and data can be split anywhere, even one byte per read;
        the messages are the same as reading the stream at once.
        """
        stream = b"".join(ChunkedFramer.encode(m) for m in MESSAGES)
        stream += b"\n#3\nabc\n#1\nd\n##\n"
        framer = ChunkedFramer()
        self.assertEqual(
            feed_pieces(framer, one_byte_at_a_time(stream)), MESSAGES + [b"abcd"]
        )
        self.assertEqual(framer.buffered(), 0)

    def test_every_two_piece_split(self):
        """
        Splitting a multi-message, multi-chunk stream at any byte boundary
        yields exactly the same messages: a header split across reads must be
        waited for, not misread.
        """
        stream = b"".join(ChunkedFramer.encode(m) for m in MESSAGES)
        stream += b"\n#3\nabc\n#12\ndefghijklmno\n#1\np\n##\n"
        expected = MESSAGES + [b"abcdefghijklmnop"]
        for cut in range(len(stream) + 1):
            framer = ChunkedFramer()
            messages = feed_pieces(framer, [stream[:cut], stream[cut:]])
            self.assertEqual(messages, expected, f"split at byte {cut}")
            self.assertEqual(framer.buffered(), 0, f"split at byte {cut}")

    def test_largest_legal_chunk_size_is_accepted(self):
        """
        4294967295 is the largest chunk-size RFC 6242 allows: the header must
        be accepted (with a message limit that permits it).
        """
        framer = ChunkedFramer(max_message_size=2 * MAX_CHUNK_SIZE)
        self.assertEqual(framer.feed(b"\n#4294967295\nabc"), [])

    def test_ten_digit_size_header_split_everywhere(self):
        """
        A ten-digit size is legal; split across reads it must be waited for,
        not refused as "too many digits".
        """
        header = b"\n#1000000000\n"
        for cut in range(len(header) + 1):
            framer = ChunkedFramer(max_message_size=2 * MAX_CHUNK_SIZE)
            self.assertEqual(feed_pieces(framer, [header[:cut], header[cut:], b"xy"]), [])

    def test_framing_error_carries_messages_completed_before_it(self):
        """
        A message that arrived intact before the framing error in the same
        read must not be lost: the error carries it (e.messages) so the
        session can deliver it before closing.
        """
        framer = ChunkedFramer()
        error = self.assertRaises(
            FramingError, framer.feed, ChunkedFramer.encode(REPLY) + b"GARBAGE"
        )
        self.assertEqual(error.messages, [REPLY])


class ChunkedFramingErrorTests(SynchronousTestCase):
    """
    Every violation of the RFC 6242 §4.2 grammar raises FramingError, both
    when the bad bytes come in one read and when they come one byte at a time.
    """

    def assertFramingError(self, stream: bytes, prefix: bytes = b"") -> None:
        """
        Assert that C{prefix + stream} makes a fresh ChunkedFramer raise
        FramingError, whether fed at once or byte by byte.
        """
        whole = ChunkedFramer()
        self.assertRaises(FramingError, whole.feed, prefix + stream)
        dripped = ChunkedFramer()
        with self.assertRaises(FramingError):
            for byte in one_byte_at_a_time(prefix + stream):
                dripped.feed(byte)

    def test_non_digit_in_chunk_size(self):
        """``\\n#1a\\n``: chunk-size is digits only."""
        self.assertFramingError(b"\n#1a\nabc\n##\n")

    def test_missing_lf_after_chunk_size(self):
        """
        The size must be followed by LF: ``\\n#5hello`` (data glued to the
        size), ``\\n#5\\r\\n`` (CRLF), and a size never followed by LF.
        """
        self.assertFramingError(b"\n#5hello\n##\n")
        self.assertFramingError(b"\n#5\r\nhello\n##\n")
        self.assertFramingError(b"\n#5 hello world and more")

    def test_chunk_size_zero(self):
        """chunk-size starts with DIGIT1: ``\\n#0\\n`` is illegal."""
        self.assertFramingError(b"\n#0\n\n##\n")

    def test_leading_zero(self):
        """``\\n#01\\n``: no leading zeros in chunk-size."""
        self.assertFramingError(b"\n#01\na\n##\n")

    def test_empty_chunk_size(self):
        """``\\n#\\n``: at least one digit is required."""
        self.assertFramingError(b"\n#\na\n##\n")

    def test_chunk_size_over_maximum(self):
        """
        4294967296 exceeds the RFC 6242 maximum; it is a framing error (even
        with a message limit that would allow it).
        """
        framer = ChunkedFramer(max_message_size=10 * MAX_CHUNK_SIZE)
        self.assertRaises(FramingError, framer.feed, b"\n#4294967296\n")
        self.assertFramingError(b"\n#4294967296\n")
        self.assertFramingError(b"\n#9999999999\n")

    def test_too_many_digits(self):
        """
        Eleven or more digits can never be a legal size; the framer refuses
        them instead of buffering an endless run of digits.
        """
        self.assertFramingError(b"\n#12345678901\nabc\n##\n")
        self.assertFramingError(b"\n#1" + b"1" * 100)

    def test_garbage_instead_of_header(self):
        """
        Anything but ``\\n#`` where a chunk header is due is refused: at the
        start of the stream, and right after a chunk's data.
        """
        self.assertFramingError(b"<rpc-reply/>")
        self.assertFramingError(b"#5\nhello\n##\n")
        self.assertFramingError(b"\nX5\nhello\n##\n")
        self.assertFramingError(b"\n#5\nhelloX\n##\n")
        self.assertFramingError(b"]]>]]>", prefix=ChunkedFramer.encode(REPLY))

    def test_garbage_refused_without_waiting_for_more(self):
        """
        A stream that cannot start a chunk header is refused on its first
        bad byte, so a device cannot make us wait on nonsense.
        """
        for bad in (b"x", b"\nx", b"\n#0", b"\n#x"):
            self.assertRaises(FramingError, ChunkedFramer().feed, bad)

    def test_end_of_chunks_not_followed_by_lf(self):
        """``\\n##`` must be followed by LF."""
        self.assertFramingError(b"\n##X", prefix=b"\n#2\nab")
        self.assertFramingError(b"\n##\r\n", prefix=b"\n#2\nab")

    def test_end_of_chunks_without_a_chunk(self):
        """
        End-of-chunks needs at least one chunk before it (a message has
        1*chunk): at the start of the stream and right after a message.
        """
        self.assertFramingError(b"\n##\n")
        self.assertFramingError(b"\n##\n", prefix=ChunkedFramer.encode(REPLY))

    def test_error_after_complete_message_keeps_that_message(self):
        """
        A complete message before garbage in the same read is carried by the
        error, so nothing received intact is silently dropped.
        """
        stream = ChunkedFramer.encode(HELLO) + ChunkedFramer.encode(REPLY) + b"\n#0\n"
        error = self.assertRaises(FramingError, ChunkedFramer().feed, stream)
        self.assertEqual(error.messages, [HELLO, REPLY])


class MaxMessageSizeTests(SynchronousTestCase):
    """
    Both framers cap the size of a message, so a device cannot make the
    manager buffer without bound.
    """

    def test_eom_accepts_message_of_exactly_the_maximum(self):
        """The limit is inclusive: a message of max_message_size bytes passes."""
        framer = EndOfMessageFramer(max_message_size=10)
        self.assertEqual(framer.feed(b"0123456789]]>]]>"), [b"0123456789"])

    def test_eom_refuses_message_over_the_maximum(self):
        """A message one byte over the limit raises MessageTooLarge."""
        framer = EndOfMessageFramer(max_message_size=10)
        self.assertRaises(MessageTooLarge, framer.feed, b"0123456789A]]>]]>")

    def test_eom_message_too_large_is_a_framing_error(self):
        """
        The session handles every FramingError by closing; MessageTooLarge
        must be one so it is handled the same way.
        """
        self.assertTrue(issubclass(MessageTooLarge, FramingError))

    def test_eom_refuses_second_message_over_maximum_in_same_read(self):
        """
        The limit applies to every message of a read, and the messages before
        the offending one are carried by the error.
        """
        framer = EndOfMessageFramer(max_message_size=10)
        error = self.assertRaises(
            MessageTooLarge, framer.feed, b"ok]]>]]>" + b"x" * 11 + b"]]>]]>"
        )
        self.assertEqual(error.messages, [b"ok"])

    def test_eom_slow_drip_without_marker(self):
        """
        A device that drips bytes one at a time and never sends the marker
        must be stopped once the buffered bytes can only be an oversized
        message, and the buffer must never grow much past the limit.
        """
        limit = 1000
        framer = EndOfMessageFramer(max_message_size=limit)
        with self.assertRaises(MessageTooLarge):
            for _ in range(limit + 100):
                framer.feed(b"x")
                self.assertLessEqual(framer.buffered(), limit + len(END_OF_MESSAGE))

    def test_eom_big_read_without_marker(self):
        """One oversized read with no marker is refused at once."""
        framer = EndOfMessageFramer(max_message_size=100)
        self.assertRaises(MessageTooLarge, framer.feed, b"x" * 200)

    def test_eom_maximum_size_message_accepted_however_marker_is_split(self):
        """
        Whether a message is accepted must not depend on how the stream is
        split into reads: a message of exactly the maximum size is accepted
        in one read, so it must be accepted when the marker is split too.
        """
        stream = b"0123456789]]>]]>"
        for cut in range(len(stream) + 1):
            framer = EndOfMessageFramer(max_message_size=10)
            self.assertEqual(
                feed_pieces(framer, [stream[:cut], stream[cut:]]),
                [b"0123456789"],
                f"split at byte {cut}",
            )

    def test_chunked_accepts_message_of_exactly_the_maximum(self):
        """The limit is inclusive and counts the sum of all chunks."""
        framer = ChunkedFramer(max_message_size=10)
        self.assertEqual(framer.feed(b"\n#4\n0123\n#6\n456789\n##\n"), [b"0123456789"])

    def test_chunked_refuses_oversized_chunk_at_its_header(self):
        """
        A chunk header announcing more than the limit is refused before any
        of its data arrives: we never wait for (or buffer) the data.
        """
        framer = ChunkedFramer(max_message_size=10)
        self.assertRaises(MessageTooLarge, framer.feed, b"\n#11\n")

    def test_chunked_refuses_many_chunks_over_the_maximum(self):
        """
        The limit is on the message, not the chunk: many small chunks that
        together exceed it are refused.
        """
        framer = ChunkedFramer(max_message_size=10)
        self.assertRaises(MessageTooLarge, framer.feed, b"\n#5\n01234\n#5\n56789\n#1\n")

    def test_chunked_limit_is_per_message(self):
        """
        The size count restarts with each message: two messages that together
        exceed the limit are both accepted.
        """
        framer = ChunkedFramer(max_message_size=10)
        stream = ChunkedFramer.encode(b"0123456789") * 3
        self.assertEqual(framer.feed(stream), [b"0123456789"] * 3)

    def test_chunked_slow_drip_without_end_of_chunks(self):
        """
        A device that drips one-byte chunks and never sends ``\\n##\\n`` is
        stopped as soon as the message passes the limit, not before.
        """
        limit = 200
        framer = ChunkedFramer(max_message_size=limit)
        for _ in range(limit):
            for byte in one_byte_at_a_time(b"\n#1\nx"):
                self.assertEqual(framer.feed(byte), [])
        with self.assertRaises(MessageTooLarge):
            for byte in one_byte_at_a_time(b"\n#1\nx"):
                framer.feed(byte)

    def test_chunked_slow_drip_of_chunk_data(self):
        """
        Dripping the data of an accepted chunk byte by byte is bounded by the
        announced size: the buffer never exceeds the limit.
        """
        framer = ChunkedFramer(max_message_size=50)
        framer.feed(b"\n#50\n")
        for _ in range(50):
            framer.feed(b"y")
            self.assertLessEqual(framer.buffered(), 50)
        self.assertEqual(framer.feed(b"\n##\n"), [b"y" * 50])

    def test_chunked_buffered_counts_only_bytes_received(self):
        """
        buffered() is documented as how many bytes of an incomplete message
        are held; bytes a chunk header merely promises are not held.
        """
        framer = ChunkedFramer()
        framer.feed(b"\n#100\nab")
        self.assertEqual(framer.buffered(), 2)


class LargeMessageTests(SynchronousTestCase):
    """
    A 10 MB reply (a full configuration) read in 64 KiB pieces goes through
    both framers; this would take minutes if either rescanned or recopied
    the whole buffer on every read (no timing assertion: the suite's run
    time is the check).
    """

    size = 10 * MIB
    read_size = 64 * KIB

    def test_eom_ten_megabytes_in_64k_reads(self):
        """The end-of-message framer returns the 10 MB message intact, once."""
        payload = big_payload(self.size)
        stream = EndOfMessageFramer.encode(payload) + EndOfMessageFramer.encode(REPLY)
        framer = EndOfMessageFramer(max_message_size=self.size)
        messages = feed_pieces(framer, in_reads(stream, self.read_size))
        self.assertEqual(len(messages), 2)
        self.assertTrue(messages[0] == payload, "10 MB message corrupted")
        self.assertEqual(messages[1], REPLY)
        self.assertEqual(framer.buffered(), 0)

    def test_chunked_ten_megabytes_in_64k_reads(self):
        """The chunked framer returns a 10 MB single-chunk message intact."""
        payload = big_payload(self.size)
        stream = ChunkedFramer.encode(payload) + ChunkedFramer.encode(REPLY)
        framer = ChunkedFramer(max_message_size=self.size)
        messages = feed_pieces(framer, in_reads(stream, self.read_size))
        self.assertEqual(len(messages), 2)
        self.assertTrue(messages[0] == payload, "10 MB message corrupted")
        self.assertEqual(messages[1], REPLY)
        self.assertEqual(framer.buffered(), 0)

    def test_chunked_ten_megabytes_in_many_small_chunks(self):
        """
        Devices often send many small chunks (e.g. 4 KiB each); thousands of
        chunks in one message are joined once, not repeatedly.
        """
        payload = big_payload(self.size)
        chunk = 4 * KIB
        stream = b"".join(
            b"\n#%d\n" % len(piece) + piece for piece in in_reads(payload, chunk)
        ) + b"\n##\n"
        framer = ChunkedFramer(max_message_size=self.size)
        messages = feed_pieces(framer, in_reads(stream, self.read_size))
        self.assertEqual(len(messages), 1)
        self.assertTrue(messages[0] == payload, "10 MB message corrupted")


class DiscardTests(SynchronousTestCase):
    """ChunkedFramer with a discard_limit: a message over the maximum is dropped whole, the stream goes on."""

    def test_an_oversized_message_is_reported_and_the_next_one_delivered(self) -> None:
        from callhome.netconf.framing import HEAD, OversizedMessage

        framer = ChunkedFramer(max_message_size=100, discard_limit=1000)
        big = b'<rpc-reply message-id="7">' + b"x" * 5000 + b"</rpc-reply>"
        stream = b"\n#26\n" + big[:26] + b"\n#300\n" + b"y" * 300 + b"\n##\n" + ChunkedFramer.encode(b"<ok/>")
        messages = []
        for i in range(0, len(stream), 7):  # every split point class: small reads
            messages += framer.feed(stream[i:i + 7])
        self.assertIsInstance(messages[0], OversizedMessage)
        self.assertEqual(messages[0].size, 326)
        self.assertTrue(messages[0].startswith(b'<rpc-reply message-id="7">'))
        self.assertLessEqual(len(messages[0]), HEAD)
        self.assertEqual(messages[1:], [b"<ok/>"])
        self.assertLess(framer.buffered(), 100, "nothing of the dropped message kept")

    def test_past_the_discard_limit_it_is_an_error(self) -> None:
        framer = ChunkedFramer(max_message_size=100, discard_limit=200)
        self.assertRaises(MessageTooLarge, framer.feed, b"\n#150\n" + b"x" * 150 + b"\n#100\n")

    def test_without_a_discard_limit_nothing_changes(self) -> None:
        framer = ChunkedFramer(max_message_size=100)
        self.assertRaises(MessageTooLarge, framer.feed, b"\n#150\n")
