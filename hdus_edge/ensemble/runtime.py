"""The ensemble at inference time: main model + neighbours' seeds, run by onnxruntime.

onnxruntime + numpy (+ onnx to fuse in-process); this module never imports torch (a subprocess test
checks it). With ``fuse_in_subprocess`` (the agent) it never imports onnx either: the contract comes
from the main model's onnxruntime session and the fused graph is built by a child process
(``hdus_edge.ensemble.fuse_child``).
Two strategies give the same output (to 1e-6): ``"sessions"`` runs one session per member and
combines with ``hdus_edge.ensemble.combine.combine``; ``"fused"`` runs one graph that holds every
member and the combination rule (``hdus_edge.ensemble.fuse``). Every change of the member set builds a
new immutable snapshot, probes it, then swaps it in under a lock: a concurrent ``predict`` uses
either the old or the new snapshot, never a half-built one, and a failed build changes nothing.
After ``remove(j)`` nothing the runtime holds (member bytes, sessions, fused graph) contains s_j.
``predict_labelled`` returns the output together with the snapshot's member set, seed versions and
generation, read from the same snapshot, so a caller can say exactly which ensemble answered.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnxruntime as ort

from hdus_edge.ensemble.combine import COMBINE_SPACES, CombineSpace, check_lam, combine
from hdus_edge.errors import DataShapeError, EnsembleError, HdusError, ProbeRunError
from hdus_edge.onnx.contract import ModelContract
from hdus_edge.onnx.probe import check_probe_output, probe_inputs
from hdus_edge.onnx.session import make_session

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

Strategy = Literal["fused", "sessions"]
STRATEGIES: tuple[str, ...] = ("fused", "sessions")
# Main models can be larger than a seed; the runtime trusts its own main model's size.
_MAIN_MAX_BYTES = 512 * 1024 * 1024
_FUSE_DEBOUNCE_S = 0.3  # long enough for a burst of seeds or an unlearn's receipt to go first


@dataclass(frozen=True)
class MemberOutputs:
    """Each member's logits for one batch: the main model's and each seed's by device id."""

    main: np.ndarray
    seeds: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Labelled:
    """An ensemble output and the one snapshot that produced it."""

    output: np.ndarray
    members: tuple[str, ...]  # sorted seed owners (the main model is always a member)
    versions: Mapping[str, int]  # owner -> seed version (0 when the caller gave none)
    sha256: Mapping[str, str]  # owner -> sha256 of the seed's bytes
    generation: int  # goes up with every swap (membership change or background fuse)
    fused: bool  # run as one fused graph (else per-member sessions; same output to 1e-6)


@dataclass(frozen=True)
class _Snapshot:
    """One immutable build of the ensemble; ``predict`` reads exactly one of these."""

    seeds: tuple[str, ...]  # sorted device ids
    seed_bytes: Mapping[str, bytes]
    # One session per seed: built up front by "sessions"; by "fused" only when predict_members asks.
    sessions: dict[str, ort.InferenceSession]
    fused: ort.InferenceSession | None
    fused_bytes: bytes | None
    versions: Mapping[str, int] = field(default_factory=dict)
    sha256: Mapping[str, str] = field(default_factory=dict)
    generation: int = 0
    built_at: float = 0.0  # time.time() of the build
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)


