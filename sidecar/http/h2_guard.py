"""What an HTTP/2 client does that costs the proxy without asking for work, counted per
connection, and when it is enough to end the connection (GOAWAY ENHANCE_YOUR_CALM, as Envoy
answers): the known HTTP/2 attacks.

- Rapid reset (CVE-2023-44487): streams reset by the client before their response began. At
  least PREMATURE_RESET_MIN streams, half of them reset that way, is an attack (Envoy's overload
  `premature_reset_total_stream_count` rule).
- Control-frame floods (PING, SETTINGS; each costs an acknowledgement): more than
  CONTROL_FRAMES_PER_SECOND in one second, or more than CONTROL_FRAMES_WHILE_BACKED_UP while our
  output is backed up (the peer does not read what it asks for).
- Empty DATA frames: more than MAX_EMPTY_DATA_FRAMES in a row without END_STREAM.

CONTINUATION floods and HPACK bombs are stopped inside h2 (a bounded CONTINUATION backlog; the
header list limit enforced while decoding); a client holding windows at zero is bounded by
back-pressure and the stream idle timeout (h2_connection.py).
"""

from __future__ import annotations

PREMATURE_RESET_MIN = 500
CONTROL_FRAMES_PER_SECOND = 10_000
CONTROL_FRAMES_WHILE_BACKED_UP = 100
MAX_EMPTY_DATA_FRAMES = 100


class AbuseGuard:
    """Per-connection counters; each method returns True when the connection must end."""

    __slots__ = ("_control", "_control_since", "_empty", "_premature", "streams")

    def __init__(self) -> None:
        self.streams = 0
        self._premature = 0
        self._control = 0
        self._control_since = 0.0
        self._empty = 0

    def stream_reset(self, premature: bool) -> bool:
        if premature:
            self._premature += 1
        total = self.streams
        return total >= PREMATURE_RESET_MIN and self._premature * 2 >= total

    def control_frame(self, now: float, backed_up: bool) -> bool:
        if now - self._control_since >= 1.0:
            self._control_since = now
            self._control = 0
        self._control += 1
        n = self._control
        return n > CONTROL_FRAMES_PER_SECOND or (backed_up and n > CONTROL_FRAMES_WHILE_BACKED_UP)

    def data_frame(self, empty: bool) -> bool:
        if not empty:
            self._empty = 0
            return False
        self._empty += 1
        return self._empty > MAX_EMPTY_DATA_FRAMES
