"""Kafka wire protocol codec, driven by the message table in kstore.server.messages.

Messages are plain dicts keyed by the schema's field names in snake_case (``ThrottleTimeMs`` ->
``throttle_time_ms``); arrays of structs are lists of dicts. Decoding fills fields that a
version lacks with their schema default, so handlers never test versions to read a field.
Encoding takes any missing field as its default, so handlers only set what they know.

Each (api key, request or response, version) is compiled once into a plan: the fields present
in that version, whether strings, bytes and arrays are compact (flexible versions, KIP-482),
nullability, and the tagged fields. ``records`` fields decode to a memoryview of the request
(no copy) and encode from bytes, a memoryview or a FileSlice, which stays a separate piece of
the output so the server can send it with ``sendfile`` (bytes of 16 KiB or more also stay
separate, uncopied). Decoded lists and dicts, defaults included, belong to the caller.

Malformed input raises :class:`MalformedRequestError` naming the field and byte position.
"""

from __future__ import annotations

import struct
import uuid
from functools import cache
from typing import Any

from kstore.errors import InvalidRequestError
from kstore.server.messages import MESSAGES, SERVED

__all__ = [
    "MalformedRequestError",
    "RequestHeader",
    "api_name",
    "decode",
    "encode",
    "encode_request",
    "frame_response",
    "is_flexible",
    "known_versions",
    "parse_request_header",
    "supported_versions",
]

API_VERSIONS = 18

# Type codes of a compiled field.
(_INT8, _INT16, _INT32, _INT64, _UINT16, _UINT32, _FLOAT64, _BOOL, _STRING, _BYTES, _RECORDS,
 _UUID, _STRUCT, _ARRAY) = range(14)

_SCALARS: dict[str, tuple[int, struct.Struct]] = {
    "int8": (_INT8, struct.Struct(">b")),
    "int16": (_INT16, struct.Struct(">h")),
    "int32": (_INT32, struct.Struct(">i")),
    "int64": (_INT64, struct.Struct(">q")),
    "uint16": (_UINT16, struct.Struct(">H")),
    "uint32": (_UINT32, struct.Struct(">I")),
    "float64": (_FLOAT64, struct.Struct(">d")),
    "bool": (_BOOL, struct.Struct(">?")),
}
_CODES = {"string": _STRING, "bytes": _BYTES, "records": _RECORDS, "uuid": _UUID}
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_HDR = struct.Struct(">hhi")
# bytes values at least this long (fetched batches) become pieces of their own, uncopied.
_OUT_OF_LINE = 16384


class MalformedRequestError(InvalidRequestError, register=False):
    """Bytes that do not parse as the message they claim to be."""

    # Set by parse_request_header when it got as far as reading them.
    api_key: int | None = None
    correlation_id: int | None = None


class _Field:
    __slots__ = ("code", "compact", "default", "elem", "name", "nullable", "st", "sub", "tag")

    def __init__(self, name: str, code: int, st: struct.Struct | None, nullable: bool,
                 compact: bool, sub: _Plan | None, elem: _Field | None, default: Any,
                 tag: int) -> None:
        self.name = name
        self.code = code
        self.st = st
        self.nullable = nullable
        self.compact = compact
        self.sub = sub
        self.elem = elem
        self.default = default
        self.tag = tag


class _Plan:
    """The fields of one struct in one version."""

    __slots__ = ("by_tag", "defaults", "fields", "flexible", "fresh", "tagged")

    def __init__(self, fields: list[_Field], tagged: list[_Field], flexible: bool,
                 defaults: dict[str, Any]) -> None:
        self.fields = tuple(fields)
        self.tagged = tuple(sorted(tagged, key=lambda f: f.tag))
        self.by_tag = {f.tag: f for f in tagged}
        self.flexible = flexible
        self.defaults = defaults
        # Defaults that are lists or dicts: each decoded struct gets its own copy, since its
        # handler may edit it.
        self.fresh = tuple(k for k, v in defaults.items() if isinstance(v, (list, dict)))


def _default(spec_default: Any, sub: _Plan | None, is_array: bool, nullable: bool) -> Any:
    if is_array:
        return None if spec_default is None else []
    if sub is not None:
        return None if nullable else _DefaultStruct(sub)
    return spec_default


class _DefaultStruct:
    """Marker: a struct field that is absent takes its fields' defaults."""

    __slots__ = ("plan",)

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan


