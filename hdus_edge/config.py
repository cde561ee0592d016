"""Configuration as frozen dataclasses read from TOML: device profiles, fleet and device configs.

Every file is checked against its dataclasses: an unknown section or key, a wrong type, or an
impossible value raises one ``ConfigError`` that names the file and the key. Profiles live in
``firmware_configs/<name>.toml`` (one per device class).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hdus_edge.arch_names import DEFAULT_SEED_ARCH
from hdus_edge.ensemble.combine import DEFAULT_LAM
from hdus_edge.errors import ConfigError, UnknownArchitectureError, UnknownProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

T = TypeVar("T")

KNOWN_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


# --- profiles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSection:
    main_arch: str
    seed_arch: str = DEFAULT_SEED_ARCH


@dataclass(frozen=True)
class TrainSection:
    batch_size: int = 32
    epochs: int = 30
    distill_epochs: int = 40
    shards: int = 1  # SISA: K > 1 trains K shard models, so forgetting samples retrains only their shards


@dataclass(frozen=True)
class RuntimeSection:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1
    int8: bool = False
    strategy: str = "fused"  # "fused" graph or one "sessions" per member


@dataclass(frozen=True)
class LimitsSection:
    """What one neighbour, or an insider, may cost this device (issue 14: no device takes the fleet down)."""

    max_seed_bytes: int = 8 * 1024 * 1024
    memory_budget_mb: int = 256
    # A neighbour's seed may cost at most this many times this device's own seed (MACs and
    # parameters, counted statically on the ONNX graph): the zoo's seeds differ from their own
    # export by under 5% in our count, and 4x bounds what a hostile seed adds to every prediction.
    seed_compute_multiple: float = 4.0
    # The probe child's wall-clock limit (it imports onnxruntime first: seconds on a small board), and
    # the most one probe batch may take to run: a seed batch runs in about a millisecond, so a second
    # is generous even on a loaded Pi Zero.
    probe_timeout_s: float = 20.0
    probe_run_ms: float = 1000.0
    # Messages parked until their sender's hello: a few per device is what retained-order races
    # need; 4 MiB in total bounds what made-up sender ids can hold in memory.
    parked_per_sender: int = 16
    parked_per_topic: int = 8
    parked_total: int = 256
    parked_total_bytes: int = 4 * 1024 * 1024
    # Audit lines that outside input triggers (rejections): 20 a second after a burst of 100, then
    # one summary line with the count; lines about what the device did are never limited.
    audit_rate_per_s: float = 20.0
    audit_burst: int = 100


@dataclass(frozen=True)
class ApiSection:
    """The agent's inference API and metrics (``hdus-edge agent --http``, the systemd unit)."""

    http: str = ""  # HOST:PORT the service unit serves on; empty: no API unless --http asks
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 256
    max_connections: int = 16


@dataclass(frozen=True)
class UpdateSection:
    """The gate a neighbour's new seed version must pass on the public reference set (0 = off)."""

    min_agreement: float = 0.0  # top-1 agreement with the version it replaces
    min_reference_accuracy: float = 0.0  # accuracy on the reference set's labels, where it has them


