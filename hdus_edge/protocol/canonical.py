"""The one canonical JSON form that gets signed (message headers, certificates, the store index).

Sorted keys, no whitespace, ASCII only, no NaN/Infinity: equal values give equal bytes, so a signature
over the bytes is a signature over the value, and the decoder can insist that what arrived is canonical.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> bytes:
    """Encode ``value`` (JSON types only) as canonical JSON bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def loads(data: bytes) -> Any:
    """Parse JSON bytes strictly (ASCII, no NaN/Infinity); raise ``ValueError`` on anything else."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(f"JSON must be ASCII: {exc}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