def _compile(fields: tuple, version: int, flexible: bool) -> _Plan:
    regular: list[_Field] = []
    tagged: list[_Field] = []
    defaults: dict[str, Any] = {}
    for (name, ftype, vmin, vmax, nmin, nmax, tag, tmin, flex_none, default, children) in fields:
        sub = _compile(children, version, flexible) if children is not None else None
        is_tagged = flexible and tag >= 0 and version >= tmin
        present = vmin <= version <= vmax
        nullable = nmin <= version <= nmax
        compact = flexible and not flex_none
        is_array = ftype.startswith("[]")
        # A struct a version lacks decodes as its fields' defaults (Kafka's default instance),
        # unless the schema lets it be null.
        dflt = _default(default, sub, is_array, nmin <= nmax if sub is not None else default is None)
        if not present or is_tagged:
            defaults[name] = _materialize(dflt)
        if not present:
            continue
        if is_array:
            if sub is not None:
                elem = _Field(name, _STRUCT, None, False, compact, sub, None, None, -1)
            else:
                etype = ftype[2:]
                code, st = _SCALARS[etype] if etype in _SCALARS else (_CODES[etype], None)
                elem = _Field(name, code, st, False, compact, None, None, None, -1)
            f = _Field(name, _ARRAY, None, nullable, compact, None, elem, dflt, tag)
        elif sub is not None:
            f = _Field(name, _STRUCT, None, nullable, compact, sub, None, dflt, tag)
        elif ftype in _SCALARS:
            code, st = _SCALARS[ftype]
            f = _Field(name, code, st, False, compact, None, None, dflt, tag)
        else:
            f = _Field(name, _CODES[ftype], None, nullable, compact, None, None, dflt, tag)
        (tagged if is_tagged else regular).append(f)
    return _Plan(regular, tagged, flexible, defaults)


def _materialize(value: Any) -> Any:
    """A default as a decoded value: lists and dicts are new objects on every call."""
    if isinstance(value, _DefaultStruct):
        plan = value.plan
        return {**{k: _materialize(v) for k, v in plan.defaults.items()},
                **{f.name: _materialize(f.default) for f in plan.fields}}
    if isinstance(value, list):
        return []
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    return value


@cache
def _plan(api_key: int, response: bool, version: int) -> _Plan:
    try:
        _, vmin, vmax, flex, fields = MESSAGES[(api_key, response)]
    except KeyError:
        raise MalformedRequestError(f"unknown API key {api_key}") from None
    if not vmin <= version <= vmax:
        raise MalformedRequestError(f"{api_name(api_key)} v{version} is not supported "
                                    f"(versions {vmin}-{vmax})")
    return _compile(fields, version, version >= flex)


def api_name(api_key: int) -> str:
    m = MESSAGES.get((api_key, False))
    return m[0][: -len("Request")] if m else f"api {api_key}"


def supported_versions() -> dict[int, tuple[int, int]]:
    """API key -> (min, max) version kstore serves (what ApiVersions advertises). The codec
    knows every version of the schema (``known_versions``), so that a request of a version
    outside this range can still be parsed and answered UNSUPPORTED_VERSION."""
    return dict(SERVED)


def known_versions(api_key: int) -> tuple[int, int] | None:
    """(min, max) version whose layout the codec knows (the schema's validVersions)."""
    m = MESSAGES.get((api_key, False))
    return (m[1], m[2]) if m else None


def is_flexible(api_key: int, version: int) -> bool:
    m = MESSAGES.get((api_key, False))
    return m is not None and version >= m[3]


# Names one side of a request/response pair gives a field the other side names differently
# (FetchRequest's partition is FetchResponse's partition_index, ...).
_SAME_AS = {"partition": ("partition_index", "index"), "partition_index": ("partition", "index"),
            "index": ("partition_index", "partition"), "name": ("topic",), "topic": ("name",)}
# What an error response copies from its request: the names of what it refuses, nothing else.
_IDENTITY = frozenset({*_SAME_AS, "topic_id", "group_id", "resource_type", "resource_name",
                       "key"})


def error_response(api_key: int, version: int, req: dict[str, Any], error_code: int) -> dict:
    """The response of ``version`` that refuses ``req`` with ``error_code`` everywhere it has
    an error code, as Kafka's ``AbstractRequest.getErrorResponse`` does: a top-level error code
    where the response has one, and every topic and partition of the request echoed with the
    error (their identifying fields copied by name)."""
    return _mirror(_plan(api_key, True, version), req, error_code)


