"""
Sans-IO NETCONF message framing (RFC 6242 §4).

Two framers with one interface: ``feed(data) -> list[bytes]`` returns every
message completed by ``data`` and raises :class:`FramingError` on a stream
that breaks the framing rules.  Neither does I/O, so the session protocol,
the device simulator and the tests all share them.

* :class:`EndOfMessageFramer`: base:1.0, each message ends with ``]]>]]>``.
  The hello is always sent this way.
* :class:`ChunkedFramer`: base:1.1, ``\\n#<size>\\n<data>`` chunks ended by
  ``\\n##\\n``.

Both stay linear in the size of a message: the end-of-message search only
scans bytes it has not scanned before, and chunk data is collected in parts
joined once.  Both enforce a maximum message size, so a device cannot make us
buffer without end.
"""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: RFC 6242 §4.2: chunk-size = 1*DIGIT1 0*DIGIT; maximum 4294967295.
MAX_CHUNK_SIZE = 4294967295
_MAX_CHUNK_DIGITS = len(str(MAX_CHUNK_SIZE))

END_OF_MESSAGE = b"]]>]]>"


class FramingError(Exception):
    """
    The peer broke the NETCONF framing rules; the session must be closed.

    @ivar messages: the messages the same C{feed} call completed before the
        error, so that nothing already received is lost.
    """

    messages: list[bytes] = []


class MessageTooLarge(FramingError):
    """A message grew past the configured maximum size."""


class OversizedMessage(bytes):
    """
    A whole message over the size limit, consumed and dropped (chunked
    framing with a C{discard_limit}): its value is the message's first
    C{HEAD} bytes (enough for its message-id), C{size} its real size.
    """

    size: int = 0


#: bytes of a dropped message kept to say which reply it was.
HEAD = 4096


class EndOfMessageFramer:
    """
    base:1.0 framing: messages separated by ``]]>]]>``.

    @ivar max_message_size: the largest message accepted, in bytes.
    """

    # One framer per session, held as long as it is: no per-instance dict.
    __slots__ = ("max_message_size", "_buffer", "_scanned")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        # How far the buffer has been searched for the delimiter already, so
        # a message that arrives in many small reads is scanned only once.
        self._scanned = 0

    def feed(self, data: bytes, max_messages: int | None = None) -> list[bytes]:
        """
        Add bytes from the peer; return the messages they complete.

        @param max_messages: stop after this many messages and keep the rest
            buffered (the hello: what follows it may use another framing).
        @raises MessageTooLarge: when a message exceeds the maximum size.
        """
        self._buffer += data
        messages: list[bytes] = []
        try:
            self._split(messages, max_messages)
        except FramingError as e:
            e.messages = messages
            raise
        return messages

    def _split(self, messages: list[bytes], max_messages: int | None) -> None:
        """Move complete messages from the buffer to C{messages}."""
        while max_messages is None or len(messages) < max_messages:
            start = max(0, self._scanned - len(END_OF_MESSAGE) + 1)
            end = self._buffer.find(END_OF_MESSAGE, start)
            if end < 0:
                self._scanned = len(self._buffer)
                # The buffer may end with the start of a marker; only what
                # cannot be part of one counts against the limit.
                if self._scanned - (len(END_OF_MESSAGE) - 1) > self.max_message_size:
                    raise MessageTooLarge(
                        f"message exceeds {self.max_message_size} bytes "
                        f"without an end-of-message marker"
                    )
                return
            if end > self.max_message_size:
                raise MessageTooLarge(
                    f"message of {end} bytes exceeds {self.max_message_size}"
                )
            messages.append(bytes(self._buffer[:end]))
            del self._buffer[: end + len(END_OF_MESSAGE)]
            self._scanned = 0

    def take_remaining(self) -> bytes:
        """
        Return and forget the bytes received after the last complete message.

        Used when the session switches to chunked framing after the hello:
        whatever followed the hello in the same read belongs to the new framer.
        """
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest

    def buffered(self) -> int:
        """Return how many bytes of an incomplete message are held."""
        return len(self._buffer)

    @staticmethod
    def encode(message: bytes) -> bytes:
        """Frame one message for sending."""
        return message + END_OF_MESSAGE


