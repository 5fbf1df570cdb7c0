"""Progress events on the Redis channel the bot follows (`digits:events`), with the
original service's names and fields. Without REDIS_URL they are only logged."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis

from handai.storage import Place

log = logging.getLogger(__name__)

CHANNEL = "digits:events"
KINDS = ("started", "batch", "epoch", "best", "artifact", "completed", "failed")
TERMINAL = ("completed", "failed")  # a job publishes exactly one of these, last


def event_type(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"expected an event kind in {KINDS}, got {kind!r}")
    return f"digits.train.{kind}.v1"


class Events:
    def __init__(
        self,
        *,
        request_id: str,
        user_id: int | str,
        model_id: str,
        run_id: str,
        redis_url: str | None = None,
        terminal_file: Place | None = None,
    ) -> None:
        self.base = {
            "request_id": request_id,
            "user_id": user_id,
            "model_id": model_id,
            "run_id": run_id,
        }
        url = redis_url if redis_url is not None else os.environ.get("REDIS_URL")
        self.client = redis.Redis.from_url(url, socket_timeout=2) if url else None
        # Written once the terminal event is out, so whoever stops a job knows it was said.
        self.terminal_file = terminal_file

    def publish(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": event_type(kind), **self.base, "ts": time.time(), **fields}
        if kind in TERMINAL and self.terminal_file is not None and self.terminal_file.exists():
            # A job ends once for the bot: the API may have said "stopped" for a job Ray
            # stopped before it could say so itself.
            log.info("%s not published: this job's end was already announced", event["type"])
            return event
        if self.client is not None:
            try:
                self.client.publish(CHANNEL, json.dumps(event))
            except redis.RedisError as exc:  # progress is best effort; training goes on
                log.warning("could not publish %s: %s", event["type"], exc)
        if kind in TERMINAL and self.terminal_file is not None:
            self.terminal_file.parent.mkdir(parents=True, exist_ok=True)
            self.terminal_file.write_text(json.dumps(event))
        return event
