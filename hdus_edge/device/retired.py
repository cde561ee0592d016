"""Per-version tombstones: the seed versions each owner retired, durable on disk (no torch).

When device j forgets samples it publishes a new seed version and a signed ``SeedRetire``: every
version below it carries the forgotten samples' influence. A holder records the retirement here
(``<store>/retired.json``, replaced atomically) before deleting the old bytes, so a retired version
is refused forever after, even replayed to a device that has not yet seen the new version, and
even after a restart. The store's own (epoch, version) floor only covers versions below one the
device has actually held; this file covers the rest. Kept apart from the store's index so the two
evolve independently; the agent consults both.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hdus_edge.errors import StoreError
from hdus_edge.files import write_json
from hdus_edge.protocol.messages import SeedRetire, sha256_hex

logger = logging.getLogger(__name__)

FILE_NAME = "retired.json"


@dataclass(frozen=True)
class Retirement:
    """``owner``'s seeds of epoch <= ``epoch`` and version < ``below_version`` are retired."""

    owner: str
    epoch: int
    below_version: int
    sha256: str  # the version that replaces them
    retired_sha256: tuple[str, ...]
    request_id: str

    @classmethod
    def of(cls, msg: SeedRetire) -> Retirement:
        return cls(msg.owner, msg.epoch, msg.version, msg.sha256, tuple(msg.retired_sha256), msg.request_id)


class RetiredVersions:
    """The retirements a device has applied, one per owner (the highest), durable."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / FILE_NAME
        self._held: dict[str, Retirement] = {}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                for entry in raw["retirements"]:
                    entry["retired_sha256"] = tuple(entry["retired_sha256"])
                    retirement = Retirement(**entry)
                    self._held[retirement.owner] = retirement
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Never start empty: that would let retired versions back in.
                raise StoreError(f"retired seed versions {self.path} are corrupt: {exc}",
                                 hint="restore it from a backup") from None

    def get(self, owner: str) -> Retirement | None:
        """The retirement held for ``owner``, if any."""
        return self._held.get(owner)

    def refuses(self, owner: str, epoch: int, version: int) -> Retirement | None:
        """The retirement that covers ``owner``'s seed (epoch, version), or None when it is not retired."""
        held = self._held.get(owner)
        if held is not None and epoch <= held.epoch and version < held.below_version:
            return held
        return None

    def record(self, retirement: Retirement) -> bool:
        """Keep ``retirement`` durably; False when one at least as high is held (nothing changes)."""
        held = self._held.get(retirement.owner)
        if held is not None and (held.epoch, held.below_version) >= (retirement.epoch, retirement.below_version):
            return False
        self._held[retirement.owner] = retirement
        write_json(self.path, {"format": 1, "retirements": [asdict(r) for _, r in sorted(self._held.items())]})
        logger.info("retired %s's seed versions below %d (request %s)", retirement.owner, retirement.below_version,
                    retirement.request_id)
        return True


def retirement_to_publish(path: Path, owner: str, version: int, seed: bytes | None, epoch: int) -> SeedRetire | None:
    """The ``SeedRetire`` that ``models/retire.json`` (written by ``forget-samples``) asks for, when it
    names ``version`` (the seed exported now); None otherwise, or when the file is unreadable (logged)."""
    if seed is None or not Path(path).exists():
        return None
    try:
        info = json.loads(Path(path).read_text())
        if int(info.get("version", -1)) != version:
            return None
        return SeedRetire(owner, str(info["request_id"]), version, sha256_hex(seed),
                          tuple(str(h) for h in info.get("retired_sha256", [])), epoch,
                          float(info.get("issued_at", time.time())), str(info.get("reason", ""))[:200])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.error("%s is malformed: %s", path, exc)
        return None