class ChunkedFramer:
    """
    base:1.1 chunked framing (RFC 6242 §4.2), strict about the grammar.

    @ivar max_message_size: the largest message accepted (sum of its chunks).
    """

    __slots__ = ("max_message_size", "discard_limit", "_discarding", "_head", "_buffer", "_position",
                 "_chunk_remaining", "_message", "_message_size")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, discard_limit: int | None = None) -> None:
        self.max_message_size = max_message_size
        #: a message over the maximum but within this is dropped whole and
        #: reported (L{OversizedMessage}), the session going on; past it (or
        #: with None) the framer raises L{MessageTooLarge}.
        self.discard_limit = discard_limit
        self._discarding = False
        self._head = bytearray()
        self._buffer = bytearray()
        self._position = 0
        self._chunk_remaining = 0
        # One growing buffer per message: a list of parts would cost an
        # object per chunk (1-byte chunks: ~50 bytes of overhead per byte).
        self._message = bytearray()
        self._message_size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add bytes from the peer; return the messages they complete.

        @raises FramingError: on a malformed chunk header.
        @raises MessageTooLarge: when a message exceeds the maximum size.
        """
        self._buffer += data
        messages: list[bytes] = []
        try:
            while self._parse_one(messages):
                pass
        except FramingError as e:
            e.messages = messages
            raise
        finally:
            # Drop consumed bytes once per feed, not once per chunk.
            if self._position:
                del self._buffer[: self._position]
                self._position = 0
        return messages

    def _parse_one(self, messages: list[bytes]) -> bool:
        """Consume one chunk header or one run of chunk data; False: need more."""
        buffer, position = self._buffer, self._position
        available = len(buffer) - position
        if self._chunk_remaining:
            if not available:
                return False
            take = min(available, self._chunk_remaining)
            if self._discarding:
                if len(self._head) < HEAD:
                    self._head += buffer[position : position + min(take, HEAD - len(self._head))]
            else:
                self._message += buffer[position : position + take]
            self._position += take
            self._chunk_remaining -= take
            return True
        if available < 4:
            # The shortest header is "\n##\n"; check what is here already so
            # garbage is refused at once rather than after more bytes.
            self._check_header_start(buffer, position, available)
            return False
        self._check_header_start(buffer, position, available)
        if buffer[position + 2] == 0x23:  # "\n##": end of chunks
            if buffer[position + 3] != 0x0A:
                raise FramingError("end-of-chunks marker not followed by LF")
            if not self._message_size:
                raise FramingError("end-of-chunks marker before any chunk")
            if self._discarding:
                dropped = OversizedMessage(bytes(self._head))
                dropped.size = self._message_size
                messages.append(dropped)
                self._discarding = False
                self._head = bytearray()
            else:
                messages.append(bytes(self._message))
            self._message = bytearray()
            self._message_size = 0
            self._position += 4
            return True
        limit = position + 2 + _MAX_CHUNK_DIGITS + 1
        newline = buffer.find(b"\n", position + 2, limit)
        if newline < 0:
            if len(buffer) >= limit:
                raise FramingError("chunk size has too many digits or no LF")
            return False
        digits = bytes(buffer[position + 2 : newline])
        if not digits.isdigit():
            raise FramingError(f"chunk size {digits[:16]!r} is not a number")
        size = int(digits)
        if size > MAX_CHUNK_SIZE:
            raise FramingError(f"chunk size {size} exceeds {MAX_CHUNK_SIZE}")
        self._message_size += size
        if self._message_size > self.max_message_size:
            if self.discard_limit is None or self._message_size > self.discard_limit:
                raise MessageTooLarge(
                    f"message of at least {self._message_size} bytes exceeds "
                    f"{self.max_message_size}" + (f" (and the {self.discard_limit} bytes we drop and go on after)"
                                                  if self.discard_limit is not None else "")
                )
            if not self._discarding:
                # From here the message is consumed, not kept: only its head
                # (for the message-id) and its size are reported.
                self._discarding = True
                self._head = self._message[:HEAD]
                self._message = bytearray()
        self._chunk_remaining = size
        self._position = newline + 1
        return True

    @staticmethod
    def _check_header_start(buffer: bytearray, position: int, available: int) -> None:
        """Raise FramingError unless the buffer starts like a chunk header."""
        if available >= 1 and buffer[position] != 0x0A:
            raise FramingError(
                f"expected LF starting a chunk header, got {bytes(buffer[position:position + 8])!r}"
            )
        if available >= 2 and buffer[position + 1] != 0x23:
            raise FramingError(
                f"expected '#' in a chunk header, got {bytes(buffer[position:position + 8])!r}"
            )
        if available >= 3 and buffer[position + 2] != 0x23 and not 0x31 <= buffer[position + 2] <= 0x39:
            raise FramingError(
                "chunk size must be 1-4294967295 without leading zeros, got "
                f"{bytes(buffer[position:position + 12])!r}"
            )

    def buffered(self) -> int:
        """Return how many bytes of an incomplete message are held."""
        return len(self._message) + len(self._buffer) - self._position

    @staticmethod
    def encode(message: bytes) -> bytes:
        """Frame one message as a single chunk (split if over the chunk limit)."""
        if not message:
            raise ValueError("a chunked message cannot be empty")
        if len(message) <= MAX_CHUNK_SIZE:
            return b"\n#%d\n%s\n##\n" % (len(message), message)
        parts = []
        for start in range(0, len(message), MAX_CHUNK_SIZE):
            piece = message[start : start + MAX_CHUNK_SIZE]
            parts.append(b"\n#%d\n%s" % (len(piece), piece))
        parts.append(b"\n##\n")
        return b"".join(parts)
