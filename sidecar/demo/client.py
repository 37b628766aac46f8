"""The demo's client side: one request with a deadline, and waiting for a URL to answer 200.

Theory of operation: the driver asks for pages either directly (loopback demo) or from inside a
network namespace (capture demo), where it runs this module as a program that prints the answer
as one JSON object. Both paths use `fetch`, so what the user sees is the same.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

POLL_INTERVAL = 0.1  # seconds between readiness probes


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as the demo prints it; `error` is set (and status 0) when there was none."""

    status: int = 0
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    error: str = ""

    def header(self, name: str) -> str:
        """The first value of header `name` (case-insensitive), or ""."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), "")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Answer:
        data = json.loads(text)
        headers = tuple((str(k), str(v)) for k, v in data.get("headers", ()))
        return cls(
            status=int(data.get("status", 0)),
            reason=str(data.get("reason", "")),
            headers=headers,
            body=str(data.get("body", "")),
            error=str(data.get("error", "")),
        )


def fetch(url: str, headers: Sequence[tuple[str, str]] = (), timeout: float = 5.0) -> Answer:
    """`GET url` once, with `headers`; never raises for network trouble (see Answer.error)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("user-agent", "sidecar-demo")
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return Answer(resp.status, resp.reason, tuple(resp.getheaders()), body)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def wait_ok(url: str, deadline_s: float) -> Answer:
    """Probe `url` until it answers 200 or `deadline_s` seconds pass; the last answer."""
    end = time.monotonic() + deadline_s
    while True:
        answer = fetch(url, timeout=min(1.0, max(0.1, end - time.monotonic())))
        if answer.status == 200 or time.monotonic() >= end:
            return answer
        time.sleep(POLL_INTERVAL)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sidecar.demo.client URL [-H 'name: value'] [--wait SECONDS]`: JSON answer."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.demo.client")
    parser.add_argument("url")
    parser.add_argument("-H", "--header", action="append", default=[], help="'name: value'")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--wait", type=float, default=0.0, help="probe until 200, this long")
    args = parser.parse_args(argv)
    if args.wait > 0:
        answer = wait_ok(args.url, args.wait)
    else:
        pairs = [tuple(part.strip() for part in h.split(":", 1)) for h in args.header]
        answer = fetch(args.url, [(p[0], p[1]) for p in pairs if len(p) == 2], args.timeout)
    sys.stdout.write(answer.to_json() + "\n")
    return 0 if answer.status else 1


if __name__ == "__main__":
    raise SystemExit(main())
