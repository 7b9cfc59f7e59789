"""Deterministic message values for the protocol tests, generated from the message table.

``make_value(api_key, response, version, variant)`` walks ``kstore.server.messages.MESSAGES``
directly (not the codec's compiled plans, so a plan bug cannot hide itself) and returns a dict
with every field of that version populated. The variants cover, between them: non-default
ints of both signs and at the type limits, non-ASCII strings, strings and bytes long enough
for multi-byte compact lengths, nullable fields both set and None, arrays of 0, 1, 2 and 130
elements, and tagged fields present, absent, and explicitly at their default.

``with_defaults`` adds what the decoder fills in for fields the version lacks, so a decoded
value can be compared with the generated one as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kstore.server.messages import MESSAGES, SERVED


@dataclass(frozen=True)
class Variant:
    name: str
    array_len: int  # elements per array of structs
    scalar_array_len: int  # elements per array of scalars
    nulls: bool  # nullable fields are None
    tags: str  # "present", "absent" (key left out) or "default" (key set to the default)
    long: bool  # long strings and bytes (multi-byte compact lengths)


VARIANTS = (
    Variant("full", 2, 2, False, "present", False),
    Variant("nulls", 1, 1, True, "absent", False),
    Variant("long", 1, 130, False, "present", True),
    Variant("empty", 0, 0, True, "default", False),
)

INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
}
SCALARS = set(INT_RANGES) | {"float64", "bool", "string", "bytes", "records", "uuid"}


def present(f: tuple, version: int) -> bool:
    return f[2] <= version <= f[3]


def nullable(f: tuple, version: int) -> bool:
    return f[4] <= version <= f[5]


def tagged(f: tuple, version: int, flexible: bool) -> bool:
    return flexible and f[6] >= 0 and version >= f[7]


def default_of(f: tuple) -> Any:
    """The decoded value of a field a version lacks (or of an absent tagged field)."""
    ftype, default, children = f[1], f[9], f[10]
    if ftype.startswith("[]"):
        return None if default is None else []
    if children is not None:  # a struct: its fields' defaults
        return {c[0]: default_of(c) for c in children}
    return default


class _Gen:
    def __init__(self, variant: Variant, flexible: bool, version: int, seed: int) -> None:
        self.v = variant
        self.flexible = flexible
        self.version = version
        self.n = seed

    def tick(self) -> int:
        self.n += 1
        return self.n

    def scalar(self, ftype: str, f: tuple) -> Any:
        c = self.tick()
        dflt = f[9]
        if ftype in INT_RANGES:
            lo, hi = INT_RANGES[ftype]
            choice = c % 5
            if choice == 0:
                val = lo if ftype != "uint16" and ftype != "uint32" else hi
            elif choice == 1:
                val = hi
            elif choice == 2:
                val = -(c * 7 % hi + 2) if lo < 0 else c * 7 % hi + 2
            elif choice == 3:
                val = (c * 104729) % hi + 1
            else:
                val = lo + c % hi if lo < 0 else hi - c % hi
            return val if val != dflt else val - 1 if val > lo else val + 1
        if ftype == "float64":
            return c + 0.25
        if ftype == "bool":
            return not dflt
        if ftype == "string":
            base = f"{f[0]}-{c}-é漢"
            return base + "x" * 300 if self.v.long else base
        if ftype in ("bytes", "records"):
            size = 200 if self.v.long else 3 + c % 5
            return bytes((c + i) % 256 for i in range(size))
        if ftype == "uuid":
            return bytes((c + i) % 255 + 1 for i in range(16))
        raise AssertionError(ftype)

    def field(self, f: tuple) -> Any:
        name, ftype, children = f[0], f[1], f[10]
        if self.v.nulls and nullable(f, self.version):
            return None
        if ftype.startswith("[]"):
            if children is not None:
                return [self.struct(children) for _ in range(self.v.array_len)]
            etype = ftype[2:]
            return [self.scalar(etype, (name, etype) + f[2:9] + (None, None))
                    for _ in range(self.v.scalar_array_len)]
        if children is not None:
            return self.struct(children)
        return self.scalar(ftype, f)

    def struct(self, fields: tuple) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields:
            if not present(f, self.version):
                continue
            if tagged(f, self.version, self.flexible):
                if self.v.tags == "absent":
                    continue
                if self.v.tags == "default":
                    out[f[0]] = default_of(f)
                    continue
                val = self.field(f)
                if val == default_of(f):  # e.g. an empty array: not "present"
                    continue
                out[f[0]] = val
            else:
                out[f[0]] = self.field(f)
        return out


def table(api_key: int, response: bool) -> tuple:
    return MESSAGES[(api_key, response)]


def make_value(api_key: int, response: bool, version: int, variant: Variant,
               fields: tuple | None = None) -> dict[str, Any]:
    _, _, _, flex, spec = table(api_key, response)
    g = _Gen(variant, version >= flex, version, api_key * 1000 + version * 10 + response)
    value = g.struct(spec if fields is None else fields)
    if api_key == 18 and response:
        # A nonzero error makes every reader (kafka-python, Kafka) parse the body as v0, so the
        # matrix keeps it 0; the error-35 reply is a golden fixture.
        value["error_code"] = 0
    return value


def with_defaults(api_key: int, response: bool, version: int, value: dict[str, Any],
                  absent: bool = True) -> dict:
    """The generated value as the decoder returns it: fields left out at their defaults, and
    (with ``absent``) the fields this version lacks too."""
    _, _, _, flex, spec = table(api_key, response)
    return _fill(spec, version, version >= flex, value, absent)


def _fill(fields: tuple, version: int, flexible: bool, value: dict[str, Any],
          absent: bool) -> dict:
    out = {}
    for f in fields:
        name, ftype, children = f[0], f[1], f[10]
        if not present(f, version):
            if absent:
                out[name] = default_of(f)
            continue
        if name not in value:  # a tagged field left out, or any field to encode as default
            out[name] = default_of(f)
            continue
        v = value[name]
        if children is not None and v is not None:
            if ftype.startswith("[]"):
                v = [_fill(children, version, flexible, e, absent) for e in v]
            else:
                v = _fill(children, version, flexible, v, absent)
        out[name] = v
    return out


def all_messages() -> list[tuple[int, bool, int]]:
    """Every (api_key, response, version) kstore advertises."""
    out = []
    for (key, resp) in sorted(MESSAGES):
        lo, hi = SERVED[key]
        out.extend((key, resp, v) for v in range(lo, hi + 1))
    return out
