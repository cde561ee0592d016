"""One exception tree for every user-facing failure.

Library code raises these (never prints); only ``hdus_edge.cli`` catches them, prints one
``error: ...`` line plus the hint, and exits with ``exit_code``. Programming errors stay
``ValueError``/``TypeError``. Exit codes: 2 for usage, configuration and bad input the user can
fix before running again; 1 for runtime failures (broker down, peer silent).
"""

from __future__ import annotations


class HdusError(Exception):
    """Base of every error a user of hdus-edge can see.

    ``message`` says what was wrong; ``hint`` says what to do about it.
    """

    exit_code: int = 1
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


# --- configuration and usage -------------------------------------------------------------


class ConfigError(HdusError):
    """A config file, profile or option is missing, malformed or out of range."""

    exit_code = 2


class MissingExtraError(ConfigError):
    """The command needs an optional part of hdus-edge (an extra) that this install lacks.

    The base install is what a device runs (no torch, scikit-learn, matplotlib, amqtt, psutil);
    training and the simulator need ``hdus-edge[train]`` / ``hdus-edge[sim]``.
    """

    @classmethod
    def from_import(cls, exc: ImportError) -> MissingExtraError | None:
        """The error for a failed import of an extra's package, or None for any other import.

        Follows the chain of causes, since a module may re-raise the ImportError with its own words.
        """
        seen: BaseException | None = exc
        for _ in range(8):  # a chain is short; the bound guards against a cycle
            if seen is None:
                return None
            if isinstance(seen, ModuleNotFoundError):
                top = (seen.name or "").split(".")[0]
                extra = EXTRA_OF_IMPORT.get(top)
                if extra is not None:
                    return cls(f"this command needs {top}, which is not installed",
                               hint=f"install 'hdus-edge[{extra}]'")
            seen = seen.__cause__ or seen.__context__
        return None


# Top-level imports that only an extra provides -> that extra (pyproject's optional-dependencies;
# tests/test_packaging_imports.py checks the two agree).
EXTRA_OF_IMPORT: dict[str, str] = {
    "torch": "train",
    "sklearn": "sim",
    "matplotlib": "sim",
    "amqtt": "sim",
    "psutil": "sim",
}


class UnknownProfileError(ConfigError):
    """A device profile name that firmware_configs/ does not define."""


class StateDirError(ConfigError):
    """A device state directory is missing, incomplete or corrupt."""

    default_hint = "run 'hdus-edge provision' to create it, or pass the right --state-dir"


# --- data --------------------------------------------------------------------------------


class DataError(HdusError):
    """Input data is missing, malformed or unusable."""

    exit_code = 2


class DataFormatError(DataError):
    """A data file exists but its bytes are not what its format promises."""


class DataShapeError(DataError):
    """Data whose shape does not fit the model, profile or fleet."""


class PartitionError(DataError):
    """A partition request that cannot be met (too few samples, bad alpha, ...)."""


class ReferenceOverlapError(DataError):
    """The reference set shares samples with a client's private data (breaks exactness)."""

    default_hint = "draw the reference set from a split that is disjoint from every client partition"


# --- models ------------------------------------------------------------------------------


class ModelError(HdusError):
    """A model cannot be built, trained, loaded or run."""


class UnknownArchitectureError(ModelError):
    """An architecture name that the model zoo does not register."""

    exit_code = 2
    default_hint = "run 'hdus-edge models list' to see the registered architectures"


class CheckpointError(ModelError):
    """A checkpoint file is missing, corrupt or for another architecture."""

    exit_code = 2


class EnsembleError(HdusError):
    """An ensemble cannot be built or run as configured."""

    exit_code = 2


# --- untrusted ONNX ----------------------------------------------------------------------


class OnnxRejectedError(HdusError):
    """An ONNX model failed a safe-loading check; nothing was loaded."""

    exit_code = 2


class PayloadTooLargeError(OnnxRejectedError):
    """The payload is larger than the configured cap; it was not parsed."""


class NotOnnxError(OnnxRejectedError):
    """The bytes do not parse as an ONNX ModelProto."""


class OnnxCheckError(OnnxRejectedError):
    """onnx.checker or shape inference failed."""


class ContractMismatchError(OnnxRejectedError):
    """Inputs/outputs do not match the fleet's contract (dtype, shape, classes)."""


class ExternalDataError(OnnxRejectedError):
    """The model refers to external data files; seeds must be self-contained."""


class CustomDomainError(OnnxRejectedError):
    """The model uses an operator domain other than the standard one."""


class DisallowedOperatorError(OnnxRejectedError):
    """The model uses an operator outside the allowlist."""


class OpsetError(OnnxRejectedError):
    """The model's IR version or opset is outside the supported range."""


class ProbeRunError(OnnxRejectedError):
    """The model loaded but failed (or crashed) its probe run."""


class ComputeBudgetError(OnnxRejectedError):
    """The model would cost more MACs or parameters than the profile's seed budget (checked statically)."""


# --- protocol, keys, authority -----------------------------------------------------------


class ProtocolError(HdusError):
    """A message could not be accepted."""


class DecodeError(ProtocolError):
    """Bytes that are not a well-formed envelope of a known version."""


class SignatureError(ProtocolError):
    """A signature that does not verify over the bytes that travelled."""


class UnknownSenderError(ProtocolError):
    """A signer whose key the fleet admin never certified."""


class SenderMismatchError(ProtocolError):
    """The message claims a sender other than the key that signed it."""


class UnauthorizedError(ProtocolError):
    """A signed message from a key that may not issue it (policy)."""


class ReplayError(ProtocolError):
    """An old seed version or an already-seen request id."""


class TombstonedError(ProtocolError):
    """A seed from a device that was forgotten and not re-admitted."""


class RevokedError(UnauthorizedError):
    """A certificate (device and epoch) that the admin's signed revocation list revoked."""


class KeyFileError(ConfigError):
    """A key or certificate file is missing or malformed."""


# --- storage and transport ---------------------------------------------------------------


class StoreError(HdusError):
    """The seed store on disk is unusable."""


class ApiListenError(HdusError):
    """The agent's HTTP API cannot listen on its address (in use, not permitted, not an address here)."""


class TransportError(HdusError):
    """The MQTT broker could not be reached or refused us."""


class BrokerUnreachableError(TransportError):
    """No connection to the broker after bounded retries."""

    default_hint = "check the broker URL and that the broker is running ('hdus-edge broker' starts one)"


class BrokerRefusedError(TransportError):
    """The broker answered but refused the connection (bad credentials, not authorized)."""

    exit_code = 2
    default_hint = "check the user name, password or client certificate, and the broker's ACL"


class BrokerURLError(ConfigError):
    """A broker URL that does not parse (expected mqtt://host:port or mqtts://host:port)."""


class EvidenceRejectedError(HdusError):
    """A saved evidence file does not prove what it claims (a signature, a certificate, a receipt
    for another request, or a missing holder); exit 1, the verdict of ``hdus-edge verify``."""


class UnlearnIncompleteError(HdusError):
    """Some holders of the forgotten seed did not send a receipt in time."""


class DeviceForgottenError(HdusError):
    """This device was forgotten: its agent publishes nothing until the admin re-admits it."""

    exit_code = 1
    default_hint = "the fleet admin must re-admit this device with a new epoch ('hdus-edge readmit')"