@dataclass(frozen=True)
class ProfileSection:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Profile:
    """What one class of device runs, and within which limits."""

    profile: ProfileSection
    model: ModelSection
    train: TrainSection = field(default_factory=TrainSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    api: ApiSection = field(default_factory=ApiSection)
    update: UpdateSection = field(default_factory=UpdateSection)

    @property
    def name(self) -> str:
        """The profile's name (its file's stem)."""
        return self.profile.name


# --- fleet and device --------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSection:
    name: str
    broker: str = "mqtt://127.0.0.1:1883"
    topic_root: str = ""  # empty: hdus/v1/<name>


@dataclass(frozen=True)
class DataSection:
    input_shape: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = 10
    reference: str = "public"  # "public" split or generated "noise"
    reference_sha256: str = ""


@dataclass(frozen=True)
class EnsembleSection:
    lam: float = DEFAULT_LAM
    space: str = "probs"


@dataclass(frozen=True)
class FleetConfig:
    """What every device of one fleet agrees on."""

    fleet: FleetSection
    data: DataSection = field(default_factory=DataSection)
    ensemble: EnsembleSection = field(default_factory=EnsembleSection)

    @property
    def topic_root(self) -> str:
        """The MQTT topic root, ``hdus/v1/<fleet>`` unless configured."""
        return self.fleet.topic_root or f"hdus/v1/{self.fleet.name}"


@dataclass(frozen=True)
class DeviceSection:
    id: str
    profile: str
    broker: str = ""  # empty: the fleet's broker


@dataclass(frozen=True)
class DeviceConfig:
    """One provisioned device."""

    device: DeviceSection
    neighbors: tuple[str, ...] = ()


# --- reading and validation --------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a ``ConfigError`` that names the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the syntax at the line named") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``raw`` (nested dicts), checking keys and types strictly."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'", hint=f"known keys: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing key '{name}'")
            continue
        values[name] = _coerce(hints[name], raw[name], f"{where}.{name}")
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{k}]") for k, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{k}]") for k, (a, v) in enumerate(zip(args, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool or not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}")


def validate_profile(p: Profile, where: str) -> Profile:
    """Check values a type cannot express (ranges, known names)."""
    # The torch-free name table: validating a profile must not import torch (the agent does it).
    from hdus_edge.arch_names import arch_role

    for key, arch, role in (("model.main_arch", p.model.main_arch, "main"), ("model.seed_arch", p.model.seed_arch, "seed")):
        try:
            actual = arch_role(arch)
        except UnknownArchitectureError as exc:
            raise ConfigError(f"{where}: {key}: {exc.message}") from None
        _check(actual == role, f"{where}: {key}", f"'{arch}' is a {actual} architecture, not a {role} one")
    _check(p.train.batch_size >= 2, f"{where}: train.batch_size", f"must be >= 2, got {p.train.batch_size}")
    _check(p.train.epochs >= 1, f"{where}: train.epochs", f"must be >= 1, got {p.train.epochs}")
    _check(p.train.distill_epochs >= 1, f"{where}: train.distill_epochs", "must be >= 1")
    _check(1 <= p.train.shards <= 64, f"{where}: train.shards", f"must be in 1..64, got {p.train.shards}")
    for key in ("min_agreement", "min_reference_accuracy"):
        value = getattr(p.update, key)
        _check(0.0 <= value <= 1.0, f"{where}: update.{key}", f"must lie in [0, 1], got {value}")
    _check(len(p.runtime.providers) > 0, f"{where}: runtime.providers", "must name at least one provider")
    for prov in p.runtime.providers:
        _check(prov in KNOWN_PROVIDERS, f"{where}: runtime.providers", f"unknown provider '{prov}' (known: {', '.join(KNOWN_PROVIDERS)})")
    _check(p.runtime.providers[-1] == "CPUExecutionProvider", f"{where}: runtime.providers",
           "must end with CPUExecutionProvider so there is always a fallback")
    _check(1 <= p.runtime.intra_op_threads <= 64, f"{where}: runtime.intra_op_threads", "must be in 1..64")
    _check(p.runtime.strategy in ("fused", "sessions"), f"{where}: runtime.strategy", "must be 'fused' or 'sessions'")
    _check(1024 <= p.limits.max_seed_bytes <= 256 * 1024 * 1024, f"{where}: limits.max_seed_bytes", "must be in 1 KiB..256 MiB")
    _check(p.limits.memory_budget_mb >= 32, f"{where}: limits.memory_budget_mb", "must be >= 32")
    if p.api.http:
        try:
            parse_http_address(p.api.http)
        except ConfigError as exc:
            raise ConfigError(f"{where}: api.http: {exc.message}") from None
    _check(1024 <= p.api.max_body_bytes <= 256 * 1024 * 1024, f"{where}: api.max_body_bytes", "must be in 1 KiB..256 MiB")
    _check(1 <= p.api.max_batch <= 65536, f"{where}: api.max_batch", "must be in 1..65536")
    _check(1 <= p.api.max_connections <= 1024, f"{where}: api.max_connections", "must be in 1..1024")
    lim = p.limits
    _check(1.0 <= lim.seed_compute_multiple <= 1000.0, f"{where}: limits.seed_compute_multiple", "must be in 1..1000")
    _check(0.5 <= lim.probe_timeout_s <= 600.0, f"{where}: limits.probe_timeout_s", "must be in 0.5..600 seconds")
    _check(1.0 <= lim.probe_run_ms <= 600_000.0, f"{where}: limits.probe_run_ms", "must be in 1..600000 ms")
    for key in ("parked_per_sender", "parked_per_topic", "parked_total", "audit_burst"):
        _check(1 <= getattr(lim, key) <= 100_000, f"{where}: limits.{key}", "must be in 1..100000")
    _check(1024 <= lim.parked_total_bytes <= 1 << 30, f"{where}: limits.parked_total_bytes", "must be in 1 KiB..1 GiB")
    _check(0.01 <= lim.audit_rate_per_s <= 100_000.0, f"{where}: limits.audit_rate_per_s", "must be in 0.01..100000")
    return p


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); loopback unless a host is given.

    ``ConfigError`` for anything else (an IPv6 host goes in brackets: ``[::1]:8000``).
    """
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        host, port_text = "", raw
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"HTTP address {text!r} has no valid port", hint="use HOST:PORT, e.g. 127.0.0.1:8000") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"HTTP port {port} is out of range", hint="use a port in 1..65535")
    return host, port


def profiles_dir() -> Path:
    """``hdus_edge/firmware_configs/``: package data, so a wheel (a device's install) carries them too."""
    return Path(__file__).resolve().parent / "firmware_configs"


def list_profiles(directory: Path | None = None) -> list[str]:
    """Names of the profiles available."""
    return sorted(p.stem for p in (directory or profiles_dir()).glob("*.toml"))


def load_profile(name_or_path: str, directory: Path | None = None) -> Profile:
    """Load and validate a profile by name (``firmware_configs/NAME.toml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix == ".toml":
        path = (directory or profiles_dir()) / f"{name_or_path}.toml"
        if not path.exists():
            raise UnknownProfileError(
                f"unknown profile '{name_or_path}'", hint=f"known profiles: {', '.join(list_profiles(directory))}"
            )
    raw = read_toml(path)
    profile = from_dict(Profile, raw, str(path))
    return validate_profile(profile, str(path))


def validate_fleet(cfg: FleetConfig, where: str) -> FleetConfig:
    """Check fleet values: lam range, combine space, input shape, class count, broker URL."""
    from hdus_edge.ensemble.combine import COMBINE_SPACES

    _check(0.0 <= cfg.ensemble.lam <= 1.0, f"{where}: ensemble.lam", f"must lie in [0, 1], got {cfg.ensemble.lam}")
    _check(cfg.ensemble.space in COMBINE_SPACES, f"{where}: ensemble.space", f"must be one of {COMBINE_SPACES}")
    c, h, w = cfg.data.input_shape
    _check(c in (1, 3) and 8 <= h <= 64 and 8 <= w <= 64, f"{where}: data.input_shape",
           f"must be [C, H, W] with C = 1 (grey) or 3 (RGB) and 8 <= H, W <= 64, got {list(cfg.data.input_shape)}")
    _check(2 <= cfg.data.num_classes <= 1000, f"{where}: data.num_classes", "must be in 2..1000")
    _check(cfg.data.reference in ("public", "noise"), f"{where}: data.reference", "must be 'public' or 'noise'")
    _check(bool(cfg.fleet.name) and "/" not in cfg.fleet.name and "+" not in cfg.fleet.name and "#" not in cfg.fleet.name,
           f"{where}: fleet.name", "must be non-empty without '/', '+' or '#'")
    return cfg


def load_fleet_config(path: Path) -> FleetConfig:
    """Load and validate a fleet config TOML."""
    return validate_fleet(from_dict(FleetConfig, read_toml(path), str(path)), str(path))


def load_device_config(path: Path) -> DeviceConfig:
    """Load a device config TOML."""
    return from_dict(DeviceConfig, read_toml(path), str(path))


def to_toml(obj: Any) -> str:
    """Serialise a config dataclass as TOML (tables for nested dataclasses)."""
    lines: list[str] = []
    top = dataclasses.asdict(obj)
    for section, values in top.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        else:
            lines.insert(0, f"{section} = {_toml_value(values)}")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
