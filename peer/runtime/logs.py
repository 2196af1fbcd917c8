"""Logging set-up: plain lines for people, one JSON object per line for machines."""

from __future__ import annotations

import json
import logging
import sys
import time


class _PeerIdFilter(logging.Filter):
    """Stamps every record with the peer id, which is known only once the port is bound."""

    peer_id = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.peer_id = self.peer_id
        return True


_filter = _PeerIdFilter()


def set_peer_id(peer_id: str) -> None:
    _filter.peer_id = peer_id


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "peer": getattr(record, "peer_id", "-"),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str, as_json: bool, peer_id: str) -> None:
    set_peer_id(peer_id)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_filter)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s %(peer_id)s %(levelname)s %(name)s: %(message)s")
        fmt.converter = time.gmtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
