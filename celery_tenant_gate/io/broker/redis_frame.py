"""A control task's stored message as a frame: made once per process by Celery's and
kombu's own code, then filled in for each message (see :mod:`.redis_control`)."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from typing import Any

from kombu.utils.json import dumps as json_dumps

#: What changes from one control task's message to the next.
_PLACES = ("id", "kwargsrepr", "tag", "body")

#: ``envelope(task_id, kwargsrepr, tag, body)``: the stored document and the empty body.
Envelope = Callable[[str, str, str, str], tuple[Any, tuple[Any, ...]]]


class MessageFrame:
    """The stored message of a control task with placeholders for what changes from
    one to the next (task id, ``kwargsrepr``, delivery tag, body), made once per
    process by Celery's and kombu's own code (``RedisControlQueue.envelope``)
    and filled in by joining strings: the message is the same, character for
    character, for a fraction of the cost. Per process: Celery's ``origin`` header
    names the process."""

    def __init__(self, pid: int, pieces: list[str] | None, empty_body: tuple[Any, ...]) -> None:
        self.pid = pid
        #: Literal text, then a placeholder's name, then literal text, and so on;
        #: ``None`` if a placeholder showed up other than as a whole JSON string
        #: (then each message is built in full).
        self.pieces = pieces
        #: The body Celery makes for no keyword arguments: ``(args, kwargs, embed)``.
        self.empty_body = empty_body

    @classmethod
    def of(cls, envelope: Envelope) -> MessageFrame:
        """The frame of what *envelope(task_id, kwargsrepr, tag, body)* makes (the
        stored document and the empty body), by marking each place."""
        marks = {name: f"tenant-gate-{name}-{uuid.uuid4().hex}" for name in _PLACES}
        document, empty_body = envelope(
            marks["id"], marks["kwargsrepr"], marks["tag"], marks["body"]
        )
        text = str(json_dumps(document))  # type: ignore[no-untyped-call]
        quoted = {json.dumps(mark): name for name, mark in marks.items()}
        split = re.split("(" + "|".join(map(re.escape, quoted)) + ")", text)
        literal = split[::2]
        if any(mark in piece for piece in literal for mark in marks.values()):
            return cls(os.getpid(), None, empty_body)
        pieces = [quoted[piece] if n % 2 else piece for n, piece in enumerate(split)]
        return cls(os.getpid(), pieces, empty_body)

    def fill(self, task_id: str, kwargsrepr: str, tag: str, body: str) -> str:
        """The message with these values in its places."""
        assert self.pieces is not None
        values = {
            "id": f'"{task_id}"',
            "kwargsrepr": json.dumps(kwargsrepr),
            "tag": f'"{tag}"',
            "body": f'"{body}"',
        }
        return "".join(values[piece] if n % 2 else piece for n, piece in enumerate(self.pieces))