class EnsembleRuntime:
    """Main model + seeds, rebuilt atomically whenever the member set changes.

    ``lam`` and ``space`` follow ``combine``: ``(1 - lam) * main + lam * mean(seeds)`` over logits
    or probabilities (lam is 0 while there are no seeds). ``providers`` are filtered by what this
    onnxruntime has (CPU always last); ``intra_op_threads`` None lets onnxruntime choose.
    ``pack`` (fused strategy) runs same-architecture seeds as one packed chain of grouped
    convolutions (fewer, wider kernels: faster at batch 1), with the same results to float rounding.
    ``expected`` is the fleet's contract the main model must meet (``EnsembleError`` before any seed
    runs otherwise); ``versions`` labels the initial seeds for ``predict_labelled``;
    ``fuse_in_subprocess`` builds fused graphs in a child process (no onnx in this one).
    """

    def __init__(
        self,
        main_onnx: bytes,
        lam: float,
        space: CombineSpace = "probs",
        strategy: Strategy = "fused",
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        *,
        pack: bool = True,
        background_fuse: bool = False,
        fuse_in_subprocess: bool = False,
        expected: ModelContract | None = None,
        seeds: Mapping[str, bytes] | None = None,
        versions: Mapping[str, int] | None = None,
    ) -> None:
        if space not in COMBINE_SPACES:
            raise EnsembleError(f"unknown combine space {space!r}", hint=f"use one of {COMBINE_SPACES}")
        if strategy not in STRATEGIES:
            raise EnsembleError(f"unknown ensemble strategy {strategy!r}", hint=f"use one of {STRATEGIES}")
        self.lam = check_lam(lam)
        self.space: CombineSpace = space
        self.strategy: Strategy = strategy
        self.providers = list(providers) if providers is not None else None
        self.intra_op_threads = intra_op_threads
        self.pack = pack
        self._main_bytes = bytes(main_onnx)
        self.fuse_in_subprocess = fuse_in_subprocess
        # The fused graph carries the main model itself; "sessions" and a background fuse (whose
        # first snapshot runs per-member sessions) need it on its own up front, and then read the
        # contract from it without onnx; an in-process fuse parses the model anyway ("fused"
        # creates the session when predict_members first asks).
        self._main_session: ort.InferenceSession | None = None
        if strategy == "sessions" or (background_fuse and strategy == "fused"):
            self._main_session = make_session(self._main_bytes, providers=providers, intra_op_threads=intra_op_threads)
            self.contract = _contract_of_session(self._main_session)
        else:
            from hdus_edge.onnx.checks import parse_onnx

            self.contract = _contract_of(parse_onnx(self._main_bytes, max_bytes=_MAIN_MAX_BYTES))
        if expected is not None and self.contract != expected:  # before any seed is run against it
            raise EnsembleError(
                f"the main model takes {list(self.contract.input_shape)} -> {self.contract.num_classes} classes; "
                f"the fleet's contract is {list(expected.input_shape)} -> {expected.num_classes}",
                hint="export the main model for this fleet's input shape and classes")
        self._build_lock = threading.Lock()  # one rebuild at a time; predict never takes it
        self._swap_lock = threading.Lock()
        self._swapped = threading.Condition(self._swap_lock)  # notified on every swap: waiters need no polling
        # background_fuse: a membership change swaps in per-member sessions at once (milliseconds,
        # same outputs to 1e-6) and the fused graph follows on a background thread, debounced, so a
        # burst of changes costs one fuse and an unlearn is never waiting on graph building.
        self.background_fuse = background_fuse and strategy == "fused"
        self._fuse_wanted = threading.Event()
        self._fuse_thread: threading.Thread | None = None
        self._closed = False
        self._generations = itertools.count(1)
        # Start with the given seeds in one build (not main-only, then a rebuild): faster start-up.
        initial = {d: bytes(b) for d, b in (seeds or {}).items()}
        self._snapshot = self._build(initial, previous=None, fuse=not self.background_fuse,
                                     versions={d: int((versions or {}).get(d, 0)) for d in initial})
        if initial:
            self._request_fuse()

    # --- membership ----------------------------------------------------------------------

    def members(self) -> tuple[str, ...]:
        """Device ids of the seeds in the ensemble, sorted (the main model is always a member)."""
        return self._snapshot.seeds

    def add_seed(self, device_id: str, onnx_bytes: bytes, *, validate: bool = False, version: int = 0) -> None:
        """Add (or replace) ``device_id``'s seed (its ``version`` labels answers) and rebuild.

        The caller is expected to have validated the bytes (``hdus_edge.onnx.checks``);
        ``validate=True`` runs ``check_onnx`` against the main model's contract first. On any
        error (``OnnxRejectedError``, ``EnsembleError``, ``ProbeRunError``) the ensemble is unchanged.
        """
        if not isinstance(device_id, str) or not device_id:
            raise ValueError("device_id must be a non-empty string")
        data = bytes(onnx_bytes)
        if validate:
            from hdus_edge.onnx.checks import check_onnx

            check_onnx(data, self.contract)
        with self._build_lock:
            current = self._snapshot
            seeds = dict(current.seed_bytes)
            seeds[device_id] = data
            versions = dict(current.versions) | {device_id: int(version)}
            try:
                snap = self._build(seeds, previous=current, fuse=not self.background_fuse, versions=versions)
            except ProbeRunError as exc:
                raise ProbeRunError(f"seed {device_id!r} broke the ensemble: {exc.message}") from None
            self._swap(snap)
        self._request_fuse()
        logger.info("ensemble: added seed %s (%d seeds)", device_id, len(seeds))

    def remove(self, device_id: str) -> bool:
        """Remove ``device_id``'s seed and rebuild; ``False`` when it held none (nothing changes)."""
        with self._build_lock:
            current = self._snapshot
            if device_id not in current.seed_bytes:
                return False
            seeds = {d: b for d, b in current.seed_bytes.items() if d != device_id}
            versions = {d: v for d, v in current.versions.items() if d != device_id}
            self._swap(self._build(seeds, previous=current, fuse=not self.background_fuse, versions=versions))
        self._request_fuse()
        logger.info("ensemble: removed seed %s (%d seeds)", device_id, len(seeds))
        return True

    def replace_all(self, seeds: Mapping[str, bytes], versions: Mapping[str, int] | None = None) -> None:
        """Set the whole seed set at once (one rebuild), e.g. when loading the store at start-up."""
        with self._build_lock:
            seed_map = {d: bytes(b) for d, b in seeds.items()}
            self._swap(self._build(seed_map, previous=self._snapshot, fuse=not self.background_fuse,
                                   versions={d: int((versions or {}).get(d, 0)) for d in seed_map}))
        self._request_fuse()

    def wait_fused(self, timeout: float = 10.0) -> bool:
        """Block until the current member set runs as one fused graph (background_fuse); True if so."""
        if self.strategy != "fused":
            return False
        with self._swapped:
            return self._swapped.wait_for(lambda: self._snapshot.fused is not None, timeout)

    def close(self) -> None:
        """Stop the background fuse thread (the runtime still predicts)."""
        self._closed = True
        self._fuse_wanted.set()
        if self._fuse_thread is not None:
            self._fuse_thread.join(timeout=5)

    def _request_fuse(self) -> None:
        if not self.background_fuse or self._closed:
            return
        if self._fuse_thread is None:
            self._fuse_thread = threading.Thread(target=self._fuse_loop, name="hdus-ensemble-fuse", daemon=True)
            self._fuse_thread.start()
        self._fuse_wanted.set()

    def _fuse_loop(self) -> None:
        while True:
            self._fuse_wanted.wait()
            if self._closed:
                return
            # Debounce: wait for a quiet moment so a burst of seeds is fused once.
            while self._fuse_wanted.is_set() and not self._closed:
                self._fuse_wanted.clear()
                time.sleep(_FUSE_DEBOUNCE_S)
            with self._build_lock:
                current = self._snapshot
                if current.fused is not None or self._closed:
                    continue
                try:
                    snap = self._build(dict(current.seed_bytes), previous=current, fuse=True,
                                       versions=current.versions)
                except Exception:  # the per-member snapshot keeps serving; log and wait for the next change
                    logger.exception("ensemble: background fuse failed; staying on per-member sessions")
                    continue
                self._swap(snap)

    # --- inference -----------------------------------------------------------------------

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Ensemble output for float32 ``x`` [N, C, H, W]: logits or probabilities per ``space``."""
        return self._predict(self._snapshot, self._check_input(x))

    def predict_labelled(self, x: np.ndarray) -> Labelled:
        """``predict`` plus the member set, seed versions and generation of the snapshot that ran it."""
        snap = self._snapshot  # one read: the output and its labels come from the same snapshot
        out = self._predict(snap, self._check_input(x))
        return Labelled(out, snap.seeds, snap.versions, snap.sha256, snap.generation, snap.fused is not None)

    @property
    def generation(self) -> int:
        """The current snapshot's generation (goes up with every swap)."""
        return self._snapshot.generation

    @property
    def built_at(self) -> float:
        """``time.time()`` when the current snapshot was built."""
        return self._snapshot.built_at

    def seed_versions(self) -> Mapping[str, int]:
        """Owner -> version of the seeds in the current snapshot."""
        return self._snapshot.versions

    def predict_members(self, x: np.ndarray) -> MemberOutputs:
        """Every member's logits for ``x``, each from the member's own session (diagnostics, tests)."""
        snap, batch = self._snapshot, self._check_input(x)
        main, seeds = self._run_sessions(snap, batch)
        return MemberOutputs(main, MappingProxyType(dict(zip(snap.seeds, seeds))))

    def held_bytes(self) -> tuple[bytes, ...]:
        """Every model byte string the runtime holds (main, seeds, fused graph), for audits."""
        snap = self._snapshot
        return (self._main_bytes, *snap.seed_bytes.values(), *((snap.fused_bytes,) if snap.fused_bytes else ()))

    @property
    def fused_model_bytes(self) -> bytes | None:
        """The current fused graph's bytes (``None`` with the ``"sessions"`` strategy)."""
        return self._snapshot.fused_bytes

    # --- internals -------------------------------------------------------------------------

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(x, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.contract.input_shape:
            raise DataShapeError(
                f"input has shape {list(np.shape(x))}, expected [N, {', '.join(map(str, self.contract.input_shape))}]"
            )
        return batch

    def _predict(self, snap: _Snapshot, batch: np.ndarray) -> np.ndarray:
        if snap.fused is not None:
            return snap.fused.run(None, {"input": batch})[0]  # its one output: the ensemble's
        main, seeds = self._run_sessions(snap, batch)
        return combine(main, seeds, self.lam, self.space)

    def _run_sessions(self, snap: _Snapshot, batch: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        def run(session: ort.InferenceSession) -> np.ndarray:
            return session.run(None, {session.get_inputs()[0].name: batch})[0]

        with snap.lock:  # the fused strategy creates member sessions on first use
            if self._main_session is None:
                self._main_session = self._session(self._main_bytes)
            for device in snap.seeds:
                if device not in snap.sessions:
                    snap.sessions[device] = self._seed_session(snap.seed_bytes[device])
            main, sessions = self._main_session, [snap.sessions[d] for d in snap.seeds]
        return run(main), [run(s) for s in sessions]

    def _session(self, data: bytes) -> ort.InferenceSession:
        return make_session(data, providers=self.providers, intra_op_threads=self.intra_op_threads)

    def _seed_session(self, data: bytes) -> ort.InferenceSession:
        # A seed is a few thousand parameters: intra-op threads buy nothing, and each session's own
        # pool of them costs threads and resident memory (8 seeds x 3 threads, ~2.5 MiB measured).
        return make_session(data, providers=self.providers, intra_op_threads=1)

    def _build(self, seeds: dict[str, bytes], previous: _Snapshot | None, fuse: bool = True,
               versions: Mapping[str, int] | None = None) -> _Snapshot:
        order = tuple(sorted(seeds))
        sessions: dict[str, ort.InferenceSession] = {}
        fused = fused_bytes = None
        if self.strategy == "sessions" or not fuse:
            for device in order:
                old = previous.sessions.get(device) if previous is not None else None
                same = previous is not None and previous.seed_bytes.get(device) == seeds[device]
                sessions[device] = old if (same and old is not None) else self._seed_session(seeds[device])
        else:
            fused_bytes = self._fuse(seeds)
            fused = make_session(fused_bytes, providers=self.providers, intra_op_threads=self.intra_op_threads)
            if previous is not None:  # keep member sessions of unchanged seeds for predict_members
                sessions = {d: previous.sessions[d] for d in order
                            if d in previous.sessions and previous.seed_bytes.get(d) == seeds[d]}
        old_sha = previous.sha256 if previous is not None else {}
        sha = {d: old_sha[d] if previous is not None and previous.seed_bytes.get(d) is seeds[d] and d in old_sha
               else hashlib.sha256(seeds[d]).hexdigest() for d in order}
        snap = _Snapshot(order, MappingProxyType(dict(seeds)), sessions, fused, fused_bytes,
                         MappingProxyType({d: int((versions or {}).get(d, 0)) for d in order}),
                         MappingProxyType(sha), next(self._generations), time.time())
        # Probe before the swap: a member that loads but fails to run must not replace a good ensemble.
        x = probe_inputs(self.contract, batch=2)
        try:
            y = self._predict(snap, x)
        except HdusError:
            raise
        except Exception as exc:  # noqa: BLE001  # onnxruntime's pybind errors have no common base
            raise ProbeRunError(f"ensemble probe run failed: {type(exc).__name__}: {exc}") from None
        check_probe_output([y], 2, self.contract.num_classes)
        return snap

    def _fuse(self, seeds: Mapping[str, bytes]) -> bytes:
        if self.fuse_in_subprocess:
            from hdus_edge.ensemble.fuse_child import fuse_in_subprocess

            return fuse_in_subprocess(self._main_bytes, seeds, self.lam, self.space, pack=self.pack,
                                      max_bytes=_MAIN_MAX_BYTES)
        from hdus_edge.ensemble.fuse import fuse_ensemble
        from hdus_edge.onnx.checks import parse_onnx

        main = parse_onnx(self._main_bytes, max_bytes=_MAIN_MAX_BYTES)
        parsed = {d: parse_onnx(seeds[d], max_bytes=_MAIN_MAX_BYTES) for d in sorted(seeds)}
        # Member logits stay internal: as graph outputs they would stop onnxruntime fusing the
        # Q/DQ groups of int8 members, and int8 results would differ from the members' own.
        return fuse_ensemble(main, parsed, self.lam, self.space, member_outputs=False, pack=self.pack).SerializeToString()

    def _swap(self, snap: _Snapshot) -> None:
        with self._swapped:
            self._snapshot = snap
            self._swapped.notify_all()


def _contract_of(main: onnx.ModelProto) -> ModelContract:
    """The I/O contract the main model defines for every seed."""
    try:
        return ModelContract.from_graph(main)
    except ValueError as exc:
        raise EnsembleError(f"the main model does not fit: {exc}") from None


def _contract_of_session(session: ort.InferenceSession) -> ModelContract:
    """The same contract, read from an onnxruntime session (no onnx import)."""
    try:
        return ModelContract.from_session(session)
    except ValueError as exc:
        raise EnsembleError(f"the main model does not fit: {exc}") from None