def _mirror(plan: _Plan, src: dict[str, Any] | None, error_code: int) -> dict[str, Any]:
    src = src or {}
    lists = [v for v in src.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
    out: dict[str, Any] = {}
    for f in (*plan.fields, *plan.tagged):
        if f.name == "error_code":
            out[f.name] = error_code
        elif f.code == _ARRAY and f.elem is not None and f.elem.code == _STRUCT:
            items = lists.pop(0) if lists else []
            assert f.elem.sub is not None
            out[f.name] = [_mirror(f.elem.sub, item, error_code) for item in items]
        elif f.name in _IDENTITY:
            for name in (f.name, *_SAME_AS.get(f.name, ())):
                v = src.get(name)
                if v is not None and not isinstance(v, (list, dict)):
                    out[f.name] = v
                    break
    return out


# ==============================================================================================
# Decoding


class _Reader:
    __slots__ = ("buf", "end", "pos", "what")

    def __init__(self, buf: memoryview, pos: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf)
        self.what = what

    def fail(self, field: str, why: str) -> MalformedRequestError:
        return MalformedRequestError(f"{self.what}: field {field!r} at byte {self.pos}: {why}")

    def uvarint(self, field: str) -> int:
        buf, pos, end = self.buf, self.pos, self.end
        result = shift = 0
        while True:
            if pos >= end:
                raise self.fail(field, "truncated varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 28:
                raise self.fail(field, "varint longer than 5 bytes")
        self.pos = pos
        return result

    def length(self, field: str, compact: bool, wide: bool) -> int:
        """A length prefix: -1 for null."""
        if compact:
            return self.uvarint(field) - 1
        st = _I32 if wide else _I16
        if self.pos + st.size > self.end:
            raise self.fail(field, "truncated length")
        (n,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return n

    def take(self, field: str, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(field, f"length {n} runs past the end ({self.end - self.pos} bytes left)")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v


def _read_value(r: _Reader, f: _Field) -> Any:
    code = f.code
    if code <= _BOOL:
        st = f.st
        assert st is not None
        if r.pos + st.size > r.end:
            raise r.fail(f.name, f"needs {st.size} bytes, {r.end - r.pos} left")
        (v,) = st.unpack_from(r.buf, r.pos)
        r.pos += st.size
        return v
    if code == _STRING:
        n = r.length(f.name, f.compact, False)
        if n < 0:
            if n == -1 and f.nullable:
                return None
            raise r.fail(f.name, f"length {n} (null is not allowed here)")
        try:
            return str(r.take(f.name, n), "utf-8")
        except UnicodeDecodeError:
            raise r.fail(f.name, "invalid UTF-8") from None
    if code == _BYTES or code == _RECORDS:
        n = r.length(f.name, f.compact, True)
        if n < 0:
            if n == -1 and (f.nullable or code == _RECORDS):
                return None
            raise r.fail(f.name, f"length {n} (null is not allowed here)")
        v = r.take(f.name, n)
        return v if code == _RECORDS else bytes(v)
    if code == _UUID:
        return bytes(r.take(f.name, 16))
    if code == _STRUCT:
        assert f.sub is not None
        return _read_struct(r, f.sub)
    if code == _ARRAY:
        n = r.length(f.name, f.compact, True)
        if n < 0:
            if n == -1 and f.nullable:
                return None
            raise r.fail(f.name, f"array length {n} (null is not allowed here)")
        if n > r.end - r.pos:  # every element takes at least one byte
            raise r.fail(f.name, f"array of {n} elements in {r.end - r.pos} bytes")
        elem = f.elem
        assert elem is not None
        return [_read_value(r, elem) for _ in range(n)]
    raise AssertionError(code)


def _read_struct(r: _Reader, plan: _Plan) -> dict[str, Any]:
    out = dict(plan.defaults)
    for name in plan.fresh:
        out[name] = _materialize(out[name])
    for f in plan.fields:
        out[f.name] = _read_value(r, f)
    if plan.flexible:
        count = r.uvarint("tagged fields")
        last = -1
        for _ in range(count):
            tag = r.uvarint("tag")
            size = r.uvarint("tag size")
            if tag <= last:
                raise r.fail("tagged fields", f"tag {tag} after {last} (must ascend)")
            last = tag
            tf = plan.by_tag.get(tag)
            data = r.take(f"tag {tag}", size)
            if tf is not None:
                sub = _Reader(data, 0, r.what)
                out[tf.name] = _read_value(sub, tf)
                if sub.pos != size:
                    raise r.fail(tf.name, f"tagged field holds {size} bytes, {sub.pos} parsed")
    return out


def decode(api_key: int, response: bool, version: int, buf: Any, pos: int = 0,
           exact: bool = True) -> dict[str, Any]:
    """Decode a message body. With ``exact``, bytes left over are an error."""
    plan = _plan(api_key, response, version)
    mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    r = _Reader(mv, pos, f"{api_name(api_key)}{'Response' if response else 'Request'} v{version}")
    out = _read_struct(r, plan)
    if exact and r.pos != r.end:
        raise MalformedRequestError(f"{r.what}: {r.end - r.pos} bytes left over after the body")
    return out


class RequestHeader:
    __slots__ = ("api_key", "api_version", "body_offset", "client_id", "correlation_id")

    def __init__(self, api_key: int, api_version: int, correlation_id: int, client_id: str,
                 body_offset: int) -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        self.client_id = client_id
        self.body_offset = body_offset

    def __repr__(self) -> str:
        return (f"RequestHeader({api_name(self.api_key)} v{self.api_version}, "
                f"correlation_id={self.correlation_id}, client_id={self.client_id!r})")


def parse_request_header(buf: Any) -> RequestHeader:
    """Header v1 (v2 with tagged fields for flexible versions); the client id is always an
    int16-length string, even in v2 (kafka-protocol.md section 1). Raises
    MalformedRequestError; ``.api_key``/``.correlation_id`` are set on it when they were read."""
    mv = memoryview(buf)
    if len(mv) < 8:
        raise MalformedRequestError(f"request of {len(mv)} bytes is shorter than a header")
    api_key, version, corr = _HDR.unpack_from(mv, 0)
    r = _Reader(mv, 8, f"request header ({api_name(api_key)} v{version})")
    try:
        n = r.length("client_id", False, False)
        client_id = "" if n == -1 else str(r.take("client_id", n), "utf-8", "replace")
        if is_flexible(api_key, version) and not (api_key == API_VERSIONS
                                                  and version > _max(API_VERSIONS)):
            count = r.uvarint("header tagged fields")
            for _ in range(count):
                r.uvarint("tag")
                r.take("header tag", r.uvarint("tag size"))
    except MalformedRequestError as exc:
        exc.api_key, exc.correlation_id = api_key, corr
        raise
    return RequestHeader(api_key, version, corr, client_id, r.pos)


def _max(api_key: int) -> int:
    return MESSAGES[(api_key, False)][2]


# ==============================================================================================
# Encoding


class _Writer:
    __slots__ = ("buf", "parts", "size")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.parts: list[Any] = []
        self.size = 0  # bytes in parts

    def uvarint(self, n: int) -> None:
        buf = self.buf
        while n >= 0x80:
            buf.append((n & 0x7F) | 0x80)
            n >>= 7
        buf.append(n)

    def length(self, n: int, compact: bool, wide: bool) -> None:
        if compact:
            self.uvarint(n + 1)
        else:
            self.buf += (_I32 if wide else _I16).pack(n)

    def piece(self, obj: Any, n: int) -> None:
        """Append an out-of-line piece (a FileSlice, or large bytes) of n bytes."""
        if self.buf:
            self.parts.append(bytes(self.buf))
            self.size += len(self.buf)
            self.buf = bytearray()
        self.parts.append(obj)
        self.size += n

    def finish(self) -> list[Any]:
        if self.buf or not self.parts:
            self.parts.append(bytes(self.buf))
            self.size += len(self.buf)
            self.buf = bytearray()
        return self.parts

    def nbytes(self) -> int:
        return self.size + len(self.buf)


def _write_value(w: _Writer, f: _Field, v: Any) -> None:
    code = f.code
    if code <= _BOOL:
        assert f.st is not None
        try:
            w.buf += f.st.pack(v)
        except struct.error as exc:
            raise ValueError(f"field {f.name!r}: {v!r} does not fit: {exc}") from None
    elif code == _STRING:
        if v is None:
            if not f.nullable:
                raise ValueError(f"field {f.name!r} is not nullable")
            w.length(-1, f.compact, False)
        else:
            b = v.encode() if isinstance(v, str) else bytes(v)
            if len(b) > 0x7FFF:  # Kafka's readers refuse longer strings, compact ones too
                raise ValueError(f"field {f.name!r}: a string holds at most 32767 bytes, "
                                 f"not {len(b)}")
            w.length(len(b), f.compact, False)
            w.buf += b
    elif code == _BYTES or code == _RECORDS:
        if v is None:
            if not f.nullable and code != _RECORDS:
                raise ValueError(f"field {f.name!r} is not nullable")
            w.length(-1, f.compact, True)
        elif hasattr(v, "sendfile"):  # a FileSlice: kept out of line for sendfile
            n = len(v)
            w.length(n, f.compact, True)
            if n:
                w.piece(v, n)
        elif type(v) is bytes and len(v) >= _OUT_OF_LINE:
            w.length(len(v), f.compact, True)
            w.piece(v, len(v))
        else:
            mv = memoryview(v)
            w.length(mv.nbytes, f.compact, True)
            w.buf += mv
    elif code == _UUID:
        b = v.bytes if isinstance(v, uuid.UUID) else bytes(v)
        if len(b) != 16:
            raise ValueError(f"field {f.name!r}: a uuid has 16 bytes, not {len(b)}")
        w.buf += b
    elif code == _STRUCT:
        assert f.sub is not None
        if isinstance(v, _DefaultStruct):
            v = {}
        _write_struct(w, f.sub, v)
    elif code == _ARRAY:
        if v is None:
            if not f.nullable:
                raise ValueError(f"array {f.name!r} is not nullable")
            w.length(-1, f.compact, True)
            return
        w.length(len(v), f.compact, True)
        elem = f.elem
        assert elem is not None
        for item in v:
            _write_value(w, elem, item)
    else:
        raise AssertionError(code)


def _write_struct(w: _Writer, plan: _Plan, value: dict[str, Any]) -> None:
    get = value.get
    for f in plan.fields:
        _write_value(w, f, get(f.name, f.default))
    if plan.flexible:
        present = []
        for f in plan.tagged:
            v = get(f.name)
            if v is None or v == _materialize(f.default) or (f.code == _ARRAY and not v):
                continue
            present.append((f, v))
        w.uvarint(len(present))
        for f, v in present:
            sub = _Writer()
            _write_value(sub, f, v)
            data = sub.finish()
            if not all(type(p) is bytes for p in data):
                raise ValueError(f"field {f.name!r}: a tagged field cannot hold a FileSlice")
            w.uvarint(f.tag)
            w.uvarint(sub.size)
            for p in data:
                w.buf += p


def encode(api_key: int, response: bool, version: int, value: dict[str, Any]) -> list[Any]:
    """Encode a message body: a list of bytes and FileSlice pieces."""
    w = _Writer()
    _write_struct(w, _plan(api_key, response, version), value)
    return w.finish()


def encode_bytes(api_key: int, response: bool, version: int, value: dict[str, Any]) -> bytes:
    """Encode a body with no FileSlice pieces into bytes."""
    parts = encode(api_key, response, version, value)
    return b"".join(p if isinstance(p, bytes) else p.read() for p in parts)


def frame_response(api_key: int, version: int, correlation_id: int,
                   body: list[Any]) -> list[Any]:
    """Size prefix and response header (v1 with a tag byte for flexible versions, v0 always for
    ApiVersions, KIP-511) in front of an encoded body."""
    flexible = is_flexible(api_key, version) and api_key != API_VERSIONS
    size = sum(len(p) for p in body) + (5 if flexible else 4)
    head = _I32.pack(size) + _I32.pack(correlation_id) + (b"\x00" if flexible else b"")
    if body and isinstance(body[0], bytes):
        return [head + body[0], *body[1:]]
    return [head, *body]


def encode_request(api_key: int, version: int, correlation_id: int, body: dict[str, Any],
                   client_id: str | None = "kstore") -> bytes:
    """A whole request frame (for tests and tools)."""
    head = bytearray(_HDR.pack(api_key, version, correlation_id))
    if client_id is None:
        head += _I16.pack(-1)
    else:
        cid = client_id.encode()
        head += _I16.pack(len(cid)) + cid
    if is_flexible(api_key, version):
        head.append(0)
    payload = bytes(head) + encode_bytes(api_key, False, version, body)
    return _I32.pack(len(payload)) + payload
