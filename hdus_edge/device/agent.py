"""The device agent: the one place that joins transport, protocol, store and ensemble.

Every message is handled on the transport's single worker thread (paho's callbacks only enqueue),
in this order: parse topic -> decode -> verify signer, certificate and authority -> check it belongs
on its topic -> policy (neighbour, tombstone, version) -> act -> persist -> rebuild the ensemble ->
answer. A rejected message is logged and audited (rate-limited) and changes nothing.

No single device can take this one down (issue 14): a seed that passes the cheap checks is queued
(one per neighbour, latest wins) for the seed worker thread, which runs the static compute budget,
the safe-load checks and the probe outside the agent's lock, so an unlearn order is handled at once
even while seeds are probed; messages from not-yet-certified senders are parked within caps
(``device.parking``); rejections reach the audit log through the store's rate limit.

Who sends seeds to whom: each device publishes its neighbour list (``membership/<id>``, retained,
signed); device j publishes its seed to ``seeds/<i>/<j>`` for every device i whose list names j.
Device i subscribes only to ``seeds/<i>/<j>`` for the j it lists, and installs only those.

Forgetting: an order (``unlearn/<target>``, retained) signed by the target or the admin makes every
holder commit tombstone + deletion + receipt in one store step, drop the seed from the ensemble,
clear its retained inbox copy on the broker, and publish the signed receipt. A device that was away
gets the retained order on return; the tombstone digest each device gossips covers brokers that
lost retained messages or queues. Seeds of a forgotten device are refused until it is re-admitted
with a higher epoch. A device forgotten itself records it in its store and stops: it publishes
nothing more, and its agent refuses to start again (``DeviceForgottenError``) until re-admitted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.config import FleetConfig
from hdus_edge.device.apply_times import (
    HOLDER,
    NON_HOLDER,
    ApplyHistogram,
    ApplyTimes,
    ApplyTiming,
)
from hdus_edge.device.gate import check_update
from hdus_edge.device.parking import ParkingLimits, ParkingLot
from hdus_edge.device.retired import RetiredVersions, Retirement, retirement_to_publish
from hdus_edge.device.store import AuditLimit, SeedStore, StoredSeed
from hdus_edge.ensemble.combine import DEFAULT_LAM
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.errors import (
    DeviceForgottenError,
    HdusError,
    ProtocolError,
    ReplayError,
    StateDirError,
    TombstonedError,
    UnknownSenderError,
)
from hdus_edge.files import thread_sync_count, write_json
from hdus_edge.onnx.contract import (
    DEFAULT_POLICY,
    ComputeBudget,
    LoadPolicy,
    ModelContract,
)
from hdus_edge.onnx.metadata import Provenance, provenance_of_props
from hdus_edge.onnx.probe import probe_in_subprocess
from hdus_edge.onnx.session import make_session
from hdus_edge.protocol import codec
from hdus_edge.protocol import topics as topic_kinds
from hdus_edge.protocol.crypto import (
    DeviceCertificate,
    SigningKey,
    TrustStore,
    VerifyKey,
)
from hdus_edge.protocol.fields import ADMIN_ID
from hdus_edge.protocol.messages import (
    Hello,
    NeighborList,
    Receipt,
    RevocationList,
    SeedEnvelope,
    SeedRetire,
    SwapReceipt,
    TombstoneDigest,
    UnlearnOrder,
    sha256_hex,
)
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import StateDir
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles

logger = logging.getLogger(__name__)

_WATCH_INTERVAL_S = 1.0  # how often the state dir is checked for neighbour and seed changes
# After an order, each device's digest waits a random 0..5 s (seeded by its id) and is dropped when
# another device's digest already carries every order it would (below).
DIGEST_SPREAD_S = 5.0
DIGEST_ORDERS = 64  # the newest orders a digest carries


@dataclass(frozen=True)
class AgentSettings:
    """How an agent runs (the profile and fleet config fill these in)."""

    lam: float = DEFAULT_LAM
    space: str = "probs"
    strategy: str = "fused"
    providers: tuple[str, ...] | None = None
    intra_op_threads: int | None = 1
    max_seed_bytes: int = DEFAULT_POLICY.max_bytes
    # A crash in the native runtime must not take the agent down; in production this also keeps
    # onnx out of the agent process: seed checks run in the probe child, the fused graph is built
    # by a child too (``hdus_edge.ensemble.fuse_child``).
    probe_in_subprocess: bool = True
    digest_interval_s: float = 30.0  # how often the tombstone digest is re-published
    connect_timeout_s: float = 10.0
    # What a neighbour or an insider may cost (the profile's [limits]; reasons in hdus_edge/config.py).
    seed_compute_multiple: float | None = 4.0  # None: no static budget (trusted lab models only)
    probe_timeout_s: float = 20.0
    probe_run_ms: float | None = 1000.0
    parking: ParkingLimits = ParkingLimits()
    audit_limit: AuditLimit = AuditLimit()
    # The gate on a neighbour's new seed version, measured on the reference set (0 = off; profile [update]).
    gate_min_agreement: float = 0.0
    gate_min_accuracy: float = 0.0


@dataclass(frozen=True)
class OwnModels:
    """The device's own exported models."""

    main_onnx: bytes
    seed_onnx: bytes | None
    seed_version: int
    main_arch: str
    seed_arch: str
    reference_sha256: str


@dataclass
class AgentCounters:
    """What the agent has done since it started (for status and tests)."""

    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    unlearned: int = 0
    receipts_sent: int = 0
    digests: int = 0  # neighbours' tombstone digests handled
    digest_orders_verified: int = 0  # orders inside them whose signatures were checked (new to us)
    digests_suppressed: int = 0  # our post-order digests left out: another device's carried every order
    parked: int = 0  # messages parked until their sender's hello
    parked_dropped: int = 0  # parked messages dropped to stay within the caps (oldest first)
    seeds_superseded: int = 0  # queued seeds replaced by a newer one of the same owner before their turn
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class AgentObservation:
    """What an operator scrapes (``hdus_edge.device.metrics``): read without the agent's lock, so a
    scrape never waits behind seed work."""

    device_id: str
    members: tuple[str, ...]
    seed_versions: dict[str, int]
    ensemble_generation: int
    ensemble_built_at: float
    ensemble_fused: bool
    accepted: int
    orders_applied: int
    receipts_sent: int
    duplicates: int
    rejections: dict[str, int]
    connected: bool
    connects: int
    parked: int
    outbox_pending: int
    ready: bool
    applies: dict[str, ApplyHistogram] = field(default_factory=dict)  # unlearn apply times, by role


