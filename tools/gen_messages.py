"""Generate src/kstore/server/messages.py, kstore's table of the Kafka messages it serves.

    python tools/gen_messages.py [../shared/kafka-spec/message] > src/kstore/server/messages.py

Reads Apache Kafka's JSON message schemas (the authority on layouts) and writes, for each API
kstore implements, the fields of every version the schema defines (so that a request of a
version kstore does not serve can still be parsed and answered UNSUPPORTED_VERSION in its own
layout, as kafka-protocol.md asks), in kstore's own compact form (see kstore.server.protocol for
how it is read), and SERVED: the range kstore advertises. The ``about`` texts and every other
wire-irrelevant attribute are dropped. tests/server/
test_protocol.py regenerates the table from ../shared and compares it with the committed one.
"""

from __future__ import annotations

import json
import pprint
import re
import sys
from pathlib import Path

# API key -> (schema name, first and last advertised version; the table holds every version of
# the schema). kafka-protocol.md section 3.1
# gives the ranges: old versions stay in range because librdkafka <= 2.11 switches features off
# without them (Produce 0 for compression, FindCoordinator 0 for groups, ...).
APIS: dict[int, tuple[str, int, int]] = {
    0: ("Produce", 0, 11),
    1: ("Fetch", 0, 12),
    2: ("ListOffsets", 0, 10),
    3: ("Metadata", 0, 12),
    8: ("OffsetCommit", 0, 9),
    9: ("OffsetFetch", 0, 9),
    10: ("FindCoordinator", 0, 6),
    11: ("JoinGroup", 0, 9),
    12: ("Heartbeat", 0, 4),
    13: ("LeaveGroup", 0, 5),
    14: ("SyncGroup", 0, 5),
    15: ("DescribeGroups", 0, 5),
    16: ("ListGroups", 0, 5),
    17: ("SaslHandshake", 0, 1),
    18: ("ApiVersions", 0, 4),
    19: ("CreateTopics", 0, 7),
    20: ("DeleteTopics", 0, 6),
    21: ("DeleteRecords", 0, 2),
    22: ("InitProducerId", 0, 5),  # v5: the client knows TRANSACTION_ABORTABLE (never sent here)
    23: ("OffsetForLeaderEpoch", 0, 4),
    # Transactions. AddPartitionsToTxn v4+ is broker-to-broker (batched, verify-only); EndTxn
    # and the others v4+ are KIP-890's transaction version 2, which kstore does not speak.
    24: ("AddPartitionsToTxn", 0, 3),
    25: ("AddOffsetsToTxn", 0, 3),
    26: ("EndTxn", 0, 3),
    28: ("TxnOffsetCommit", 0, 3),
    32: ("DescribeConfigs", 0, 4),
    33: ("AlterConfigs", 0, 2),
    36: ("SaslAuthenticate", 0, 2),
    37: ("CreatePartitions", 0, 3),
    42: ("DeleteGroups", 0, 2),
    44: ("IncrementalAlterConfigs", 0, 1),
    60: ("DescribeCluster", 0, 1),
    65: ("DescribeTransactions", 0, 0),
    66: ("ListTransactions", 0, 1),
}

INF = 0x7FFF


def snake(name: str) -> str:
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def vrange(spec: str | None) -> tuple[int, int]:
    """"3+" -> (3, INF), "1-3" -> (1, 3), "5" -> (5, 5), "none"/None -> (1, 0): empty."""
    if spec is None or spec == "none":
        return (1, 0)
    if spec.endswith("+"):
        return (int(spec[:-1]), INF)
    if "-" in spec:
        a, b = spec.split("-")
        return (int(a), int(b))
    return (int(spec), int(spec))


def load(path: Path) -> dict:
    text = "\n".join(line for line in path.read_text().splitlines()
                     if not line.lstrip().startswith("//"))
    return json.loads(text)


def default_of(ftype: str, default: str | None) -> object:
    if ftype.startswith("[]"):
        return None if default == "null" else ()
    if default == "null":
        return None
    if ftype in ("int8", "int16", "int32", "int64", "uint16", "uint32"):
        if default is None or default == "":
            return 0
        return default if isinstance(default, int) else int(default, 0)
    if ftype == "float64":
        return float(default or 0)
    if ftype == "bool":
        return default if isinstance(default, bool) else (default or "false") == "true"
    if ftype == "string":
        return default or ""
    if ftype in ("bytes", "records"):
        return b""
    if ftype == "uuid":
        return bytes(16)
    return None  # a struct: its fields' own defaults


def fields_of(fields: list[dict], structs: dict[str, list[dict]], lo: int, hi: int) -> tuple:
    out = []
    for f in fields:
        vmin, vmax = vrange(f.get("versions"))
        vmin, vmax = max(vmin, lo), min(vmax, hi)
        if vmin > vmax:
            continue  # not in any version kstore speaks
        ftype = f["type"]
        children = f.get("fields")
        base = ftype.removeprefix("[]")
        if children is None and base in structs:
            children = structs[base]
        sub = fields_of(children, structs, lo, hi) if children is not None else None
        if ftype.startswith("[]"):
            kind = "[]" if sub is not None else ftype
        else:
            kind = "struct" if sub is not None else ftype
        nmin, nmax = vrange(f.get("nullableVersions"))
        tmin, tmax = vrange(f.get("taggedVersions"))
        tag = f.get("tag", -1) if tmin <= tmax else -1
        flex_none = f.get("flexibleVersions") == "none"
        out.append((snake(f["name"]), kind, vmin, vmax, nmin, nmax, tag, tmin, flex_none,
                    default_of(ftype, f.get("default")), sub))
    return tuple(out)


def generate(spec_dir: Path) -> str:
    lines = [
        '"""Kafka message layouts kstore serves: generated by tools/gen_messages.py from Apache',
        "Kafka's JSON schemas (Apache License 2.0): every version of each API kstore implements (the",
        "schema's validVersions); SERVED holds the versions advertised and served. Do not edit.",
        "",
        "MESSAGES[(api_key, is_response)] = (name, min_version, max_version, first_flexible, fields);",
        "each field is (name, type, min_version, max_version, nullable_min, nullable_max, tag,",
        "tagged_min, flexible_none, default, children). See kstore.server.protocol.",
        '"""',
        "",
        "# fmt: off",
        "MESSAGES = {",
    ]
    for key, (name, lo, hi) in sorted(APIS.items()):
        for is_resp, suffix in ((False, "Request"), (True, "Response")):
            data = load(spec_dir / f"{name}{suffix}.json")
            assert data.get("apiKey", key) == key, name
            vmin, vmax = vrange(data["validVersions"])
            assert vmin <= lo and hi <= vmax, (name, data["validVersions"])
            flex = vrange(data["flexibleVersions"])[0] if data["flexibleVersions"] != "none" else INF
            structs = {s["name"]: s["fields"] for s in data.get("commonStructs", [])}
            fields = fields_of(data["fields"], structs, vmin, vmax)
            lines.append(f"    ({key}, {is_resp}): ({name + suffix!r}, {vmin}, {vmax}, {flex},")
            body = pprint.pformat(fields, width=100, compact=True)
            lines.append("        " + body.replace("\n", "\n        ") + "),")
    lines.append("}")
    lines.append("")
    lines.append("# API key -> (min, max) version kstore advertises in ApiVersions and serves.")
    lines.append("SERVED = {")
    for key, (_, lo, hi) in sorted(APIS.items()):
        lines.append(f"    {key}: ({lo}, {hi}),")
    lines.append("}")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    spec = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/kafka-spec/message"
    sys.stdout.write(generate(spec))


if __name__ == "__main__":
    main()
