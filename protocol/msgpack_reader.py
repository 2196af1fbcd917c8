"""A bounded msgpack reader shared by both wire codecs (model packets, ``protocol.wire``;
membership messages, ``protocol.membership.wire``).

Every declared length (string, binary, array, map, extension) is checked against its
limit as soon as its header is read, before anything proportional to it is allocated
or even before the bytes it declares are looked for; nesting is bounded too. ``bin``
values come back as read-only (or, for an owned buffer, writable) memoryviews of the
input, never copies, so a decoded tensor can view the received packet.

Each way the bytes can be wrong raises ``MsgpackError`` with a typed ``fault`` (and,
for a length over its limit, the ``kind`` of value), so a codec maps faults to its own
refusals by branching on them, never on message text. On valid input it returns what
``msgpack.unpackb(raw=False, strict_map_key=True, use_list=True)`` returns, except that
``bin`` values are memoryviews.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from msgpack import ExtType


class Fault(enum.Enum):
    """Why the reader refused the bytes."""

    TRUNCATED = "truncated"      # the input ended inside a value
    TRAILING = "trailing"        # bytes left over after the one value (``unpack``)
    TOO_LARGE = "too_large"      # a declared length above its limit (``MsgpackError.kind`` says which)
    TOO_DEEP = "too_deep"        # containers nested deeper than ``ReadLimits.max_depth``
    UNSUPPORTED = "unsupported"  # a type byte not taken here (an extension where none is allowed, 0xc1)
    INVALID = "invalid"          # well-framed but not valid: bad UTF-8, a map key that is not a string
    NOT_ARRAY = "not_array"      # ``read_array_header`` found another type


class Kind(enum.Enum):
    """The kind of value whose declared length was over its limit."""

    STR = "str"
    BIN = "bin"
    ARRAY = "array"
    MAP = "map"
    EXT = "ext"


class MsgpackError(Exception):
    """Bytes the reader refuses; ``fault`` (and ``kind`` for ``TOO_LARGE``) say why."""

    def __init__(self, fault: Fault, detail: str, kind: Kind | None = None) -> None:
        super().__init__(detail)
        self.fault = fault
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class ReadLimits:
    """The largest length of each kind of value the reader accepts (None: no limit but
    the input itself; ``max_ext=None`` refuses extensions altogether)."""

    max_str: int
    max_array: int
    max_map: int
    max_bin: int | None = None
    max_ext: int | None = None
    max_depth: int = 32


_FIXED = {0xca: (">f", 4), 0xcb: (">d", 8), 0xcc: (">B", 1), 0xcd: (">H", 2), 0xce: (">I", 4), 0xcf: (">Q", 8),
          0xd0: (">b", 1), 0xd1: (">h", 2), 0xd2: (">i", 4), 0xd3: (">q", 8)}
_LENGTH = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4, 0xdc: 2, 0xdd: 4, 0xde: 2, 0xdf: 4}
_EXT_LENGTH = {0xc7: 1, 0xc8: 2, 0xc9: 4}   # ext 8/16/32: a length field, then the type
_FIXEXT = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}
_TIMESTAMP = -1  # msgpack's one predefined extension; its body is never empty


def _truncated() -> MsgpackError:
    return MsgpackError(Fault.TRUNCATED, "input ended before its declared contents")


def _too_large(n: int, most: int | None, kind: Kind) -> MsgpackError:
    return MsgpackError(Fault.TOO_LARGE, f"{kind.value} of length {n} exceeds {most}", kind)


class Reader:
    """Reads msgpack values one after another from one buffer (``pos`` is the offset).

    Written for speed in plain Python (a full state is tens of thousands of small rows):
    the common types (small integers, strings, arrays) are read in place, without a
    slice or a call per header.
    """

    def __init__(self, data: bytes | bytearray | memoryview, limits: ReadLimits, writable: bool = False) -> None:
        view = memoryview(data).cast("B")
        self.view = view if writable and not view.readonly else view.toreadonly()
        self.size = len(self.view)
        self.pos = 0
        self.limits = limits
        self._max_str, self._max_array, self._max_depth = limits.max_str, limits.max_array, limits.max_depth

    @property
    def at_end(self) -> bool:
        return self.pos == self.size

    def read(self) -> Any:
        """The next value."""
        try:
            return self._read(0)
        except MsgpackError:
            raise
        except Exception as e:  # noqa: BLE001 - the reader's contract: only MsgpackError escapes
            raise MsgpackError(Fault.INVALID, f"{type(e).__name__}: {e}") from None

    def read_array_header(self) -> int:
        """The length of the array that starts here; its items are the next ``read``s."""
        b = self._take(1)[0]
        if 0x90 <= b <= 0x9f:
            n = b & 0x0f
        elif b in (0xdc, 0xdd):
            n = int.from_bytes(self._take(_LENGTH[b]), "big")
        else:
            raise MsgpackError(Fault.NOT_ARRAY, f"expected an array, found type byte 0x{b:02x}")
        if n > self._max_array:
            raise _too_large(n, self._max_array, Kind.ARRAY)
        return n

    def read_map_header(self) -> int:
        """The number of pairs in the map that starts here; its keys and values are the next
        ``read``s (a packet's header is read this way before its tensors have arrived)."""
        b = self._take(1)[0]
        if 0x80 <= b <= 0x8f:
            n = b & 0x0f
        elif b in (0xde, 0xdf):
            n = int.from_bytes(self._take(_LENGTH[b]), "big")
        else:
            raise MsgpackError(Fault.INVALID, f"expected a map, found type byte 0x{b:02x}")
        if n > self.limits.max_map:
            raise _too_large(n, self.limits.max_map, Kind.MAP)
        return n

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > self.size:
            raise _truncated()
        out = self.view[self.pos:end]
        self.pos = end
        return out

    def _read(self, depth: int) -> Any:
        view, pos = self.view, self.pos
        if pos >= self.size:
            raise _truncated()
        b = view[pos]
        pos += 1
        if b <= 0x7f:  # positive fixint
            self.pos = pos
            return b
        if 0xa0 <= b <= 0xbf or b == 0xd9:  # fixstr, str 8
            if b == 0xd9:
                if pos >= self.size:
                    raise _truncated()
                n = view[pos]
                pos += 1
            else:
                n = b & 0x1f
            self.pos = pos
            return self._str(n)
        if 0x90 <= b <= 0x9f:  # fixarray
            self.pos = pos
            return self._array(b & 0x0f, depth)
        self.pos = pos
        if b >= 0xe0:  # negative fixint
            return b - 0x100
        if 0x80 <= b <= 0x8f:
            return self._map(b & 0x0f, depth)
        if b == 0xc0:
            return None
        if b == 0xc2:
            return False
        if b == 0xc3:
            return True
        fixed = _FIXED.get(b)
        if fixed is not None:
            return struct.unpack(fixed[0], self._take(fixed[1]))[0]
        width = _LENGTH.get(b)
        if width is not None:
            n = int.from_bytes(self._take(width), "big")
            if b <= 0xc6:
                most = self.limits.max_bin
                if most is not None and n > most:
                    raise _too_large(n, most, Kind.BIN)
                return self._take(n)  # a view of the input, no copy
            if b <= 0xdb:
                return self._str(n)
            if b <= 0xdd:
                return self._array(n, depth)
            return self._map(n, depth)
        return self._ext(b)

    def _str(self, n: int) -> str:
        # The limit first: a declared length is refused before its bytes are looked for.
        if n > self._max_str:
            raise _too_large(n, self._max_str, Kind.STR)
        start = self.pos
        end = start + n
        if end > self.size:
            raise _truncated()
        self.pos = end
        try:
            return str(self.view[start:end], "utf-8")
        except UnicodeDecodeError as e:
            raise MsgpackError(Fault.INVALID, str(e)) from None

    def _array(self, n: int, depth: int) -> list[Any]:
        if n > self._max_array:
            raise _too_large(n, self._max_array, Kind.ARRAY)
        if n and depth >= self._max_depth:
            raise MsgpackError(Fault.TOO_DEEP, f"nested deeper than {self._max_depth}")
        read, inner = self._read, depth + 1
        return [read(inner) for _ in range(n)]

    def _map(self, n: int, depth: int) -> dict[Any, Any]:
        if n > self.limits.max_map:
            raise _too_large(n, self.limits.max_map, Kind.MAP)
        if n and depth >= self._max_depth:
            raise MsgpackError(Fault.TOO_DEEP, f"nested deeper than {self._max_depth}")
        out = {}
        for _ in range(n):
            key = self._read(depth + 1)
            if isinstance(key, memoryview):
                key = bytes(key)
            elif not isinstance(key, str):
                raise MsgpackError(Fault.INVALID, f"{type(key).__name__} is not allowed for map key")
            out[key] = self._read(depth + 1)
        return out

    def _ext(self, b: int) -> ExtType:
        if self.limits.max_ext is None or not (b in _FIXEXT or b in _EXT_LENGTH):
            raise MsgpackError(Fault.UNSUPPORTED, f"unsupported type byte 0x{b:02x}")
        n = _FIXEXT[b] if b in _FIXEXT else int.from_bytes(self._take(_EXT_LENGTH[b]), "big")
        if n > self.limits.max_ext:
            raise _too_large(n, self.limits.max_ext, Kind.EXT)
        code = struct.unpack(">b", self._take(1))[0]
        body = bytes(self._take(n))
        if code == _TIMESTAMP:
            raise MsgpackError(Fault.INVALID, "timestamps are not part of either format")
        return ExtType(code, body)


def unpack(data: bytes | bytearray | memoryview, limits: ReadLimits, writable: bool = False) -> Any:
    """The one value ``data`` holds; anything after it is a ``TRAILING`` fault.

    Where ``limits`` allow no binaries (``max_bin=0``: membership messages) there is no
    view of the input to hand back, so valid input goes through msgpack's C unpacker
    under the same length limits, an order of magnitude faster than this module's
    reader. Whatever the C unpacker refuses, or returns nested deeper than allowed, is
    read again here, so a fault still comes out typed, and typed the same way.
    """
    if limits.max_bin == 0 and not writable:
        try:
            value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                    max_str_len=limits.max_str, max_bin_len=0, max_array_len=limits.max_array,
                                    max_map_len=limits.max_map, max_ext_len=limits.max_ext or 0)
        except Exception:  # noqa: BLE001 - classified below, by the reader that types faults
            pass
        else:
            if _depth_within(value, limits.max_depth):
                return value
    reader = Reader(data, limits, writable)
    obj = reader.read()
    if not reader.at_end:
        raise MsgpackError(Fault.TRAILING, "trailing bytes after the value")
    return obj


def _depth_within(value: Any, most: int) -> bool:
    """Whether every non-empty container in ``value`` sits less than ``most`` levels deep
    (the top at level 0): the bound ``Reader`` enforces as it reads."""
    level, depth = [value], 0
    while True:
        containers = [x for x in level if isinstance(x, (list, dict)) and x]
        if not containers:
            return True
        if depth >= most:
            return False
        level = [v for x in containers for v in (x if isinstance(x, list) else [*x.keys(), *x.values()])]
        depth += 1