class DeviceAgent:
    """One device's daemon: keeps its ensemble in step with the fleet over MQTT."""

    def __init__(
        self,
        *,
        device_id: str,
        fleet: FleetConfig,
        key: SigningKey,
        certificate: DeviceCertificate,
        admin_key: VerifyKey,
        models: OwnModels,
        neighbors: tuple[str, ...],
        broker_url: str,
        store_dir: Path,
        outbox_dir: Path | None = None,
        status_file: Path | None = None,
        profile: str = "generic-x86_64",
        settings: AgentSettings = AgentSettings(),
        watch: StateDir | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self.settings = settings
        self.topics = Topics(fleet.fleet.name)
        self._key = key
        self._cert = certificate
        self._models = models
        self._profile = profile
        self._status_file = status_file
        # With a state dir, the agent follows `neighbors add/remove` (device.toml) and a new
        # `export` (models/seed.json) while it runs.
        self._watch = watch
        self._watched: dict[Path, int] = {}
        self.contract = ModelContract.from_shape(fleet.data.input_shape, fleet.data.num_classes)
        self.trust = TrustStore(fleet.fleet.name, admin_key)
        self.trust.certify(certificate)
        self._lock = threading.RLock()  # the worker thread and API callers (set_neighbors, stop)
        self._neighbors: tuple[str, ...] = tuple(sorted(set(neighbors) - {device_id}))
        self._wanted_by: dict[str, frozenset[str]] = {}  # device -> its neighbour list
        self._membership_versions: dict[str, int] = {}
        self._published: dict[str, int] = {}  # recipient -> seed version published to it
        # Parked per sender and topic (latest wins), capped per sender, per topic and in total.
        self._parked = ParkingLot(settings.parking)
        # Seeds that passed the cheap checks wait here (one per owner, latest wins) for the seed
        # worker, which runs the costly checks and the probe off the message handler's path.
        self._seed_queue: dict[str, tuple[str, SeedEnvelope, codec.SignedMessage]] = {}
        self._seed_busy: tuple[str, str, int] | None = None  # (owner, sha256, version) being checked
        self._seed_wakeup = threading.Condition(threading.Lock())
        self._hellos: dict[str, Hello] = {}
        self._forgotten = False
        self._connects_seen = 0
        self._revocation_version = 0  # the newest admin revocation list applied
        # An order was applied: the monotonic time to publish the digest (None: nothing due). Every
        # device applies every order, so after a burst N devices would each send the same orders to N
        # devices (N^2 deliveries, each decoded; at 100 agents on two cores that storm delayed the
        # next order's receipts). Spread in time, and suppressed once somebody else's digest covers
        # ours, a burst costs a few digests; the periodic digest still goes out (and to the dashboard).
        self._digest_due_at: float | None = None
        self._digest_jitter = random.Random(f"digest:{device_id}")  # seeded: a run is reproducible
        # Encoded orders already applied here, as they travel inside digests: skipped unverified.
        self._applied_order_bytes: set[bytes] = set()
        self.counters = AgentCounters()
        self.apply_times = ApplyTimes()
        # Per-version tombstones (forget-samples): retired seed versions, pending swap receipts,
        # new versions the gate held back (one per owner), the reference set for the gate.
        self.retired = RetiredVersions(store_dir)
        self._swaps: dict[str, tuple[SeedRetire, str | None]] = {}
        self._replaced: dict[str, str] = {}  # owner -> sha256 of the version a newer one replaced here
        self._gated: dict[str, tuple[str, codec.SignedMessage]] = {}
        self._gate_data: tuple[np.ndarray, np.ndarray] | None = None
        self.store = SeedStore(store_dir, audit_limit=settings.audit_limit)
        forgotten = self.store.forgotten()
        if forgotten is not None and forgotten.epoch >= certificate.epoch:
            self.store.close()
            raise DeviceForgottenError(
                f"device {device_id!r} was forgotten (request {forgotten.request_id}, epoch {forgotten.epoch}); "
                "its agent publishes nothing until it is re-admitted"
            )
        try:
            self._policy = LoadPolicy(max_bytes=settings.max_seed_bytes)
            # The fleet's seed architecture, as this device's own seed: what a neighbour's seed may cost
            # (a multiple of it). Measured where the checks run: in the probe child, or here.
            self._budget_reference = models.seed_onnx if settings.seed_compute_multiple is not None else None
            self._budget: ComputeBudget | None = None
            self.runtime = self._build_runtime(models.main_onnx)
        except BaseException:
            self.store.close()
            raise
        # Client ids are per broker: qualify with the fleet so two fleets can share one broker.
        self.transport = MqttTransport(
            broker_url, f"{fleet.fleet.name}.{device_id}", handler=self._on_message, outbox_dir=outbox_dir,
            presence_topic=self.topics.presence(device_id), tls=tls,
        )
        self._stop = threading.Event()
        self._digest_thread: threading.Thread | None = None
        self._seed_thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _budgeted_policy(self) -> LoadPolicy:
        """The load policy with the compute budget, measured here on first use (in-process checks only)."""
        if self._budget is None and self._budget_reference is not None:
            import onnx

            from hdus_edge.onnx.cost import graph_cost

            self._budget = ComputeBudget(graph_cost(onnx.load_from_string(self._budget_reference)),
                                         float(self.settings.seed_compute_multiple))  # type: ignore[arg-type]
        return LoadPolicy(max_bytes=self._policy.max_bytes, compute_budget=self._budget)

    # --- construction from a state directory ------------------------------------------------

    @classmethod
    def from_state_dir(
        cls, state: StateDir, *, broker_url: str | None = None, settings: AgentSettings | None = None
    ) -> DeviceAgent:
        """Build the agent of a provisioned device whose models were exported."""
        device = state.device()
        fleet = state.fleet()
        profile = state.profile()
        main_onnx = state.model_bytes("main.onnx")
        seed_onnx = (state.models / "seed.onnx").read_bytes() if (state.models / "seed.onnx").exists() else None
        reference_sha = fleet.data.reference_sha256
        seed_arch = profile.model.seed_arch
        # Our own models: their provenance read through onnxruntime (no onnx in the agent process);
        # the runtime loads and probes the main model against the fleet's contract, the neighbours
        # check our seed before they take it.
        if seed_onnx is not None:
            prov = _own_provenance(seed_onnx, "seed.onnx")
            if prov is not None:
                reference_sha = prov.reference_sha256 or reference_sha
                seed_arch = prov.arch
        main_prov = _own_provenance(main_onnx, "main.onnx")
        settings = settings or settings_for(state)
        models = OwnModels(
            main_onnx=main_onnx, seed_onnx=seed_onnx, seed_version=state.seed_version(),
            main_arch=main_prov.arch if main_prov else profile.model.main_arch, seed_arch=seed_arch,
            reference_sha256=reference_sha or "0" * 64,
        )
        url = broker_url or device.device.broker or fleet.fleet.broker
        return cls(
            device_id=device.device.id, fleet=fleet, key=state.key(), certificate=state.certificate(),
            admin_key=state.admin_key(), models=models, neighbors=device.neighbors,
            broker_url=url, store_dir=state.store_dir,
            outbox_dir=state.outbox_dir, status_file=state.status_file, profile=device.device.profile,
            settings=settings, watch=state, tls=TlsFiles.for_url(url, state.tls_dir),
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> DeviceAgent:
        """Connect, subscribe, announce, re-send what a crash left unsent; returns when ready."""
        if self._watch is not None:  # temp files of writes a crash interrupted (status.json, ...)
            for stray in [*self._watch.root.glob(".tmp-*"), *self._watch.models.glob(".tmp-*")]:
                stray.unlink(missing_ok=True)
                logger.warning("agent %s: removed stray temp file %s", self.device_id, stray)
        # Orders first (Topics.subscriptions): the broker hands over retained messages filter by filter,
        # so an order that forgot this device while it was down is applied before any neighbour list
        # asks for its seed.
        self.transport.subscribe(self.topics.subscriptions(self.device_id, self._neighbors))
        self._seed_thread = threading.Thread(target=self._seed_loop, name=f"hdus-seeds-{self.device_id}", daemon=True)
        self._seed_thread.start()
        self.transport.connect(timeout=self.settings.connect_timeout_s)
        self._announce()
        self._publish_retire()
        for pending in self.store.pending_receipts():
            self._resend_receipt(pending.request_id, pending.data)
        self._digest_thread = threading.Thread(target=self._digest_loop, name=f"hdus-digest-{self.device_id}", daemon=True)
        self._digest_thread.start()
        self._ready.set()
        self._write_status()
        logger.info("agent %s ready: %d neighbours, %d seeds", self.device_id, len(self._neighbors), len(self.members()))
        return self

    def stop(self) -> None:
        """Leave cleanly: presence offline, disconnect, close the store."""
        self._stop.set()
        with self._seed_wakeup:
            self._seed_wakeup.notify_all()
        if self._digest_thread is not None:
            self._digest_thread.join(timeout=5)
        if self._seed_thread is not None:
            # Not for a probe's full time limit: a worker still probing finds _stop set under the
            # lock and installs nothing (its child process ends by its own limits).
            self._seed_thread.join(timeout=2)
        with self._lock:  # let a handler in flight finish before the transport goes
            pass
        self.transport.close()
        self.runtime.close()
        self.store.close()

    def __enter__(self) -> DeviceAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- queries -----------------------------------------------------------------------------

    def members(self) -> tuple[str, ...]:
        """Device ids of the seeds in this device's ensemble, sorted."""
        return self.runtime.members()

    @property
    def neighbors(self) -> tuple[str, ...]:
        return self._neighbors

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The ensemble's output for ``x`` [N, C, H, W]."""
        return self.runtime.predict(np.ascontiguousarray(x, dtype=np.float32))

    def observe(self) -> AgentObservation:
        """Counters and state for metrics, without the lock (every read is one atomic copy)."""
        c = self.counters
        parked = len(self._parked)  # messages awaiting their sender's hello (one atomic read)
        return AgentObservation(
            device_id=self.device_id, members=self.runtime.members(), seed_versions=dict(self.runtime.seed_versions()),
            ensemble_generation=self.runtime.generation, ensemble_built_at=self.runtime.built_at,
            ensemble_fused=self.runtime.fused_model_bytes is not None, accepted=c.accepted,
            orders_applied=c.unlearned, receipts_sent=c.receipts_sent, duplicates=c.duplicates,
            rejections=dict(c.reasons), connected=self.transport.connected, connects=self.transport.connect_count,
            parked=parked, outbox_pending=self.transport.pending, ready=self.ready,
            applies=self.apply_times.histograms(),
        )

    @property
    def ready(self) -> bool:
        """True between a successful ``start`` and ``stop``."""
        return self._ready.is_set() and not self._stop.is_set()

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: members, seeds, tombstones, receipts, connection."""
        with self._lock:
            seeds = [
                {"owner": s.owner, "version": s.version, "epoch": s.epoch, "sha256": s.sha256, "arch": s.arch, "bytes": s.size}
                for s in self.store.list_seeds()
            ]
            return {
                "device_id": self.device_id,
                "fleet": self.fleet.fleet.name,
                "profile": self._profile,
                "epoch": self._cert.epoch,
                "connected": self.transport.connected,
                "neighbors": list(self._neighbors),
                "members": list(self.members()),
                "ensemble": {"lam": self.runtime.lam, "space": self.runtime.space, "strategy": self.runtime.strategy},
                "seeds": seeds,
                "own_seed": {"version": self._models.seed_version, "arch": self._models.seed_arch,
                             "published_to": sorted(self._published)},
                "tombstones": [{"target": t.target, "epoch": t.epoch, "request_id": t.request_id, "at": t.at}
                               for t in self.store.tombstones()],
                "pending_receipts": [r.request_id for r in self.store.pending_receipts()],
                "forgotten": self._forgotten,
                "parked": {"messages": len(self._parked), "bytes": self._parked.bytes},
                "seed_queue": len(self._seed_queue),
                "counters": {k: v for k, v in vars(self.counters).items() if k != "reasons"}
                | {"reasons": dict(self.counters.reasons)},
                "unlearn_applies": self.apply_times.to_json(),
                "updated_at": time.time(),
            }

    # --- membership (API) --------------------------------------------------------------------

    def set_neighbors(self, neighbors: tuple[str, ...]) -> None:
        """Change whose seeds this device wants: drop the removed ones, ask for the new ones."""
        with self._lock:
            new = tuple(sorted(set(neighbors) - {self.device_id}))
            gone = set(self._neighbors) - set(new)
            added = set(new) - set(self._neighbors)
            self._neighbors = new
            for j in sorted(gone):
                self.transport.unsubscribe(self.topics.seed(self.device_id, j))
                with self._seed_wakeup:
                    self._seed_queue.pop(j, None)
                if self.runtime.remove(j):
                    self.store.delete_seed(j, reason="neighbour removed")
            self._publish_membership()
            # Subscribing makes the broker hand over the retained seed, if the neighbour published one.
            if added:
                self.transport.subscribe([self.topics.seed(self.device_id, j) for j in sorted(added)])
            self._write_status()

    # --- message handling (worker thread) ----------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if codec.is_clear(payload) or self._stop.is_set():
            return  # a cleared retained topic, or we are shutting down: nothing to act on
        try:
            parsed = self.topics.parse(topic)
            signed = codec.decode(payload, max_bytes=self.settings.max_seed_bytes + 64 * 1024)
            self._dispatch(parsed.kind, topic, signed, payload)
        except UnknownSenderError as exc:
            self._park(topic, payload, exc)
        except HdusError as exc:
            self._reject(topic, exc)
        except Exception:  # a bug must not stop the worker; it is logged with its traceback
            logger.exception("agent %s: unexpected error handling %s", self.device_id, topic)

    def _dispatch(self, kind: str, topic: str, signed: codec.SignedMessage, raw: bytes) -> None:
        with self._lock:
            if self._stop.is_set():  # checked under the lock: stop() waits for this handler, then closes
                return
            if kind == topic_kinds.HELLO:
                self._on_hello(topic, signed)
            elif kind == topic_kinds.SEED:
                self._on_seed(topic, signed)
            elif kind == topic_kinds.MEMBERSHIP:
                self._on_membership(topic, signed)
            elif kind == topic_kinds.UNLEARN:
                self._on_unlearn(topic, signed, raw)
            elif kind == topic_kinds.TOMBSTONES:
                self._on_digest(topic, signed)
            elif kind == topic_kinds.REVOCATIONS:
                self._on_revocations(topic, signed)
            elif kind == topic_kinds.RETIRE:
                self._on_retire(topic, signed)
            else:
                logger.debug("agent %s: ignoring %s", self.device_id, topic)

    def _on_hello(self, topic: str, signed: codec.SignedMessage) -> None:
        msg = codec.verify(signed, self.trust)
        assert isinstance(msg, Hello)
        self.topics.check_matches(topic, msg)
        try:
            changed = self.trust.certify(msg.certificate)
        except ReplayError:
            logger.info("agent %s: stale hello from %s ignored", self.device_id, msg.device_id)
            return
        self._hellos[msg.device_id] = msg
        if changed:
            logger.info("agent %s: certified %s (epoch %d)", self.device_id, msg.device_id, msg.certificate.epoch)
        for parked_topic, parked in self._parked.release(msg.device_id):
            self._on_message(parked_topic, parked, True)

    def _on_seed(self, topic: str, signed: codec.SignedMessage) -> None:
        env = codec.verify(signed, self.trust, recipient=self.device_id)
        assert isinstance(env, SeedEnvelope)
        self.topics.check_matches(topic, env)
        if env.owner not in self._neighbors:
            raise _Refused(f"seed of {env.owner!r} refused: not a neighbour of {self.device_id!r}", "not-neighbour")
        # In flight first, then held: the worker commits to the store before it clears ``_seed_busy``,
        # so a copy that arrives while the first is being installed is seen in one or the other.
        with self._seed_wakeup:
            if self._seed_busy == (env.owner, env.sha256, env.version) or (
                    env.owner in self._seed_queue and _same_seed(self._seed_queue[env.owner][1], env)):
                self.counters.duplicates += 1  # already on its way in
                return
        held = self.store.seed_info(env.owner)
        if held is not None and held.sha256 == env.sha256 and held.version == env.version:
            self.counters.duplicates += 1  # a redelivery (reconnect, retained): nothing changes
            return
        self.store.check_seed(env.owner, env.version, env.epoch)
        self._refuse_retired(env)
        expected_ref = self.fleet.data.reference_sha256
        if expected_ref and env.reference_sha256 != expected_ref:
            raise _Refused(
                f"seed of {env.owner!r} was distilled on reference set {env.reference_sha256[:12]}..., "
                f"not the fleet's {expected_ref[:12]}...", "wrong-reference",
            )
        # The costly part (parse, checker, compute budget, probe, session) runs on the seed worker:
        # an unlearn order that arrives meanwhile is handled at once, never behind seed probes.
        with self._seed_wakeup:
            replaced = self._seed_queue.pop(env.owner, None)
            if replaced is not None:
                self.counters.seeds_superseded += 1
            self._seed_queue[env.owner] = (topic, env, signed)
            self._seed_wakeup.notify()

    def _seed_loop(self) -> None:
        """The seed worker: one queued seed at a time, checked and probed outside the agent's lock."""
        while True:
            with self._seed_wakeup:
                while not self._seed_queue and not self._stop.is_set():
                    self._seed_wakeup.wait()
                if self._stop.is_set():
                    return
                owner = next(iter(self._seed_queue))
                topic, env, signed = self._seed_queue.pop(owner)
                self._seed_busy = (env.owner, env.sha256, env.version)
            try:
                self._install_seed(topic, env, signed)
            except HdusError as exc:
                self._reject(topic, exc)
            except Exception:  # a bug must not stop the worker; it is logged with its traceback
                logger.exception("agent %s: unexpected error installing the seed of %s", self.device_id, owner)
            finally:
                with self._seed_wakeup:
                    self._seed_busy = None

    def _install_seed(self, topic: str, env: SeedEnvelope, signed: codec.SignedMessage) -> None:
        if self.settings.probe_in_subprocess:  # the checks, the compute budget, then a probe run, in a limited child
            probe_in_subprocess(env.onnx, self.contract, timeout_s=self.settings.probe_timeout_s,
                                policy=self._policy, run_budget_ms=self.settings.probe_run_ms,
                                budget_reference=self._budget_reference, budget_multiple=self.settings.seed_compute_multiple)
        else:
            from hdus_edge.onnx.checks import check_onnx  # loads onnx into this process

            check_onnx(env.onnx, self.contract, self._budgeted_policy())
        with self._lock:
            if self._stop.is_set():
                return
            # Checked again under the lock: an order or a neighbour change may have come meanwhile.
            if env.owner not in self._neighbors:
                raise _Refused(f"seed of {env.owner!r} refused: not a neighbour of {self.device_id!r}", "not-neighbour")
            held = self.store.seed_info(env.owner)
            if held is not None and held.sha256 == env.sha256 and held.version == env.version:
                self.counters.duplicates += 1
                return
            self.store.check_seed(env.owner, env.version, env.epoch)
            self._refuse_retired(env)  # a retirement may have come while it was checked
            self._gate(topic, signed, env, held)
            # Ensemble first (it builds, probes, then swaps): if it fails, the store never saw the seed.
            self.runtime.add_seed(env.owner, env.onnx, version=env.version)
            try:
                self.store.put_envelope(env)
            except BaseException:
                self.runtime.remove(env.owner)
                raise
            self.counters.accepted += 1
            logger.info("agent %s: installed seed of %s v%d", self.device_id, env.owner, env.version)
            if held is not None and held.version < env.version:
                self._replaced[env.owner] = held.sha256
            self._send_swap_receipt(env.owner)
            self._write_status()

    def pending_seeds(self) -> int:
        """Seeds queued for, or being checked by, the seed worker."""
        with self._seed_wakeup:
            return len(self._seed_queue) + (self._seed_busy is not None)

    def _on_membership(self, topic: str, signed: codec.SignedMessage) -> None:
        msg = codec.verify(signed, self.trust)
        assert isinstance(msg, NeighborList)
        self.topics.check_matches(topic, msg)
        last = self._membership_versions.get(msg.device_id, -1)
        if msg.version <= last:
            self.counters.duplicates += 1
            return
        self._membership_versions[msg.device_id] = msg.version
        self._wanted_by[msg.device_id] = frozenset(msg.neighbors)
        if msg.device_id == self.device_id:
            return
        if self._forgotten and self.device_id in msg.neighbors:
            # A list that still names a forgotten device: whatever copy of its seed an earlier run left
            # for that device goes (an order that came while this agent was down).
            self.transport.publish(self.topics.seed(msg.device_id, self.device_id), b"", retain=True, wait=False)
            return
        if self.device_id in msg.neighbors:
            self._publish_seed_to(msg.device_id)
        elif msg.device_id in self._published:
            # It no longer wants our seed: take our retained copy for it off the broker.
            self.transport.publish(self.topics.seed(msg.device_id, self.device_id), b"", retain=True, wait=False)
            self._published.pop(msg.device_id, None)

    def _on_unlearn(self, topic: str, signed: codec.SignedMessage, raw: bytes) -> None:
        order = codec.verify(signed, self.trust)
        assert isinstance(order, UnlearnOrder)
        self.topics.check_matches(topic, order)
        self._apply_order(order, raw)

    def _on_digest(self, topic: str, signed: codec.SignedMessage) -> None:
        digest = codec.verify(signed, self.trust)
        assert isinstance(digest, TombstoneDigest)
        self.topics.check_matches(topic, digest)
        if digest.device_id == self.device_id:
            return
        self.counters.digests += 1
        # Every device re-publishes its digest after orders and periodically, so nearly every entry
        # is an order this device already applied. Checking those signatures again learns nothing and
        # costs N devices x N digests x (orders held) verifications per round: skip them first.
        if self._digest_due_at is not None and set(tuple(self.store.orders().values())[-DIGEST_ORDERS:]) <= set(digest.orders):
            self._digest_due_at = None  # its digest carries every order ours would: ours adds nothing
            self.counters.digests_suppressed += 1
        fresh = tuple(raw for raw in digest.orders if not self._already_applied(raw))
        if not fresh:
            return
        self.counters.digest_orders_verified += len(fresh)
        accepted, _ = codec.open_digest(TombstoneDigest(digest.device_id, fresh), self.trust)
        for order_signed in accepted:
            order = order_signed.msg
            assert isinstance(order, UnlearnOrder)
            if not self.store.is_request_seen(order.request_id):
                logger.info("agent %s: order %s learned from %s's digest", self.device_id, order.request_id, digest.device_id)
                self._apply_order(order, order_signed.raw)

    def _on_revocations(self, topic: str, signed: codec.SignedMessage) -> None:
        """The admin's signed list: apply the orders in it this device missed, then refuse the revoked
        certificates. The admin's signature over the list vouches for its orders, so they are applied
        even when this device never saw the revoked device's certificate (e.g. after a restart)."""
        rl = codec.verify(signed, self.trust)
        assert isinstance(rl, RevocationList)
        self.topics.check_matches(topic, rl)
        if rl.version <= self._revocation_version:
            self.counters.duplicates += 1
            return
        for raw in rl.orders:
            try:
                order = codec.decode(raw, max_bytes=self.settings.max_seed_bytes + 64 * 1024).msg
            except HdusError as exc:  # one bad entry must not hold back the revocations
                logger.warning("agent %s: revocation list entry refused: %s", self.device_id, exc.message)
                continue
            revoked = rl.revoked_epoch(order.target) if isinstance(order, UnlearnOrder) else None
            if revoked is not None and order.epoch <= revoked and not self.store.is_request_seen(order.request_id):
                logger.info("agent %s: order %s learned from the revocation list", self.device_id, order.request_id)
                self._apply_order(order, raw)
        for device, epoch in rl.revoked:
            self.trust.revoke(device, epoch)
            self._parked.discard(device)
            held = self.store.seed_info(device)
            if held is not None and held.epoch <= epoch:  # no order of it reached us: the list alone decides
                self.runtime.remove(device)
                self.store.delete_seed(device, reason="certificate revoked by the admin")
        self._revocation_version = rl.version
        self._write_status()

    def _already_applied(self, raw: bytes) -> bool:
        """True when ``raw`` (an encoded order from a digest) names a request this device has seen.

        Only the request id is read, unverified: a forged entry that names a seen request would be
        ignored after verification anyway.
        """
        if raw in self._applied_order_bytes:
            return True
        try:
            order = codec.decode(raw, max_bytes=self.settings.max_seed_bytes + 64 * 1024).msg
        except HdusError:
            return False  # open_digest rejects it, with the reason logged
        if isinstance(order, UnlearnOrder) and self.store.is_request_seen(order.request_id):
            self._applied_order_bytes.add(raw)
            return True
        return False

    # --- forgetting ----------------------------------------------------------------------------

    def _apply_order(self, order: UnlearnOrder, raw: bytes) -> None:
        if self.store.is_request_seen(order.request_id):
            self.counters.duplicates += 1
            # Idempotent: a no-op when the order is kept already (the store step keeps it since the
            # order went into the index; a store from an earlier version may lack the copy).
            self.store.save_order(order.request_id, raw)
            return
        if order.target == self.device_id:
            self.store.save_order(order.request_id, raw)
            self._forget_self(order)
            return
        target = order.target
        began, syncs = time.perf_counter(), thread_sync_count()
        if not self._holds(target):
            # Tombstone, request id and the order (for our digest: every device reads every digest, so
            # a holder that missed the order can learn it from us) in one commit: the seed stays
            # refused here for good. Nothing else: no seed, no receipt (the requester does not wait
            # for us), nothing of ours on the broker for the target, no ensemble rebuild.
            self.store.apply_unlearn(target, order.epoch, order.request_id, order=raw)
            self.counters.unlearned += 1
            self._record_apply(order, NON_HOLDER, began, began, began, syncs)
            return

        def receipt_for(removed: str | None) -> bytes:
            members_after = tuple(m for m in self.runtime.members() if m != target)
            receipt = Receipt(order.request_id, target, self.device_id, removed, members_after, time.time())
            return codec.encode(receipt, self._key, self.device_id)

        # One store step commits tombstone + request id + deletion + the receipt to send + the order
        # (for the digest): the apply's only fsyncs.
        removed = self.store.apply_unlearn(target, order.epoch, order.request_id, receipt=receipt_for, order=raw)
        stored = time.perf_counter()
        self.runtime.remove(target)
        rebuilt = time.perf_counter()
        self.counters.unlearned += 1
        # The receipt first: it is what the requester waits for. Then our inbox copy of the forgotten
        # seed, and our seed for the forgotten device, leave the broker.
        clears = [self.topics.seed(self.device_id, target)]
        if target in self._published:
            clears.append(self.topics.seed(target, self.device_id))
            self._published.pop(target, None)
        for pending in self.store.pending_receipts():
            if pending.request_id == order.request_id:
                self._send_receipt(pending.request_id, pending.data, clears)
        self._record_apply(order, HOLDER, began, stored, rebuilt, syncs, removed=removed)

    def _holds(self, target: str) -> bool:
        """Whether this device must answer an order about ``target`` with a receipt: it lists it (the
        requester's holders are the devices whose lists name the target), holds a seed of it, or
        published its own seed to it (a copy on the broker to clear)."""
        return target in self._neighbors or self.store.seed_info(target) is not None or target in self._published

    def _record_apply(self, order: UnlearnOrder, role: str, began: float, stored: float, rebuilt: float,
                      syncs: int, removed: str | None = None) -> None:
        done = time.perf_counter()
        if role == NON_HOLDER:
            stored = rebuilt = done  # the store step is all it does
        timing = ApplyTiming(order.request_id, order.target, role, 1e3 * (stored - began), 1e3 * (rebuilt - stored),
                             1e3 * (done - rebuilt), 1e3 * (done - began), thread_sync_count() - syncs)
        self.apply_times.record(timing)
        logger.info("agent %s: forgot %s as %s (held %s): store %.1f ms, ensemble %.1f ms, receipt %.1f ms, %d fsyncs",
                    self.device_id, order.target, role, removed[:12] if removed else "none", timing.store_ms,
                    timing.ensemble_ms, timing.receipt_ms, timing.fsyncs)
        # Not at once: k orders in a burst would make every device publish k digests, each delivered
        # to every device. One digest covers them all, unless another device's covers them first.
        if self._digest_due_at is None:
            self._digest_due_at = time.monotonic() + self._digest_jitter.uniform(0.0, DIGEST_SPREAD_S)
        self._write_status()

    def _forget_self(self, order: UnlearnOrder) -> None:
        # An order for an earlier incarnation does not touch a re-admitted device.
        if order.epoch < self._cert.epoch:
            self.store.mark_request_seen(order.request_id)
            return
        self._forgotten = True
        # Durable: a restarted agent reads it and refuses to start (and so to publish anything).
        self.store.mark_forgotten(self.device_id, order.epoch, order.request_id)
        with self._seed_wakeup:
            self._seed_queue.clear()
        # Every retained copy of our seed: those this run published, and those an earlier run may
        # have left for any device that lists us (an order that came while our agent was down).
        # (Lists that arrive later are answered in _on_membership.)
        wanting = {i for i, wanted in self._wanted_by.items() if self.device_id in wanted} | set(self._neighbors)
        for to in sorted(set(self._published) | wanting - {self.device_id}):
            self.transport.publish(self.topics.seed(to, self.device_id), b"", retain=True, wait=False)
        self._published.clear()
        # A forgotten device wants no seeds: its neighbour list leaves the broker too.
        self.transport.publish(self.topics.membership(self.device_id), b"", retain=True, wait=False)
        logger.info("agent %s: this device was forgotten (request %s)", self.device_id, order.request_id)
        self._write_status()

    def _send_receipt(self, request_id: str, data: bytes, clears: list[str]) -> None:
        """Publish the receipt (retained, so a requester that looks later still finds the evidence) and
        clear the ``clears`` topics; the store drops the pending receipt once the broker acknowledged all.

        The outbox copies are in memory only (no fsync): the store's pending receipt is the durable
        record, and ``start`` sends it (and clears again) after a crash. A receipt sent twice is fine.
        """
        left = [1 + len(clears)]
        lock = threading.Lock()

        def acked() -> None:  # on the transport's ack thread: short, never raises into it
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            if self.store.mark_receipt_sent(request_id, durable=False):
                self.store.audit("receipt", request_id=request_id, sync=False)

        self.transport.publish(self.topics.receipt(request_id, self.device_id), data, retain=True, wait=False,
                               durable=False, on_ack=acked)
        for topic in clears:
            self.transport.publish(topic, b"", retain=True, wait=False, durable=False, on_ack=acked)
        self.counters.receipts_sent += 1

    def _resend_receipt(self, request_id: str, data: bytes) -> None:
        """A receipt still pending at start (a crash before its PUBACK): send it, and clear both copies
        of seeds between us and its target again (which were published then is not known now), but not
        our seed for a target re-admitted since (its new epoch is not tombstoned)."""
        try:
            receipt = codec.decode(data).msg  # our own, signed by us: read, not verified
            target = receipt.target if isinstance(receipt, Receipt) else None
        except HdusError:
            target = None
        clears = [] if target is None else [self.topics.seed(self.device_id, target)]
        if target is not None and self.store.is_tombstoned(target, self.trust.epoch_of(target) if target in self.trust else 0):
            clears.append(self.topics.seed(target, self.device_id))
        self._send_receipt(request_id, data, clears)

    # --- publishing ----------------------------------------------------------------------------

    @property
    def forgotten(self) -> bool:
        """True once an order forgot this device: it publishes nothing more (the daemon exits)."""
        return self._forgotten

    def _announce(self) -> None:
        if self._forgotten:
            return
        hello = Hello(self.device_id, self._key.public_key.raw, self._cert, self._profile,
                      self._models.main_arch, self._models.seed_arch)
        self.transport.publish(self.topics.hello(self.device_id), codec.encode(hello, self._key, self.device_id), retain=True)
        self._publish_membership()
        self._publish_digest()

    def _publish_membership(self) -> None:
        if self._forgotten:
            return
        # Versions must only go up, across restarts too: wall-clock milliseconds do that.
        version = max(int(time.time() * 1000), self._membership_versions.get(self.device_id, 0) + 1)
        msg = NeighborList(self.device_id, self._neighbors, version)
        self.transport.publish(self.topics.membership(self.device_id), codec.encode(msg, self._key, self.device_id), retain=True)

    def _publish_seed_to(self, to: str) -> None:
        m = self._models
        if m.seed_onnx is None or m.seed_version < 1 or self._forgotten:
            return
        if self.store.is_tombstoned(to, self.trust.epoch_of(to) if to in self.trust else 0):
            return
        if self._published.get(to) == m.seed_version:
            return
        env = SeedEnvelope.build(
            owner=self.device_id, to=to, version=m.seed_version, onnx=m.seed_onnx, arch=m.seed_arch,
            input_shape=(-1, *self.fleet.data.input_shape), num_classes=self.fleet.data.num_classes,
            reference_sha256=m.reference_sha256, epoch=self._cert.epoch,
        )
        self.transport.publish(self.topics.seed(to, self.device_id), codec.encode(env, self._key, self.device_id), retain=True, wait=False)
        self._published[to] = m.seed_version
        logger.info("agent %s: published seed v%d to %s", self.device_id, m.seed_version, to)

    def publish_seed(self, seed_onnx: bytes, version: int) -> None:
        """Replace this device's own seed (after a new distillation) and send it to all who want it."""
        with self._lock:
            if version <= self._models.seed_version:
                raise ValueError(f"seed version must go up: {version} <= {self._models.seed_version}")
            self._models = OwnModels(self._models.main_onnx, seed_onnx, version, self._models.main_arch,
                                     self._models.seed_arch, self._models.reference_sha256)
            for to, wanted in sorted(self._wanted_by.items()):
                if self.device_id in wanted:
                    self._publish_seed_to(to)

    def _publish_digest(self) -> None:
        if self._forgotten:
            return
        orders = tuple(self.store.orders().values())
        digest = TombstoneDigest(self.device_id, orders[-DIGEST_ORDERS:])
        # In memory only: the digest is rebuilt from the store and published again at every start and
        # every digest interval, so a lost one costs nothing.
        self.transport.publish(self.topics.tombstones(self.device_id), codec.encode(digest, self._key, self.device_id),
                               retain=True, wait=False, durable=False)

    def _digest_loop(self) -> None:
        """Housekeeping: follow the state dir every second; gossip the tombstone digest periodically."""
        self._changed(self._watch.device_file) if self._watch else None
        self._changed(self._watch.seed_info_file) if self._watch else None
        next_digest = time.monotonic() + self.settings.digest_interval_s
        while not self._stop.wait(min(_WATCH_INTERVAL_S, self.settings.digest_interval_s)):
            try:
                self._follow_state_dir()
                self._reannounce_after_reconnect()
                now = time.monotonic()
                if now >= next_digest or (self._digest_due_at is not None and now >= self._digest_due_at):
                    next_digest = now + self.settings.digest_interval_s
                    with self._lock:
                        if self._stop.is_set():
                            break
                        self._digest_due_at = None
                        self._publish_digest()
                        self.store.flush_audit_summary()
                        self._write_status()
            except Exception:  # housekeeping must go on; the next tick retries
                logger.exception("agent %s: housekeeping failed", self.device_id)

    def _reannounce_after_reconnect(self) -> None:
        # A broker that restarted without persistence lost every retained hello, list and seed:
        # announce again, and let the neighbours' lists (they re-announce too) pull our seed again.
        count = self.transport.connect_count
        if count <= self._connects_seen:
            return
        first = self._connects_seen == 0
        self._connects_seen = count
        if first:
            return
        with self._lock:
            logger.info("agent %s: reconnected (%d); announcing again", self.device_id, count)
            self._published.clear()
            self._announce()

    def _changed(self, path: Path) -> bool:
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        before = self._watched.get(path)
        self._watched[path] = stamp
        return before is not None and stamp != before

    def _follow_state_dir(self) -> None:
        if self._watch is None:
            return
        if self._changed(self._watch.device_file):
            neighbors = self._watch.device().neighbors
            if tuple(sorted(neighbors)) != self._neighbors:
                logger.info("agent %s: neighbours changed on disk: %s", self.device_id, ", ".join(neighbors))
                self.set_neighbors(neighbors)
        if self._changed(self._watch.seed_info_file):
            version = self._watch.seed_version()
            if version > self._models.seed_version:
                logger.info("agent %s: new seed v%d exported; publishing it", self.device_id, version)
                self._adopt_export(version)

    # --- new seed versions: retirements (forget-samples), swaps, the gate ----------------------------

    def _adopt_export(self, version: int) -> None:
        """Follow a new ``export``: the new main model, then the retirement (if the new version
        retires old ones, ``models/retire.json``), then the new seed to everyone who wants it."""
        assert self._watch is not None
        main = self._watch.model_bytes("main.onnx")
        with self._lock:
            seed = self._watch.model_bytes("seed.onnx")
            # Retirement first: a holder then deletes the old bytes at once and admits the new version
            # without gating it (forgetting is not optional). The neighbours need only the seed, so
            # they go before the (slower) rebuild of this device's own ensemble.
            self._publish_retire(version, seed)
            self.publish_seed(seed, version)
            if main != self._models.main_onnx:
                self._replace_main(main)
            self._models = OwnModels(main, self._models.seed_onnx, self._models.seed_version, self._models.main_arch,
                                     self._models.seed_arch, self._models.reference_sha256)

    def _build_runtime(self, main_onnx: bytes) -> EnsembleRuntime:
        """An ensemble of ``main_onnx`` and the seeds in the store."""
        s = self.settings
        return EnsembleRuntime(
            main_onnx, s.lam, s.space, s.strategy,  # type: ignore[arg-type]
            providers=s.providers, intra_op_threads=s.intra_op_threads,
            background_fuse=True,  # membership changes take effect in ms; the fused graph follows
            fuse_in_subprocess=s.probe_in_subprocess,
            expected=self.contract,  # our own main model, checked against the fleet's contract
            seeds=self._seeds_from_store(),
            versions={seed.owner: seed.version for seed in self.store.list_seeds()},
        )

    def _replace_main(self, main_onnx: bytes) -> None:
        # The runtime holds its main model for life: build a new one with the same seeds, then swap.
        runtime = self._build_runtime(main_onnx)
        old, self.runtime = self.runtime, runtime
        old.close()
        self.store.audit("main_replaced", sha256=sha256_hex(main_onnx))
        logger.info("agent %s: main model replaced (%d seeds kept)", self.device_id, len(runtime.members()))

    def _publish_retire(self, version: int | None = None, seed: bytes | None = None) -> None:
        """Publish (retained) the retirement ``models/retire.json`` names, when it names ``version``
        (default: the exported one). Idempotent: holders ignore a retirement they applied."""
        if self._watch is None or self._forgotten:
            return
        version = self._models.seed_version if version is None else version
        seed = self._models.seed_onnx if seed is None else seed
        msg = retirement_to_publish(self._watch.retire_file, self.device_id, version, seed, self._cert.epoch)
        if msg is None:
            return
        self.transport.publish(self.topics.retire(self.device_id), codec.encode(msg, self._key, self.device_id),
                               retain=True, wait=False)
        logger.info("agent %s: retired seed versions below v%d (request %s)", self.device_id, version, msg.request_id)

    def _on_retire(self, topic: str, signed: codec.SignedMessage) -> None:
        msg = codec.verify(signed, self.trust)
        assert isinstance(msg, SeedRetire)
        self.topics.check_matches(topic, msg)
        owner = msg.owner
        if owner == self.device_id:
            return
        # Recorded even from a non-neighbour: should it become one, its old versions stay refused.
        newly = self.retired.record(Retirement.of(msg))
        held = self.store.seed_info(owner)
        removed = None
        if held is not None and held.epoch <= msg.epoch and held.version < msg.version:
            self.runtime.remove(owner)
            removed = self.store.delete_seed(owner, reason="retired")
        if newly or removed:
            self.store.audit("retire", owner=owner, request_id=msg.request_id, below_version=msg.version,
                             removed_sha256=removed)
        if removed is None and self._replaced.get(owner) in msg.retired_sha256:
            removed = self._replaced[owner]  # the new version arrived first and replaced it already
        if owner not in self._neighbors:
            return
        if owner not in self._swaps or newly:
            self._swaps[owner] = (msg, removed)
        gated = self._gated.pop(owner, None)
        if gated is not None:
            self._on_seed(*gated)  # the version the gate held back is the one this retirement names
        self._send_swap_receipt(owner)
        self._write_status()

    def _send_swap_receipt(self, owner: str) -> None:
        """Answer a pending retirement of ``owner`` once this device holds the new version."""
        pending = self._swaps.get(owner)
        if pending is None:
            return
        msg, removed = pending
        held = self.store.seed_info(owner)
        if held is None or held.version < msg.version:
            return  # the new version has not arrived yet: answered when it is installed
        del self._swaps[owner]
        receipt = SwapReceipt(msg.request_id, owner, self.device_id, held.version, held.sha256, removed, time.time())
        self.transport.publish(self.topics.receipt(msg.request_id, self.device_id),
                               codec.encode(receipt, self._key, self.device_id), retain=True, wait=False)
        self.store.audit("swap_receipt", request_id=msg.request_id, owner=owner, version=held.version)
        self.counters.receipts_sent += 1

    def _refuse_retired(self, env: SeedEnvelope) -> None:
        retired = self.retired.refuses(env.owner, env.epoch, env.version)
        if retired is not None:
            raise _Refused(f"seed of {env.owner!r} v{env.version} was retired (versions below {retired.below_version}, "
                           f"request {retired.request_id})", "retired")

    def _gate(self, topic: str, signed: codec.SignedMessage, env: SeedEnvelope, held: StoredSeed | None) -> None:
        """Refuse a new version of a held seed that fails the profile's gate (the old one stays)."""
        s = self.settings
        if held is None or (s.gate_min_agreement <= 0 and s.gate_min_accuracy <= 0):
            return
        retirement = self.retired.get(env.owner)
        if retirement is not None and retirement.below_version == env.version and retirement.sha256 == env.sha256:
            return  # it replaces versions that must go: never gated
        data = self._gate_reference()
        if data is None:
            logger.warning("agent %s: no reference set to gate %s v%d on; admitted", self.device_id, env.owner, env.version)
            return
        verdict = check_update(self.store.get_seed(env.owner), env.onnx, data[0], data[1],
                               min_agreement=s.gate_min_agreement, min_accuracy=s.gate_min_accuracy,
                               providers=s.providers)
        if not verdict.passed:
            self._gated[env.owner] = (topic, signed)
            raise _Refused(f"seed of {env.owner!r} v{env.version} refused by the update gate: {verdict.reason}; "
                           f"v{held.version} kept", "gate")

    def _gate_reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._gate_data is None and self._watch is not None and self._watch.reference_file.exists():
            with np.load(self._watch.reference_file, allow_pickle=False) as npz:
                self._gate_data = (np.asarray(npz["x"], dtype=np.float32), np.asarray(npz["y"], dtype=np.int64))
        return self._gate_data

    def _drop_retired_seeds(self) -> None:
        # A crash between recording a retirement and deleting the seed is completed here.
        for info in self.store.list_seeds():
            if self.retired.refuses(info.owner, info.epoch, info.version) is not None:
                self.store.delete_seed(info.owner, reason="retired")

    # --- bookkeeping ---------------------------------------------------------------------------

    def _seeds_from_store(self) -> dict[str, bytes]:
        self._drop_retired_seeds()
        seeds: dict[str, bytes] = {}
        for info in self.store.list_seeds():
            if info.owner not in self._neighbors:
                # The neighbour was removed while we were down: its seed goes too.
                self.store.delete_seed(info.owner, reason="neighbour removed")
                continue
            data = self.store.get_seed(info.owner)
            if data is not None:
                seeds[info.owner] = data
        return seeds

    def _park(self, topic: str, payload: bytes, exc: HdusError) -> None:
        try:
            sender = codec.decode(payload, max_bytes=self.settings.max_seed_bytes + 64 * 1024).sender
        except HdusError:
            self._reject(topic, exc)
            return
        if sender == ADMIN_ID:
            self._reject(topic, exc)
            return
        with self._lock:  # the lot is shared with _on_hello (same worker thread; the lock is cheap)
            dropped = self._parked.park(sender, topic, payload)
        self.counters.parked += 1
        if dropped:
            self.counters.parked_dropped += dropped
            self.store.audit("park_drop", limited=True, topic=topic[-200:], sender=sender, dropped=dropped,
                             dropped_total=self._parked.counts.dropped)
        logger.debug("agent %s: %s from not-yet-certified %s parked until its hello", self.device_id, topic, sender)

    def _reject(self, topic: str, exc: HdusError) -> None:
        reason = getattr(exc, "reason", type(exc).__name__)
        self.counters.rejected += 1
        self.counters.reasons[reason] += 1
        try:
            # Rate-limited: a flood of garbage leaves a summary line, not one line per message.
            audited = self.store.audit("reject", limited=True, topic=topic[-200:], reason=reason, error=exc.message[:500])
        except HdusError:
            logger.exception("agent %s: cannot audit a rejection", self.device_id)
            audited = True
        if audited:
            logger.warning("agent %s: rejected %s: %s", self.device_id, topic, exc.message)
        else:
            logger.debug("agent %s: rejected %s: %s", self.device_id, topic, exc.message)
        if isinstance(exc, TombstonedError):
            return

    def _write_status(self) -> None:
        if self._status_file is None:
            return
        try:
            # Rewritten on every change and at start: not worth two fsyncs on an order's path.
            write_json(self._status_file, self.status(), durable=False)
        except OSError as exc:
            logger.warning("agent %s: cannot write status: %s", self.device_id, exc)

    def wait_for(self, predicate: Any, timeout: float, interval: float = 0.02) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout`` seconds pass (for callers and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(interval)
        return bool(predicate(self))


def settings_for(state: StateDir) -> AgentSettings:
    """Agent settings from a device's fleet config and profile."""
    fleet = state.fleet()
    profile = state.profile()
    return AgentSettings(
        lam=fleet.ensemble.lam, space=fleet.ensemble.space, strategy=profile.runtime.strategy,
        providers=profile.runtime.providers, intra_op_threads=profile.runtime.intra_op_threads,
        max_seed_bytes=profile.limits.max_seed_bytes,
        seed_compute_multiple=profile.limits.seed_compute_multiple,
        probe_timeout_s=profile.limits.probe_timeout_s, probe_run_ms=profile.limits.probe_run_ms,
        parking=ParkingLimits(per_sender=profile.limits.parked_per_sender, per_topic=profile.limits.parked_per_topic,
                              total=profile.limits.parked_total, total_bytes=profile.limits.parked_total_bytes),
        audit_limit=AuditLimit(rate_per_s=profile.limits.audit_rate_per_s, burst=profile.limits.audit_burst),
        gate_min_agreement=profile.update.min_agreement, gate_min_accuracy=profile.update.min_reference_accuracy,
    )


class _Refused(ProtocolError):
    """A verified message that this device's policy refuses (audited with ``reason``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _own_provenance(data: bytes, name: str) -> Provenance | None:
    """The provenance in one of the device's own exported models, read by onnxruntime."""
    try:
        session = make_session(data, intra_op_threads=1)
        return provenance_of_props(session.get_modelmeta().custom_metadata_map)
    except (HdusError, ValueError) as exc:
        message = exc.message if isinstance(exc, HdusError) else str(exc)
        raise StateDirError(f"models/{name} cannot be read: {message}", hint="run 'hdus-edge export' again") from None


def _same_seed(a: SeedEnvelope, b: SeedEnvelope) -> bool:
    return a.owner == b.owner and a.sha256 == b.sha256 and a.version == b.version


def require_exported(state: StateDir) -> None:
    """Raise ``StateDirError`` unless the device has exported its models."""
    for name in ("main.onnx", "seed.onnx"):
        if not (state.models / name).exists():
            raise StateDirError(f"{state.models / name} is missing", hint="run 'hdus-edge export' for this device first")
