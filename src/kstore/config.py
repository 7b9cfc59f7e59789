"""Topic and log configuration with Kafka's names, defaults and validation.

Values may be given as ints or strings (as the CLI and Kafka's tools pass them); they are
converted and checked here, and a bad key or value raises InvalidConfigError naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kstore.errors import InvalidConfigError

LONG_MAX = 9223372036854775807


@dataclass(frozen=True)
class ConfigKey:
    name: str
    default: Any
    parse: Callable[[str, Any], Any]
    doc: str
    # A comma-separated list (Kafka's type LIST): IncrementalAlterConfigs may APPEND to it and
    # SUBTRACT from it.
    is_list: bool = False


def _long(lo: int | None = None, hi: int | None = None) -> Callable[[str, Any], int]:
    def parse(name: str, value: Any) -> int:
        if isinstance(value, bool):
            raise InvalidConfigError(f"{name} must be an integer, not {value!r}")
        try:
            v = int(value, 10) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise InvalidConfigError(f"{name} must be an integer, not {value!r}") from None
        if isinstance(value, float) and value != v:
            raise InvalidConfigError(f"{name} must be an integer, not {value!r}")
        if lo is not None and v < lo:
            raise InvalidConfigError(f"{name} must be at least {lo}, not {v}")
        if hi is not None and v > hi:
            raise InvalidConfigError(f"{name} must be at most {hi}, not {v}")
        return v

    return parse


def _ratio(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidConfigError(f"{name} must be a number, not {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise InvalidConfigError(f"{name} must be between 0 and 1, not {v}")
    return v


def _choice(*options: str, multi: bool = False) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidConfigError(f"{name} must be one of {', '.join(options)}, not {value!r}")
        parts = [p.strip() for p in value.split(",")] if multi else [value.strip()]
        for p in parts:
            if p not in options:
                raise InvalidConfigError(f"{name} must be one of {', '.join(options)}, not {value!r}")
        return ",".join(sorted(set(parts))) if multi else parts[0]

    return parse


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidConfigError(f"{name} must be true or false, not {value!r}")


_I32 = 2**31 - 1

#: Kafka's topic-level configs that kstore honours, with Kafka's defaults (kafka-storage.md s10).
TOPIC_CONFIG: dict[str, ConfigKey] = {
    k.name: k
    for k in [
        ConfigKey("segment.bytes", 1073741824, _long(14, _I32), "roll a segment at this size"),
        ConfigKey("segment.ms", 604800000, _long(1), "roll a segment after this much time"),
        ConfigKey("segment.jitter.ms", 0, _long(0), "random jitter subtracted from segment.ms"),
        ConfigKey("segment.index.bytes", 10485760, _long(4, _I32), "size of each index file"),
        ConfigKey("index.interval.bytes", 4096, _long(0, _I32), "bytes between index entries"),
        ConfigKey("max.message.bytes", 1048588, _long(0, _I32), "largest batch accepted"),
        ConfigKey("flush.messages", LONG_MAX, _long(1), "fsync after this many messages"),
        ConfigKey("flush.ms", LONG_MAX, _long(0), "fsync after this much time"),
        ConfigKey("message.timestamp.type", "CreateTime",
                  _choice("CreateTime", "LogAppendTime"), "CreateTime or LogAppendTime"),
        ConfigKey("retention.ms", 604800000, _long(-1), "delete segments older than this (-1: never)"),
        ConfigKey("retention.bytes", -1, _long(-1), "keep at most this many bytes per partition"),
        ConfigKey("cleanup.policy", "delete", _choice("delete", "compact", multi=True),
                  "delete, compact, or both", is_list=True),
        ConfigKey("compression.type", "producer",
                  _choice("producer", "uncompressed", "none", "gzip", "snappy", "lz4", "zstd"),
                  "codec the topic stores (producer: keep the producer's)"),
        ConfigKey("file.delete.delay.ms", 60000, _long(0), "delay before deleted files are unlinked"),
        ConfigKey("delete.retention.ms", 86400000, _long(0), "how long tombstones survive compaction"),
        ConfigKey("min.compaction.lag.ms", 0, _long(0), "records younger than this are not compacted"),
        ConfigKey("max.compaction.lag.ms", LONG_MAX, _long(1), "compact records older than this"),
        ConfigKey("min.cleanable.dirty.ratio", 0.5, _ratio, "dirty ratio that triggers compaction"),
        ConfigKey("preallocate", False, _bool, "preallocate segment files"),
        ConfigKey("min.insync.replicas", 1, _long(1), "accepted for compatibility (one node)"),
        ConfigKey("unclean.leader.election.enable", False, _bool, "accepted for compatibility"),
        ConfigKey("message.timestamp.difference.max.ms", LONG_MAX, _long(0), "accepted"),
    ]
}


def validate_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parse and check ``config``; returns the given keys with typed values."""
    out: dict[str, Any] = {}
    for name, value in (config or {}).items():
        key = TOPIC_CONFIG.get(name)
        if key is None:
            raise InvalidConfigError(
                f"unknown config key {name!r}; known keys: {', '.join(sorted(TOPIC_CONFIG))}"
            )
        out[name] = key.parse(name, value)
    return out


def resolve_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every known key: the defaults overlaid with ``config`` (validated)."""
    out = {name: key.default for name, key in TOPIC_CONFIG.items()}
    out.update(validate_config(config))
    return out
