"""Flask JSON through orjson: /processes with thousands of entries is mostly
serialisation, which orjson does about ten times faster than the stdlib."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

__all__ = ["OrjsonProvider"]


class OrjsonProvider(JSONProvider):
    """Compact JSON, keys in insertion order (the documented field order)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return Response(orjson.dumps(obj), mimetype="application/json")
