"""kstore command line: run the benchmark, and operate a data directory without writing Python.

    kstore bench                                   # the main job: 10 M events in and out, timed
    kstore topics create clicks --partitions 4 --config retention.ms=86400000
    seq 10 | kstore produce clicks
    kstore consume clicks --format '%p %o %k\\t%v\\n'
    kstore groups describe etl
    kstore verify
    kstore mirror ./kstore-data kafka://broker:9092       # copy to a Kafka cluster (resumable)

Every command takes ``--data DIR`` (default ``./kstore-data``, or ``$KSTORE_DATA``). Commands
that only read open the store read-only, so they work beside a running writer; commands that
write take the directory's lock and say so when another process holds it.

Exit codes: 0 success, 1 usage error (bad option, bad config key or value), 2 data error (unknown
topic or group, corruption, a locked or missing data directory, an unreachable cluster), 3
(verify) only index files are damaged and `kstore repair-indexes` rebuilds them, 130 (143)
produce or mirror stopped by Ctrl-C (SIGTERM): every record produce acknowledged is on disk, and
mirror's checkpoint holds what it copied (run it again to go on). Messages go to stderr.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import functools
import json
import mmap
import os
import re
import signal
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

import kstore
from kstore import errors as kerr
from kstore import records
from kstore.config import TOPIC_CONFIG, validate_config
from kstore.log import quarantine

DEFAULT_DATA = "./kstore-data"
EXIT_OK, EXIT_USAGE, EXIT_DATA, EXIT_REPAIRABLE = 0, 1, 2, 3
READ_ONLY_COMMANDS = ("consume (without --group), topics list/describe, groups list/describe, "
                      "dump-log and verify")


# ==============================================================================================
# Output and errors


def _out() -> Console:
    """Console for results (stdout). Not a terminal: wide, no colour, so pipes get whole rows."""
    tty = sys.stdout.isatty()
    return Console(highlight=False, width=None if tty else 200, no_color=not tty)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _progress(*columns: Any, enabled: bool = True) -> Progress:
    """A rich progress display on stderr; off when stderr is not a terminal (logs stay clean)."""
    console = _err()
    return Progress(*columns, console=console, disable=not (enabled and console.is_terminal),
                    transient=False)


def _note(msg: str) -> None:
    click.echo(msg, err=True)


class DataError(click.ClickException):
    """A kstore error about the data: exit code 2, the message says what to do."""

    exit_code = EXIT_DATA

    def show(self, file: Any = None) -> None:
        click.echo(f"kstore: error: {self.message}", err=True)


class UsageError(click.UsageError):
    exit_code = EXIT_USAGE


def _usage(msg: str, ctx: click.Context | None = None) -> UsageError:
    return UsageError(msg, ctx or click.get_current_context(silent=True))


class KGroup(click.Group):
    """click.Group that exits 1 (not click's 2) on usage errors and turns kstore errors into
    messages with exit code 2."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE  # type: ignore[misc]
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE  # type: ignore[misc]
            raise
        except (kerr.InvalidConfigError, kerr.InvalidTopicError, kerr.InvalidPartitionsError,
                kerr.InvalidGroupIdError) as exc:
            raise UsageError(str(exc), ctx) from None
        except kerr.LogLockedError as exc:
            raise DataError(_locked_message(re.split(" is (?:already )?open", str(exc))[0])) from None
        except kerr.UnknownTopicOrPartitionError as exc:
            raise DataError(f"{exc} (see `kstore topics list`)") from None
        except kerr.KStoreError as exc:
            raise DataError(str(exc)) from None


def _locked_message(what: str, exclusive: bool = False) -> str:
    if exclusive:
        return (f"{what} is open for writing by another process (a producer, a consumer with "
                f"--group, maintenance, `kstore serve`, or a program embedding kstore), and this "
                f"command needs it alone. Stop them and retry; read-only commands "
                f"({READ_ONLY_COMMANDS}) work beside them.")
    return (f"{what} is open for writing by another process that keeps it to itself (a program "
            f"that opened it with kstore.open(..., exclusive=True)). Stop it and retry; "
            f"read-only commands ({READ_ONLY_COMMANDS}) work beside it.")


# ==============================================================================================
# The data directory


def _data_option(f: Callable) -> Callable:
    return click.option(
        "--data", "data", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Data directory (default ./kstore-data, or $KSTORE_DATA).")(f)


def _data_dir(data: Path | None) -> Path:
    if data is not None:
        return data
    ctx = click.get_current_context()
    root = ctx.find_root()
    value = root.params.get("data") if root.params else None
    return Path(value or os.environ.get("KSTORE_DATA") or DEFAULT_DATA)


@contextlib.contextmanager
def _open_store(data: Path, *, write: bool, create: bool = False,
                exclusive: bool = False) -> Iterator[kstore.Store]:
    """Open the store: read-only unless ``write`` (then as a shared writer, beside other
    processes, unless ``exclusive``; a missing directory is an error unless ``create``)."""
    if not data.exists() and not create:
        raise DataError(f"no kstore data directory at {data}; pass --data DIR (or set "
                        f"KSTORE_DATA), or create one with `kstore topics create` or `kstore bench`")
    if data.exists() and not data.is_dir():
        raise DataError(f"{data} is a file, not a kstore data directory; pass --data DIR")
    try:
        store = kstore.open(data, read_only=not write, retention_check_interval_ms=0,
                            exclusive=exclusive and write)
    except kerr.LogLockedError:
        raise DataError(_locked_message(f"the data directory {data}", exclusive)) from None
    try:
        yield store
    finally:
        store.close()


def _need_topic(store: kstore.Store, topic: str) -> None:
    if topic not in store.topics(internal=True):
        raise DataError(f"topic {topic!r} does not exist in {store.path}; see `kstore topics list`"
                        f", or create it with `kstore topics create {topic}`")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _binary(stream: Any) -> Any:
    """The byte stream under a text stream (sys.stdin / sys.stdout)."""
    return getattr(stream, "buffer", stream)


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _parse_configs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value (for example retention.ms=86400000)",
                                     ctx, param)
        try:
            validate_config({key: value})
        except kerr.InvalidConfigError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        out[key] = value
    return out


# ==============================================================================================
# The command group


@click.group(cls=KGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), envvar="KSTORE_DATA",
              default=DEFAULT_DATA, show_default=True,
              help="Data directory (or $KSTORE_DATA); every command also takes --data.")
@click.version_option(kstore.__version__, prog_name="kstore")
def main(data: Path) -> None:
    """kstore: a Kafka-compatible log engine. Run `kstore bench` to see it work.

    Exit codes: 0 success, 1 usage error, 2 data error (unknown topic, corruption, a locked
    data directory), 130 produce stopped by Ctrl-C (143 by SIGTERM).
    """


# ==============================================================================================
# bench


_TEMPLATE = b'{"seq":0000000000,"user":"user-00000","event":"click","page":"/home/section/item-00000"}'
_SEQ_AT, _SEQ_LEN = 7, 10
_USER_AT = _TEMPLATE.index(b"user-") + 5
_ITEM_AT = _TEMPLATE.index(b"item-") + 5


def _bench_chunk(start: int, n: int, value_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Values (n, value_size) and keys (n, 10) as uint8 arrays: JSON-like events whose "seq"
    field is the record's number (checked on the way back), keys ``user-NNNNN``."""
    tmpl = np.frombuffer(_TEMPLATE.ljust(value_size, b" ")[:value_size], np.uint8)
    values = np.empty((n, value_size), np.uint8)
    values[:] = tmpl
    seq = np.arange(start, start + n, dtype=np.int64)
    user = seq % 10_000
    keys = np.empty((n, 10), np.uint8)
    keys[:, :5] = np.frombuffer(b"user-", np.uint8)
    x = seq.copy()
    for i in range(_SEQ_LEN):
        digit = (x % 10 + 48).astype(np.uint8)
        col = _SEQ_AT + _SEQ_LEN - 1 - i
        if col < value_size:
            values[:, col] = digit
        if i < 5 and _ITEM_AT + 4 - i < value_size:
            values[:, _ITEM_AT + 4 - i] = digit
        x //= 10
    for i in range(5):
        digit = (user % 10 + 48).astype(np.uint8)
        keys[:, 9 - i] = digit
        if _USER_AT + 4 - i < value_size:
            values[:, _USER_AT + 4 - i] = digit
        user //= 10
    return values, keys


def _seqs(pc: Any) -> np.ndarray:
    """The "seq" field of every value in a PartitionColumns."""
    data = np.frombuffer(pc.data, np.uint8)
    vp = pc.value_positions
    seq = np.zeros(len(vp), np.int64)
    for i in range(_SEQ_LEN):
        seq = seq * 10 + (data[vp + (_SEQ_AT + i)].astype(np.int64) - 48)
    return seq


@main.command()
@click.option("--records", "n", type=click.IntRange(1), default=10_000_000, show_default=True,
              help="Events to produce and consume.")
@click.option("--value-size", type=click.IntRange(1, 1_000_000), default=100, show_default=True,
              help="Bytes per value.")
@click.option("--partitions", type=click.IntRange(1, 10_000), default=4, show_default=True)
@click.option("--compression", type=click.Choice(list(records.CODECS)), default="none",
              show_default=True, help="Producer codec.")
@click.option("--topic", default="kstore-bench", show_default=True,
              help="Topic to use; an existing one of this name is deleted first.")
@click.option("--keep/--no-keep", default=True, show_default=True,
              help="Keep the topic afterwards (inspect it with `kstore topics describe`).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--compare", is_flag=True,
              help="Compare with the stores a user would pick instead (os.write, SQLite, LMDB, "
                   "Redis Streams, persist-queue, diskcache, kafka-python's codec) on one "
                   "workload; needs pip install 'kstore[bench]' (missing peers are skipped). "
                   "--records defaults to 1,000,000 here.")
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True,
              help="With --compare: runs per peer (the median and min-max are shown).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="With --compare: write a PNG plot to this file.")
@_data_option
def bench(n: int, value_size: int, partitions: int, compression: str, topic: str, keep: bool,
          as_json: bool, compare: bool, runs: int, plot_file: Path | None,
          data: Path | None) -> None:
    """The main job: produce N events (keys, values, P partitions), consume them back as
    records and as numpy columns, verify count, contents and CRCs, and time it all against a
    plain os.write of the same bytes on the same disk.

    With --compare: one workload (N records, 8-16 byte keys, --value-size values, timestamps)
    through kstore and its peers, write / read as objects / (kstore) read as columns, median
    of --runs runs, in a temporary folder of the current directory."""
    if compare:
        ctx = click.get_current_context()
        if ctx.get_parameter_source("n") is click.core.ParameterSource.DEFAULT:
            n = 1_000_000
        _bench_compare(n, value_size, runs, plot_file, as_json)
        return
    if plot_file is not None:
        raise _usage("--plot goes with --compare")
    wall0 = time.perf_counter()
    data = _data_dir(data)
    chunk = max(1, min(500_000, 50_000_000 // value_size))
    columns_progress = (SpinnerColumn(), TextColumn("{task.description:<26}"), BarColumn(),
                        MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn())
    results: dict[str, dict[str, float]] = {}
    with _open_store(data, write=True, create=True) as store:
        if topic in store.topics(internal=True):
            store.delete_topic(topic)
        store.create_topic(topic, partitions=partitions)
        producer = store.producer(linger_ms=0, compression=compression)
        with _progress(*columns_progress, enabled=not as_json) as progress:
            # The baseline (os.write of the same bytes, after the consume phases) and produce
            # must find the page cache in the same state: warm it once with a write of about
            # the log's size (untimed, deleted at once), and start each timed write with no
            # dirty pages waiting for writeback.
            estimate = n * (value_size + 12) + n // 100 * 61
            # (Small runs skip the syncs: a few MB do not wait for writeback, and a sync on a
            # busy machine can take longer than the whole run.)
            sync = os.sync if estimate > 64 << 20 else (lambda: None)
            task = progress.add_task("warm-up (page cache)", total=estimate)
            sync()
            _os_write_baseline(data, estimate, lambda k: progress.advance(task, k), runs=1)
            sync()
            # -- produce: send_many in chunks (the data is generated outside the timer)
            task = progress.add_task("produce (send_many)", total=n)
            t_produce = 0.0
            for start in range(0, n, chunk):
                values, keys = _bench_chunk(start, min(chunk, n - start), value_size)
                t0 = time.perf_counter()
                producer.send_many(topic, values, keys=keys)
                t_produce += time.perf_counter() - t0
                progress.advance(task, len(values))
            t0 = time.perf_counter()
            producer.flush()
            t_produce += time.perf_counter() - t0
            producer.close()
            del values, keys
            logs = [store.partition(topic, p) for p in range(partitions)]
            log_bytes = sum(lg.size_bytes for lg in logs)
            produced = sum(lg.log_end_offset - lg.log_start_offset for lg in logs)
            if produced != n:
                raise DataError(f"bench: {produced} records in the log after producing {n}")

            # -- consume as Record objects: every record decoded (CRC checked) and visited
            task = progress.add_task("consume (records)", total=n)
            consumer = store.consumer(topics=[topic], auto_offset_reset="earliest",
                                      max_poll_records=10_000)
            seen = value_bytes = 0
            t0 = time.perf_counter()
            while True:
                recs = consumer.poll(timeout=0, max_records=10_000)
                if not recs:
                    if all(consumer.position(topic, p) >= logs[p].log_end_offset
                           for p in range(partitions)):
                        break
                    continue
                for r in recs:
                    value_bytes += len(r.value)
                seen += len(recs)
                if seen % 500_000 < 10_000:
                    progress.update(task, completed=seen)
            t_records = time.perf_counter() - t0
            progress.update(task, completed=seen)
            consumer.close()
            del recs
            if seen != n or value_bytes != n * value_size:
                raise DataError(f"bench: consumed {seen} records / {value_bytes} value bytes, "
                                f"expected {n} / {n * value_size}")

            # -- consume as numpy columns; then check every seq came back exactly once
            task = progress.add_task("consume (columnar)", total=n)
            consumer = store.consumer(topics=[topic], auto_offset_reset="earliest")
            check_seq = value_size >= _SEQ_AT + _SEQ_LEN
            got = np.zeros(n, bool) if check_seq else None
            n_cols = 0
            bad_seq = False
            t_columns = 0.0
            while True:
                t0 = time.perf_counter()
                batches = consumer.poll_batches(timeout=0, max_records=1_000_000)
                t_columns += time.perf_counter() - t0
                if not batches:
                    if all(consumer.position(topic, p) >= logs[p].log_end_offset
                           for p in range(partitions)):
                        break
                    continue
                for pc in batches:
                    n_cols += len(pc)
                    if got is not None:
                        s = _seqs(pc)
                        if len(s) and (s.min() < 0 or s.max() >= n):
                            bad_seq = True
                        else:
                            got[s] = True
                    if not (pc.value_lengths == value_size).all():
                        bad_seq = True
                progress.update(task, completed=n_cols)
                del batches, pc
            consumer.close()
            exactly_once = bool(got.all()) and n_cols == n and not bad_seq if got is not None else None
            if n_cols != n or bad_seq or exactly_once is False:
                raise DataError(f"bench: columnar read gave {n_cols} records (expected {n}); "
                                f"{'some values are not what was produced' if bad_seq else ''}"
                                f"{'some records missing or repeated' if exactly_once is False else ''}")

            # -- verify every batch CRC and every index entry on disk
            task = progress.add_task("verify (CRC + indexes)", total=partitions)
            t0 = time.perf_counter()
            problems: list[str] = []
            for lg in logs:
                problems += lg.verify()
                progress.advance(task)
            t_verify = time.perf_counter() - t0
            if problems:
                raise DataError("bench: verification failed:\n  " + "\n  ".join(problems))

            # -- baseline: the same number of bytes through os.write, best of two runs
            store.flush()  # fsync the log (untimed): it is on disk when bench returns
            sync()
            task = progress.add_task("plain os.write baseline", total=2 * log_bytes)
            t_raw = _os_write_baseline(data, log_bytes, lambda k: progress.advance(task, k))
        if not keep:
            store.delete_topic(topic)

    wall = time.perf_counter() - wall0
    phases = [
        ("produce", "produce (send_many)", t_produce),
        ("consume_records", "consume (Record objects)", t_records),
        ("consume_columnar", "consume (numpy columns)", t_columns),
        ("verify", "verify (CRC-32C + indexes)", t_verify),
        ("os_write", "plain os.write, same bytes", t_raw),
    ]
    raw_mbs = log_bytes / t_raw / 1e6 if t_raw else float("inf")
    for key, _, secs in phases:
        secs = max(secs, 1e-9)
        mbs = log_bytes / secs / 1e6
        results[key] = {"seconds": round(secs, 4), "records_per_s": round(n / secs),
                        "mb_per_s": round(mbs, 1), "ratio_to_os_write": round(mbs / raw_mbs, 3)}
    summary = {
        "records": n, "value_size": value_size, "partitions": partitions,
        "compression": compression, "data": str(data), "topic": topic, "log_bytes": log_bytes,
        "payload_bytes": n * (value_size + 10),
        "verified": {"count": True, "crc": True, "indexes": True, "exactly_once": exactly_once},
        "phases": results, "wall_seconds": round(wall, 2), "kept": keep,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    out = _out()
    table = Table(title=f"kstore bench: {n:,} events, {value_size}-byte values + 10-byte keys, "
                        f"{partitions} partitions, compression {compression}")
    table.add_column("phase")
    table.add_column("records/s", justify="right")
    table.add_column("MB/s", justify="right")
    table.add_column("vs os.write", justify="right")
    table.add_column("seconds", justify="right")
    for key, label, _ in phases:
        r = results[key]
        table.add_row(label, f"{r['records_per_s']:,}", f"{r['mb_per_s']:,.0f}",
                      f"{r['ratio_to_os_write']:.2f}x", f"{r['seconds']:.2f}")
    out.print(table)
    checks = "count, CRC-32C of every batch, index entries"
    if exactly_once:
        checks += ", every event exactly once"
    where = f"{data}/{topic}-0..{partitions - 1}"
    out.print("\n".join([
        f"log: {_human(log_bytes)} of Kafka-format segments in {where}"
        + (f" (kept: `kstore topics describe {topic}`)" if keep else " (deleted)"),
        f"produce: send_many of numpy arrays, {chunk:,} records a call, keyed (murmur2)",
        "consume (Record objects): every record decoded (CRC checked) and its value read",
        "consume (numpy columns): poll_batches, no Python object per record",
        ("os.write: 1 MiB calls to a new file on the same disk, best of 2; no fsync inside any "
         "timing (page cache, as Kafka by default); the log is fsynced at the end"),
        f"verified: {checks}. Wall time {wall:.1f} s.",
    ]))


def _bench_compare(n: int, value_size: int, runs: int, plot_file: Path | None,
                   as_json: bool) -> None:
    from kstore import peers

    def say(msg: str) -> None:
        if as_json or msg.startswith("skipped"):
            _note(msg)
        else:
            _err().print(msg, markup=False, highlight=False)

    report = peers.run(n, runs, value_size, root=Path.cwd(), log=say)
    if plot_file is not None:
        try:
            peers.plot(report, plot_file)
        except ImportError:
            _note(f"plot skipped: matplotlib is not installed ({peers.INSTALL_HINT})")
        else:
            say(f"plot written to {plot_file}")
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _out().print(peers.table(report))
    for name, why in report.skipped:
        _out().print(f"skipped {name}: {why}", markup=False, highlight=False)


def _os_write_baseline(data: Path, size: int, advance: Callable[[int], None],
                       runs: int = 2) -> float:
    """Seconds to write ``size`` bytes with os.write in 1 MiB calls to a new file beside the
    log (no fsync), best of ``runs``."""
    path = data / ".bench-os-write.tmp"
    block = os.urandom(1 << 20)
    best = float("inf")
    for _ in range(runs):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            t0 = time.perf_counter()
            left = size
            while left >= len(block):
                left -= os.write(fd, block)
            if left:
                os.write(fd, block[:left])
            best = min(best, time.perf_counter() - t0)
            advance(size)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
    return best


# ==============================================================================================
# topics


@main.group(cls=KGroup)
def topics() -> None:
    """List, create, describe, delete and alter topics (Kafka's config names)."""


@topics.command("list")
@click.option("--internal", is_flag=True, help="Include __consumer_offsets.")
@click.option("--json", "as_json", is_flag=True)
@_data_option
def topics_list(internal: bool, as_json: bool, data: Path | None) -> None:
    """Topics with their partitions, records and size."""
    data = _data_dir(data)
    with _open_store(data, write=False) as store:
        rows = []
        for name in store.topics(internal=internal):
            d = store.describe_topic(name)
            parts = d["partition_info"]
            rows.append({"topic": name, "partitions": d["partitions"],
                         "records": sum(p["log_end_offset"] - p["log_start_offset"] for p in parts),
                         "size_bytes": sum(p["size_bytes"] for p in parts),
                         "config": d["config"]})
    if as_json:
        _print_json(rows)
        return
    if not rows:
        _note(f"no topics in {data}; create one with `kstore topics create NAME`")
        return
    table = Table()
    for col, just in (("topic", "left"), ("partitions", "right"), ("records", "right"),
                      ("size", "right"), ("config", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["topic"], str(r["partitions"]), f"{r['records']:,}", _human(r["size_bytes"]),
                      ", ".join(f"{k}={v}" for k, v in sorted(r["config"].items())))
    _out().print(table)


@topics.command("create")
@click.argument("topic")
@click.option("--partitions", "-p", type=click.IntRange(1), default=1, show_default=True)
@click.option("--config", "-c", "config", multiple=True, callback=_parse_configs,
              metavar="KEY=VALUE", help="Topic config with Kafka's names, e.g. retention.ms=86400000 "
              "(repeatable).")
@click.option("--if-not-exists", is_flag=True, help="Succeed if the topic exists already.")
@_data_option
def topics_create(topic: str, partitions: int, config: dict[str, str], if_not_exists: bool,
                  data: Path | None) -> None:
    """Create TOPIC."""
    from kstore.topic import refuse_internal

    refuse_internal(topic, "create")  # before "exists already", which would suggest altering it
    with _open_store(_data_dir(data), write=True, create=True) as store:
        if topic in store.topics(internal=True):
            if if_not_exists:
                _note(f"topic {topic!r} exists already")
                return
            raise DataError(f"topic {topic!r} already exists; change it with `kstore topics alter "
                            f"{topic}` or delete it with `kstore topics delete {topic}`")
        store.create_topic(topic, partitions=partitions, config=config)
    _note(f"created topic {topic!r} with {partitions} partition{'s' * (partitions != 1)}")


@topics.command("describe")
@click.argument("topic")
@click.option("--all-config", is_flag=True, help="Show every config value, defaults included.")
@click.option("--json", "as_json", is_flag=True)
@_data_option
def topics_describe(topic: str, all_config: bool, as_json: bool, data: Path | None) -> None:
    """Partitions (log start and end offsets, size, segments) and config of TOPIC."""
    with _open_store(_data_dir(data), write=False) as store:
        _need_topic(store, topic)
        d = store.describe_topic(topic)
        full = store.topic_config(topic)
    if as_json:
        d["resolved_config"] = full
        _print_json(d)
        return
    out = _out()
    out.print(f"Topic: {d['name']}  TopicId: {d['topic_id']}  PartitionCount: {d['partitions']}")
    shown = full if all_config else d["config"]
    if shown:
        out.print("Configs: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    table = Table()
    for col in ("partition", "log start", "log end", "records", "size", "segments"):
        table.add_column(col, justify="right")
    for p in d["partition_info"]:
        table.add_row(str(p["partition"]), str(p["log_start_offset"]), str(p["log_end_offset"]),
                      f"{p['log_end_offset'] - p['log_start_offset']:,}", _human(p["size_bytes"]),
                      str(p["segments"]))
    out.print(table)


@topics.command("delete")
@click.argument("topic")
@click.option("--if-exists", is_flag=True, help="Succeed if the topic does not exist.")
@_data_option
def topics_delete(topic: str, if_exists: bool, data: Path | None) -> None:
    """Delete TOPIC and its data."""
    data = _data_dir(data)
    if if_exists and not data.exists():
        return
    with _open_store(data, write=True) as store:
        if topic not in store.topics(internal=True):
            if if_exists:
                return
            _need_topic(store, topic)
        if topic.startswith("__"):
            raise _usage(f"{topic} is an internal topic; it cannot be deleted")
        store.delete_topic(topic)
    _note(f"deleted topic {topic!r}")


@topics.command("alter")
@click.argument("topic")
@click.option("--config", "-c", "config", multiple=True, callback=_parse_configs,
              metavar="KEY=VALUE", help="Set a config key (repeatable).")
@click.option("--delete-config", multiple=True, metavar="KEY",
              help="Return a config key to its default (repeatable).")
@click.option("--partitions", type=click.IntRange(1), default=None,
              help="Grow the topic to this many partitions.")
@_data_option
def topics_alter(topic: str, config: dict[str, str], delete_config: tuple[str, ...],
                 partitions: int | None, data: Path | None) -> None:
    """Change TOPIC's config, or grow its partitions."""
    for key in delete_config:
        if key not in TOPIC_CONFIG:
            raise _usage(f"unknown config key {key!r}; known keys: {', '.join(sorted(TOPIC_CONFIG))}")
    if not config and not delete_config and partitions is None:
        raise _usage("nothing to change: give --config KEY=VALUE, --delete-config KEY or --partitions N")
    with _open_store(_data_dir(data), write=True) as store:
        _need_topic(store, topic)
        if partitions is not None and partitions != store.partitions_for(topic):
            if partitions < store.partitions_for(topic):
                raise _usage(f"topic {topic!r} has {store.partitions_for(topic)} partitions; "
                             f"partitions only grow, so the count must be larger than that")
            store.create_partitions(topic, partitions)
            _note(f"topic {topic!r} now has {partitions} partitions")
        changes: dict[str, Any] = dict(config)
        changes.update({k: None for k in delete_config})
        if changes:
            store.alter_topic_config(topic, changes)
            _note(f"updated config of {topic!r}: " + ", ".join(
                f"{k}={'(default)' if v is None else v}" for k, v in changes.items()))


# ==============================================================================================
# produce


class _Interrupts:
    """SIGINT (Ctrl-C) and SIGTERM as KeyboardInterrupt, remembering which came. With
    ``critical`` set (produce, during a send) the interrupt waits until the send has returned,
    so the count of records written is exact; otherwise it is raised at once, even inside a
    blocking read."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.critical = False
        self.pending = False
        self.signum: int = int(signal.SIGINT)
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self.critical:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> _Interrupts:  # noqa: PYI034
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave the defaults
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.pending:
            raise KeyboardInterrupt


def _unescape(s: str) -> str:
    return (s.replace("\\\\", "\0bs\0").replace("\\n", "\n").replace("\\t", "\t")
            .replace("\\r", "\r").replace("\\0", "\0").replace("\0bs\0", "\\"))


@main.command()
@click.argument("topic")
@click.option("--file", "-f", "file", type=click.Path(dir_okay=False, allow_dash=True),
              default="-", help="Read records from this file (default: stdin).")
@click.option("--key-separator", "-K", default=None, metavar="SEP",
              help="Split each line at the first SEP into key and value (no SEP: no key).")
@click.option("--null-delimited", "-0", is_flag=True, help="Records end with NUL bytes, not newlines.")
@click.option("--delimiter", "-D", default=None, metavar="DELIM",
              help="Record delimiter (escapes like \\n, \\t work; default newline).")
@click.option("--partition", "-p", type=click.IntRange(0), default=None,
              help="Write every record to this partition (default: by key, or sticky).")
@click.option("--compression", "-z", type=click.Choice(list(records.CODECS)), default="none",
              show_default=True)
@click.option("--skip-empty", is_flag=True, help="Skip empty records (blank lines).")
@_data_option
def produce(topic: str, file: str, key_separator: str | None, null_delimited: bool,
            delimiter: str | None, partition: int | None, compression: str, skip_empty: bool,
            data: Path | None) -> None:
    """Append lines from stdin (or --file) to TOPIC, one record per line.

    Records are written as they are read, so `tail -f log | kstore produce logs` streams.
    Ctrl-C (or SIGTERM) stops reading; every record written so far stays on disk (flushed) and
    the count is printed. Exit code 130 after Ctrl-C, 143 after SIGTERM.
    """
    if null_delimited and delimiter is not None:
        raise _usage("--null-delimited and --delimiter are mutually exclusive")
    delim = b"\0" if null_delimited else (_unescape(delimiter).encode() if delimiter else b"\n")
    if not delim:
        raise _usage("--delimiter must not be empty")
    sep = _unescape(key_separator).encode() if key_separator else None
    data = _data_dir(data)
    if file == "-":
        stream = _binary(sys.stdin)
        own = False
    else:
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise _usage(f"cannot read {file}: {exc.strerror}") from None
        own = True
    count = [0]  # records written: kept current by _send, call by call
    nbytes = 0
    try:
        total, interactive = _input_size(stream)
        with _open_store(data, write=True) as store:
            _need_topic(store, topic)
            if partition is not None and partition >= store.partitions_for(topic):
                raise DataError(f"partition {partition} does not exist: topic {topic!r} has "
                                f"{store.partitions_for(topic)}")
            producer = store.producer(linger_ms=0, compression=compression)
            max_bytes = max(store.topic_config(topic)["segment.bytes"] // 2, 1)
            cols = [SpinnerColumn(), TextColumn(f"producing to {topic}")]
            if total is not None:
                cols += [BarColumn(), DownloadColumn(), TimeRemainingColumn()]
            cols += [TextColumn("{task.fields[records]:,} records"), TimeElapsedColumn()]
            interrupts = _Interrupts()
            with interrupts:
                try:
                    with _progress(*cols, enabled=not interactive) as progress:
                        task = progress.add_task("produce", total=total, records=0)
                        rest = b""
                        for chunk in _chunks(stream):
                            with interrupts.hold():
                                nbytes += len(chunk)
                                parts = (rest + chunk).split(delim)
                                rest = parts.pop()
                                _send(producer, topic, parts, sep, partition, skip_empty,
                                      max_bytes, count)
                                progress.update(task, completed=nbytes, records=count[0])
                        with interrupts.hold():
                            if rest:
                                _send(producer, topic, [rest], sep, partition, skip_empty,
                                      max_bytes, count)
                            producer.flush()
                            store.flush()
                            progress.update(task, completed=nbytes, records=count[0])
                except KeyboardInterrupt:
                    interrupts.critical = True  # a second Ctrl-C must not cut the flush short
                    producer.flush()
                    store.flush()
                    store.close()
                    _note(f"interrupted: {count[0]:,} records were written to {topic!r} and are "
                          f"on disk (flushed); input after them was not written")
                    sys.exit(interrupts.exit_code)
                except kerr.KStoreError as exc:
                    with contextlib.suppress(Exception):
                        producer.flush()
                        store.flush()
                    raise DataError(f"{exc}. The {count[0]:,} records written before the error are "
                                    f"on disk") from None
    finally:
        if own:
            stream.close()
    _note(f"wrote {count[0]:,} records ({_human(nbytes)}) to {topic!r}")


def _input_size(stream: Any) -> tuple[int | None, bool]:
    """(size in bytes if the input is a regular file, whether it is a terminal)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None, False
    try:
        st = os.fstat(fd)
    except OSError:
        return None, False
    if stat.S_ISREG(st.st_mode):
        return max(st.st_size - stream.tell(), 0), False
    return None, os.isatty(fd)


def _chunks(stream: Any) -> Iterator[bytes]:
    """Whatever the input has ready, up to 4 MiB at a time: from a pipe, as soon as it arrives
    (read1 makes at most one read call), so streamed input is written as it comes."""
    read = stream.read1 if hasattr(stream, "read1") else stream.read
    while True:
        chunk = read(1 << 22)
        if not chunk:
            return
        yield chunk


def _send(producer: Any, topic: str, lines: list[bytes], sep: bytes | None,
          partition: int | None, skip_empty: bool, max_bytes: int, count: list[int]) -> None:
    """send_many the lines (split into key and value at ``sep``), adding to ``count[0]`` after
    each call. At most about ``max_bytes`` of records go in one call: the producer appends a
    call's records for a partition in one piece, which may not exceed the topic's
    segment.bytes."""
    if skip_empty:
        lines = [x for x in lines if x]
    start = 0
    while start < len(lines):
        end, size = start, 0
        while end < len(lines) and (end == start or size + len(lines[end]) + 80 <= max_bytes):
            size += len(lines[end]) + 80
            end += 1
        group = lines[start:end] if start or end < len(lines) else lines
        start = end
        if sep is None:
            count[0] += producer.send_many(topic, group, partition=partition)
            continue
        keys: list[bytes | None] = []
        values: list[bytes] = []
        for line in group:
            k, s, v = line.partition(sep)
            if s:
                keys.append(k)
                values.append(v)
            else:
                keys.append(None)
                values.append(line)
        count[0] += producer.send_many(topic, values, keys=keys, partition=partition)


# ==============================================================================================
# consume


def _compile_format(fmt: str) -> Callable[[Any], bytes]:
    """kcat's -f: %t topic, %p partition, %o offset, %k key, %s value (kcat's token; %v is the
    same), %T timestamp, %K key length, %S value length, %h headers, %% a percent sign;
    \\n \\t \\r \\0 \\\\ escapes."""
    fmt = _unescape(fmt)
    parts: list[Any] = []
    lit = []
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            t = fmt[i + 1]
            i += 2
            if t == "%":
                lit.append("%")
                continue
            if t not in "tpoksvTKSh":
                raise _usage(f"--format: unknown token %{t}; use %t %p %o %k %s (or %v) %T %K %S "
                             f"%h or %%")
            if lit:
                parts.append("".join(lit).encode())
                lit = []
            parts.append(t)
            continue
        lit.append(c)
        i += 1
    if lit:
        parts.append("".join(lit).encode())

    def field(t: str, r: Any) -> bytes:
        if t in "sv":
            return r.value or b""
        if t == "k":
            return r.key or b""
        if t == "o":
            return b"%d" % r.offset
        if t == "p":
            return b"%d" % r.partition
        if t == "t":
            return (r.topic or "").encode()
        if t == "T":
            return b"%d" % r.timestamp
        if t == "K":
            return b"%d" % (-1 if r.key is None else len(r.key))
        if t == "S":
            return b"%d" % (-1 if r.value is None else len(r.value))
        return b",".join(k.encode() + b"=" + (v or b"") for k, v in r.headers)

    def render(r: Any) -> bytes:
        return b"".join(p if isinstance(p, bytes) else field(p, r) for p in parts)

    return render


def _text(b: bytes | None) -> tuple[str | None, bool]:
    if b is None:
        return None, False
    try:
        return b.decode(), False
    except UnicodeDecodeError:
        return base64.b64encode(b).decode(), True


def _json_record(r: Any) -> bytes:
    key, kb64 = _text(r.key)
    value, vb64 = _text(r.value)
    obj: dict[str, Any] = {"topic": r.topic, "partition": r.partition, "offset": r.offset,
                           "timestamp": r.timestamp, "key": key, "value": value}
    if r.headers:
        obj["headers"] = {k: _text(v)[0] for k, v in r.headers}
    if kb64:
        obj["key_encoding"] = "base64"
    if vb64:
        obj["value_encoding"] = "base64"
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _kcat_json_record(r: Any) -> bytes:
    """kcat -J's envelope: topic, partition, offset, tstype, ts, broker (-1: no broker here),
    headers as [name, value, ...] when there are any, key, payload. Bytes that are not UTF-8
    are given in base64, with key_encoding / payload_encoding saying so."""
    key, kb64 = _text(r.key)
    value, vb64 = _text(r.value)
    obj: dict[str, Any] = {"topic": r.topic, "partition": r.partition, "offset": r.offset,
                           "tstype": "logappend" if r.timestamp_type else "create",
                           "ts": r.timestamp, "broker": -1}
    if r.headers:
        obj["headers"] = [x for k, v in r.headers for x in (k, _text(v)[0])]
    obj["key"] = key
    obj["payload"] = value
    if kb64:
        obj["key_encoding"] = "base64"
    if vb64:
        obj["payload_encoding"] = "base64"
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _parse_timestamp(value: str) -> int:
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise _usage(f"--timestamp {value!r}: give milliseconds since the epoch or an ISO-8601 "
                     f"time such as 2024-05-01T12:00:00") from None
    if t.tzinfo is None:
        t = t.astimezone()
    return int(t.timestamp() * 1000)


@main.command()
@click.argument("topic")
@click.option("--group", "-G", default=None, help="Consume as this group: start at its committed "
              "offsets and commit what was printed (needs the write lock).")
@click.option("--from-beginning", is_flag=True, help="Start at the log start (the default "
              "without --group).")
@click.option("--offset", "-o", default=None, metavar="N|-N|beginning|end|stored|s@TS",
              help="Start offset per partition: N, N from the end (-N), beginning, end, the "
              "group's stored offset, or s@TS: the first record at or after TS ms (as kcat).")
@click.option("--timestamp", default=None, metavar="MS|ISO",
              help="Start at the first record at or after this time (ms or ISO-8601).")
@click.option("--partition", "-p", type=click.IntRange(0), default=None, help="Only this partition.")
@click.option("--max", "-c", "max_records", type=click.IntRange(1), default=None,
              help="Exit after this many records.")
@click.option("--follow", "-F", is_flag=True, help="Wait for new records at the end (Ctrl-C stops).")
@click.option("--isolation-level", type=click.Choice(["read_uncommitted", "read_committed"]),
              default="read_uncommitted", show_default=True,
              help="read_committed: only records of committed transactions (and plain ones), up "
              "to the last stable offset; aborted ones are skipped. Markers are never printed.")
@click.option("--exit-at-end", "-e", is_flag=True, help="Exit at the end of the log (kcat's -e; "
              "the default without --follow).")
@click.option("--format", "-f", "fmt", default=None, metavar="FMT",
              help="kcat-style format: %t %p %o %k %s %T %K %S %h (default '%s\\n'; %v is %s).")
@click.option("--key-delimiter", "-K", default=None, metavar="DELIM",
              help="Print each key, DELIM, then the value (kcat's -K).")
@click.option("--delimiter", "-D", default=None, metavar="DELIM",
              help="End each record with DELIM instead of a newline (kcat's -D).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.option("--kcat-json", "-J", "kcat_json", is_flag=True,
              help="One JSON object per record in kcat -J's envelope (topic, partition, offset, "
              "tstype, ts, broker, headers, key, payload).")
@_data_option
def consume(topic: str, group: str | None, from_beginning: bool, offset: str | None,
            timestamp: str | None, partition: int | None, max_records: int | None,
            follow: bool, isolation_level: str, exit_at_end: bool, fmt: str | None,
            key_delimiter: str | None, delimiter: str | None, as_json: bool, kcat_json: bool,
            data: Path | None) -> None:
    """Print TOPIC's records, each value followed by a newline (as kcat does).

    Without --follow it exits at the end of the log. Without --group the store is opened
    read-only (works beside a running writer) and reading starts at the beginning.
    """
    if offset is not None and offset.strip().lower().startswith("s@"):
        if timestamp is not None:
            raise _usage("--offset s@TS and --timestamp are mutually exclusive: give one start")
        timestamp, offset = offset.strip()[2:], None
        if not timestamp.lstrip("-").isdigit():
            raise _usage(f"-o s@{timestamp}: give the timestamp in milliseconds, as kcat does")
    elif offset is not None and offset.strip().lower().startswith("e@"):
        raise _usage("-o e@TS (stop at a timestamp) is not supported; use --max N, or "
                     "--timestamp/-o s@TS to choose where to start")
    starts = [x for x in (from_beginning and "--from-beginning", offset is not None and "--offset",
                          timestamp is not None and "--timestamp") if x]
    if len(starts) > 1:
        raise _usage(f"{' and '.join(starts)} are mutually exclusive: give one start position")
    if follow and exit_at_end:
        raise _usage("--follow and --exit-at-end (-e) are mutually exclusive")
    styles = [x for x in (fmt is not None and "--format", as_json and "--json",
                          kcat_json and "-J", key_delimiter is not None and "-K") if x]
    if len(styles) > 1:
        raise _usage(f"{' and '.join(styles)} are mutually exclusive: give one output format")
    if delimiter is not None and (as_json or kcat_json):
        raise _usage("-D sets the record delimiter of plain output; JSON ends each record with a "
                     "newline")
    if fmt is None and not as_json and not kcat_json:
        end = "\\n" if delimiter is None else delimiter.replace("%", "%%")
        if key_delimiter is not None:
            fmt = "%k" + key_delimiter.replace("%", "%%") + "%s" + end
        elif delimiter is not None:
            fmt = "%s" + end
    start: tuple[str, int] = ("stored" if group else "beginning", 0)
    if from_beginning:
        start = ("beginning", 0)
    elif timestamp is not None:
        start = ("time", _parse_timestamp(timestamp))
    elif offset is not None:
        o = offset.strip().lower()
        if o in ("beginning", "end", "stored"):
            if o == "stored" and not group:
                raise _usage("--offset stored needs --group")
            start = (o, 0)
        else:
            try:
                start = ("absolute", int(o)) if not o.startswith("-") else ("relative", -int(o))
            except ValueError:
                raise _usage(f"--offset {offset!r}: give N, -N, beginning, end or stored") from None
    render = (_json_record if as_json else _kcat_json_record if kcat_json else
              _compile_format(fmt) if fmt is not None else None)
    out = _binary(sys.stdout)
    with _open_store(_data_dir(data), write=group is not None) as store:
        _need_topic(store, topic)
        nparts = store.partitions_for(topic)
        if partition is not None and partition >= nparts:
            raise DataError(f"partition {partition} does not exist: topic {topic!r} has {nparts} "
                            f"(0..{nparts - 1})")
        parts = [(topic, partition)] if partition is not None else [(topic, p) for p in range(nparts)]
        consumer = store.consumer(group=group, auto_offset_reset="earliest",
                                  enable_auto_commit=False, isolation_level=isolation_level)
        consumer.assign(parts)
        committed_only = isolation_level == "read_committed"

        def end_of(t: str, p: int) -> int:
            """Where reading ends without --follow: a read_committed reader stops at the last
            stable offset (an open transaction's records are not readable yet)."""
            lg = store.partition(t, p)
            return lg.last_stable_offset() if committed_only else lg.log_end_offset
        for t, p in parts:
            lg = store.partition(t, p)
            lso, leo = lg.log_start_offset, lg.log_end_offset
            kind, n = start
            if kind == "stored":
                c = store.committed(group, t, p)  # type: ignore[arg-type]
                pos = lso if c is None else c
            elif kind == "beginning":
                pos = lso
            elif kind == "end":
                pos = leo
            elif kind == "absolute":
                pos = n
            elif kind == "relative":
                pos = leo - n
            else:
                found = lg.offset_for_time(n)
                pos = leo if found is None else found
            consumer.seek(t, p, max(lso, min(pos, leo)))
        printed = 0
        done: dict[tuple[str, int], int] = {}
        last_commit = time.monotonic()

        def commit() -> None:
            if group is not None and done:
                store.commit_offsets(group, {tp: (o, "", 0) for tp, o in done.items()
                                             if o != store.committed(group, *tp)})

        try:
            with _Interrupts():  # Ctrl-C or SIGTERM: stop, commit what was printed
                while max_records is None or printed < max_records:
                    want = 10_000 if max_records is None else min(10_000, max_records - printed)
                    recs = consumer.poll(timeout=0.2 if follow else 0, max_records=want)
                    if not recs:
                        if not follow and all(consumer.position(t, p) >= end_of(t, p)
                                              for t, p in parts):
                            break
                        if group is not None and time.monotonic() - last_commit > 1:
                            commit()
                            last_commit = time.monotonic()
                        continue
                    if render is None:
                        buf = b"\n".join(r.value or b"" for r in recs) + b"\n"
                    else:
                        buf = b"".join(render(r) for r in recs)
                    try:
                        out.write(buf)
                        out.flush()
                    except BrokenPipeError:
                        _silence_stdout()
                        break
                    printed += len(recs)
                    for r in recs:
                        done[(r.topic, r.partition)] = r.offset + 1
                    if group is not None and time.monotonic() - last_commit > 1:
                        commit()
                        last_commit = time.monotonic()
        except KeyboardInterrupt:
            pass
        except kerr.CorruptRecordError as exc:
            skip = (f"`kstore consume {topic} --partition {exc.partition} --offset "
                    f"{exc.last_offset + 1}` reads on past it"
                    if exc.last_offset is not None and exc.partition is not None else
                    "--offset N starts past it")
            raise DataError(f"corrupt data in topic {topic!r} after {printed:,} records: {exc}. "
                            f"{skip}; `kstore verify` lists every damaged batch (file and "
                            f"byte)") from None
        finally:
            consumer.close()
            commit()


def _quiet_pipe(f: Callable) -> Callable:
    """A command whose output may go to `head`: a closed pipe ends it quietly."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except BrokenPipeError:
            _silence_stdout()
            return None

    return wrapper


def _silence_stdout() -> None:
    """After a closed pipe (`kstore consume t | head`): drop further output quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# ==============================================================================================
# groups


@main.group(cls=KGroup)
def groups() -> None:
    """Consumer groups: committed offsets and lag; reset offsets."""


def _group_rows(store: kstore.Store, group: str) -> list[dict[str, Any]]:
    return store.describe_group(group)["partitions"]


@groups.command("list")
@click.option("--json", "as_json", is_flag=True)
@_data_option
def groups_list(as_json: bool, data: Path | None) -> None:
    """Groups with committed offsets, their topics and total lag."""
    with _open_store(_data_dir(data), write=False) as store:
        rows: list[dict[str, Any]] = []
        for g in store.groups():
            parts = _group_rows(store, g)
            rows.append({"group": g, "topics": sorted({p["topic"] for p in parts}),
                         "partitions": len(parts),
                         "lag": sum(p["lag"] or 0 for p in parts)})
    if as_json:
        _print_json(rows)
        return
    if not rows:
        _note("no consumer groups have committed offsets")
        return
    table = Table()
    for col, j in (("group", "left"), ("topics", "left"), ("partitions", "right"), ("lag", "right")):
        table.add_column(col, justify=j)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["group"], ", ".join(r["topics"]), str(r["partitions"]), f"{r['lag']:,}")
    _out().print(table)


@groups.command("describe")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True)
@_data_option
def groups_describe(group: str, as_json: bool, data: Path | None) -> None:
    """Committed offset, log end and lag per partition of GROUP."""
    with _open_store(_data_dir(data), write=False) as store:
        if group not in store.groups():
            raise DataError(f"group {group!r} has no committed offsets in {store.path}; see "
                            f"`kstore groups list`")
        d = store.describe_group(group)
    if as_json:
        _print_json(d)
        return
    table = Table(title=f"group {group} ({d['state']})")
    for col in ("topic", "partition", "committed", "log end", "lag", "committed at", "metadata"):
        table.add_column(col, justify="left" if col in ("topic", "committed at", "metadata") else "right")
    for p in d["partitions"]:
        when = _dt.datetime.fromtimestamp(p["commit_timestamp"] / 1000).isoformat(timespec="seconds")
        table.add_row(p["topic"], str(p["partition"]), str(p["committed"]),
                      "-" if p["log_end_offset"] is None else str(p["log_end_offset"]),
                      "-" if p["lag"] is None else f"{p['lag']:,}", when, p["metadata"])
    _out().print(table)


@groups.command("reset-offsets")
@click.argument("group")
@click.option("--topic", "-t", "topic", default=None,
              help="Reset this topic (default: every topic the group has committed offsets for).")
@click.option("--partition", "-p", type=click.IntRange(0), default=None, help="Only this partition.")
@click.option("--to-earliest", is_flag=True, help="To the log start.")
@click.option("--to-latest", is_flag=True, help="To the log end.")
@click.option("--to-offset", type=click.IntRange(0), default=None, help="To this offset (clamped "
              "to the log).")
@click.option("--shift-by", type=int, default=None, help="Move the committed offsets by N.")
@click.option("--to-datetime", default=None, metavar="MS|ISO",
              help="To the first record at or after this time.")
@click.option("--dry-run", is_flag=True, help="Show the new offsets without committing them (the "
              "default, as in Kafka's kafka-consumer-groups.sh).")
@click.option("--execute", is_flag=True, help="Commit the new offsets.")
@click.option("--json", "as_json", is_flag=True)
@_data_option
def groups_reset_offsets(group: str, topic: str | None, partition: int | None, to_earliest: bool,
                         to_latest: bool, to_offset: int | None, shift_by: int | None,
                         to_datetime: str | None, dry_run: bool, execute: bool, as_json: bool,
                         data: Path | None) -> None:
    """Plan or set GROUP's committed offsets (exactly one of --to-earliest, --to-latest,
    --to-offset, --shift-by, --to-datetime).

    As Kafka's tool does, this prints the plan and changes nothing unless --execute is given.
    """
    if dry_run and execute:
        raise _usage("--dry-run and --execute are mutually exclusive")
    dry_run = not execute
    chosen = [n for n, v in (("--to-earliest", to_earliest), ("--to-latest", to_latest),
                             ("--to-offset", to_offset is not None), ("--shift-by", shift_by is not None),
                             ("--to-datetime", to_datetime is not None)) if v]
    if len(chosen) != 1:
        raise _usage("give exactly one of --to-earliest, --to-latest, --to-offset N, --shift-by N, "
                     f"--to-datetime T{' (got ' + ', '.join(chosen) + ')' if chosen else ''}")
    if partition is not None and topic is None:
        raise _usage("--partition needs --topic")
    ts = _parse_timestamp(to_datetime) if to_datetime is not None else None
    with _open_store(_data_dir(data), write=not dry_run) as store:
        committed = {(p["topic"], p["partition"]): p["committed"]
                     for p in store.describe_group(group)["partitions"]} if group in store.groups() else {}
        if topic is not None:
            _need_topic(store, topic)
            n = store.partitions_for(topic)
            if partition is not None and partition >= n:
                raise DataError(f"partition {partition} does not exist: topic {topic!r} has {n}")
            tps = [(topic, partition)] if partition is not None else [(topic, p) for p in range(n)]
        else:
            tps = sorted(tp for tp in committed if tp[0] in store.topics(internal=True))
            if not tps:
                raise DataError(f"group {group!r} has no committed offsets; name the topic with "
                                f"--topic")
        plan: list[dict[str, Any]] = []
        for t, p in tps:
            lg = store.partition(t, p)
            lso, leo = lg.log_start_offset, lg.log_end_offset
            old = committed.get((t, p))
            if to_earliest:
                new = lso
            elif to_latest:
                new = leo
            elif to_offset is not None:
                new = to_offset
            elif shift_by is not None:
                new = (lso if old is None else old) + shift_by
            else:
                found = lg.offset_for_time(ts)  # type: ignore[arg-type]
                new = leo if found is None else found
            plan.append({"topic": t, "partition": p, "old": old, "new": max(lso, min(new, leo))})
        if not dry_run:
            store.commit_offsets(group, {(r["topic"], r["partition"]): (r["new"], "", 0) for r in plan})
    if as_json:
        _print_json({"group": group, "dry_run": dry_run, "partitions": plan})
        return
    table = Table(title=f"group {group}: {'new offsets (dry run, nothing committed)' if dry_run else 'offsets reset'}")
    if dry_run:
        _note("no offsets were changed: this is the plan; add --execute to commit it")
    for col in ("topic", "partition", "old offset", "new offset"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    for r in plan:
        table.add_row(r["topic"], str(r["partition"]), "-" if r["old"] is None else str(r["old"]),
                      str(r["new"]))
    _out().print(table)


# ==============================================================================================
# dump-log


def _map(path: Path, size: int) -> mmap.mmap:
    """A read-only map of a file. Not closed explicitly: batches read from it pin it, and it
    goes when the last of them does (also when an error unwinds with batches alive)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)


def _batch_line(b: Any) -> str:
    last_seq = -1 if b.base_sequence < 0 else b.base_sequence + b.last_offset_delta
    ts_type = "LogAppendTime" if b.timestamp_type == records.TIMESTAMP_LOG_APPEND else "CreateTime"
    horizon = str(b.base_timestamp) if b.has_delete_horizon else "OptionalLong.empty"
    return (f"baseOffset: {b.base_offset} lastOffset: {b.last_offset} count: {b.record_count} "
            f"baseSequence: {b.base_sequence} lastSequence: {last_seq} producerId: {b.producer_id} "
            f"producerEpoch: {b.producer_epoch} partitionLeaderEpoch: {b.partition_leader_epoch} "
            f"isTransactional: {str(b.is_transactional).lower()} isControl: "
            f"{str(b.is_control).lower()} deleteHorizonMs: {horizon} position: {b.position} "
            f"{ts_type}: {b.max_timestamp} size: {b.size} magic: {b.magic} "
            f"compresscodec: {b.compression} crc: {b.crc}")


def _show(b: bytes | None) -> str:
    return "null" if b is None else b.decode("utf-8", "backslashreplace")


@main.command("dump-log")
@click.argument("segment", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--print-data", is_flag=True, help="Print every record's key and value too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per batch.")
@_quiet_pipe
def dump_log(segment: Path, print_data: bool, as_json: bool) -> None:
    """Print the batches of a segment file (.log) like Kafka's kafka-dump-log: headers, offsets,
    timestamps and whether each batch's CRC is valid. Also reads .index and .timeindex files
    and the side files recovery keeps cut bytes in (.log.corrupt-<position>). After a batch
    whose header is damaged it goes on at the next batch whose CRC checks out. Exits 2 when a
    batch is invalid or the file has bytes that are not whole batches."""
    if segment.suffix in (".index", ".timeindex"):
        _dump_index(segment, as_json)
        return
    side = quarantine.is_side_file(segment.name)
    if segment.suffix != ".log" and not segment.name.endswith(".log.deleted") and not side:
        raise _usage(f"{segment} is not a .log, .index, .timeindex or .log.corrupt-* file")
    size = segment.stat().st_size
    out = sys.stdout
    if not as_json:
        out.write(f"Dumping {segment}\n")
        stem = segment.name.split(".")[0]
        if side:
            origin = segment.name.split(".corrupt-")[1].split(".")[0]
            out.write(f"Bytes recovery cut from {stem}.log at byte {origin}: positions below are "
                      f"in this file (add {origin} for the segment's)\n")
        elif stem.isdigit():
            out.write(f"Log starting offset: {int(stem)}\n")
    problems: list[str] = []
    batches = 0
    end = 0
    mm = _map(segment, size) if size else None
    start = 0
    while mm is not None and start < size:
        end = start
        try:
            for b in records.iter_batches(mm, start, allow_partial=True):
                batches += 1
                end = b.position + b.size
                try:
                    b.validate()
                    valid, why = True, None
                except kerr.CorruptRecordError as exc:
                    valid, why = False, str(exc)
                    problems.append(f"batch at position {b.position} (offsets {b.base_offset}.."
                                    f"{b.last_offset}): {why}")
                recs: list[Any] = []
                rec_error = None
                if print_data:
                    try:
                        recs = b.records(check_crc=False)
                    except kerr.KStoreError as exc:
                        rec_error = str(exc)
                if as_json:
                    obj = {"position": b.position, "base_offset": b.base_offset,
                           "last_offset": b.last_offset, "count": b.record_count,
                           "first_timestamp": b.first_timestamp,
                           "max_timestamp": b.max_timestamp, "size": b.size,
                           "compression": b.compression, "crc": b.crc, "is_valid": valid,
                           "error": why, "producer_id": b.producer_id,
                           "is_transactional": b.is_transactional, "is_control": b.is_control}
                    if print_data:
                        obj["records"] = [{"offset": r.offset, "timestamp": r.timestamp,
                                           "key": _text(r.key)[0], "value": _text(r.value)[0]}
                                          for r in recs]
                    out.write(json.dumps(obj) + "\n")
                else:
                    out.write(f"{_batch_line(b)} isvalid: {str(valid).lower()}\n")
                    for r in recs:
                        ts_type = "LogAppendTime" if r.timestamp_type == 1 else "CreateTime"
                        hk = "[" + ", ".join(k for k, _ in r.headers) + "]"
                        key = f" key: {_show(r.key)}" if r.key is not None else ""
                        out.write(f"| offset: {r.offset} {ts_type}: {r.timestamp} keySize: "
                                  f"{-1 if r.key is None else len(r.key)} valueSize: "
                                  f"{-1 if r.value is None else len(r.value)} sequence: "
                                  f"{b.base_sequence if b.base_sequence < 0 else b.base_sequence + r.offset - b.base_offset}"
                                  f" headerKeys: {hk}{key} payload: {_show(r.value)}\n")
                    if rec_error:
                        out.write(f"| records cannot be decoded: {rec_error}\n")
                del b
        except kerr.CorruptRecordError as exc:
            problems.append(f"unreadable batch at position {end}: {exc}")
        if end >= size:
            break
        # The header at ``end`` cannot be trusted (its length runs past the file or does not
        # parse): look for the next batch that checks out, CRC included, and go on from there.
        start = quarantine.next_sound_batch(mm, end + 1, size)
        if start < size:
            problems.append(f"bytes {end}..{start} do not hold a batch that checks out (a damaged "
                            f"header); skipped to the next sound batch at position {start}")
        else:
            problems.append(f"bytes {end}..{size} are not a whole batch (a write in progress, a "
                            f"torn write that the next writable open cuts, or a damaged header)")
    out.flush()
    if problems:
        _note(f"{segment}: {len(problems)} problem{'s' * (len(problems) != 1)} in {batches} "
              f"batches:\n  " + "\n  ".join(problems))
        sys.exit(EXIT_DATA)
    if not as_json:
        _note(f"{batches} batches, {size} bytes, every CRC valid")


def _dump_index(path: Path, as_json: bool) -> None:
    stem = path.name.split(".")[0]
    base = int(stem) if stem.isdigit() else 0
    raw = path.read_bytes()
    out = sys.stdout
    if not as_json:
        out.write(f"Dumping {path}\n")
    if path.suffix == ".index":
        for slot, (rel, pos) in enumerate(struct.iter_unpack(">ii", raw[: len(raw) // 8 * 8])):
            if slot and rel == 0 and pos == 0:
                break  # preallocated, unused
            out.write(json.dumps({"offset": base + rel, "position": pos}) + "\n" if as_json
                      else f"offset: {base + rel} position: {pos}\n")
    else:
        for slot, (ts, rel) in enumerate(struct.iter_unpack(">qi", raw[: len(raw) // 12 * 12])):
            if ts == 0 and rel == 0:
                break
            out.write(json.dumps({"timestamp": ts, "offset": base + rel}) + "\n" if as_json
                      else f"timestamp: {ts} offset: {base + rel}\n")


# ==============================================================================================
# verify


def _scan_segment(path: Path, base: int) -> tuple[int, int, int, list[str], str | None]:
    """Scan a whole segment file, CRCs included, skipping over bad batches to find them all.
    Returns (batches, last offset or -1, bytes, problems, warning about a partial tail)."""
    size = path.stat().st_size
    problems: list[str] = []
    if size == 0:
        return 0, -1, 0, problems, None
    nb, last = 0, -1
    tail = None
    mm = _map(path, size)
    pos = 0
    while pos < size:
        res = records.scan(mm, pos, size, True, True)
        nb += len(res)
        if len(res):
            last = int(res.last_offsets[-1])
            if problems == [] and nb == len(res) and int(res.base_offsets[0]) < base:
                problems.append(f"{path}: first batch offset {int(res.base_offsets[0])} is "
                                f"below the segment's base offset {base}")
        if res.ok:
            break
        at = res.valid_end
        if res.torn:
            tail = (f"{path}: bytes {at}..{size} are an incomplete batch (a write in "
                    f"progress, or a torn write that the next writable open cuts)")
            break
        try:
            b = records.read_batch(mm, at)
        except kerr.KStoreError:
            b = None
        if b is None or b.size <= 0:
            problems.append(f"{path}: batch at byte {at}: {res.error}")
            problems.append(f"{path}: its header is damaged, so the {size - at} bytes from byte "
                            f"{at} on could not be checked")
            break
        problems.append(f"{path}: batch at byte {at} (offsets {b.base_offset}..{b.last_offset}): "
                        f"{res.error}")
        pos = at + b.size
    return nb, last, size, problems, tail


@main.command()
@click.argument("data_arg", metavar="[DATA]", required=False,
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@_data_option
def verify(data_arg: Path | None, as_json: bool, data: Path | None) -> None:
    """Check every batch's CRC and structure and every index entry of every partition in DATA
    (read-only: works beside a writer), and list the side files (.log.corrupt-*) where crash
    recovery kept bytes it cut.

    \b
    Exit codes:
      0  sound (warnings, e.g. quarantined side files or a write in progress, may be shown)
      2  data corruption: a batch fails its CRC or structure (file and byte are named)
      3  the data is sound but .index/.timeindex files are damaged or missing: rebuild
         them with `kstore repair-indexes` (stop the writer first)
    """
    data = data_arg or _data_dir(data)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    warnings: list[str] = []
    repairable: list[str] = []
    quarantined: list[str] = []
    skipped: list[str] = []
    with _open_store(data, write=False) as store:
        tps = []
        for t in store.topics(internal=True):
            for p in range(store.partitions_for(t)):
                if (data / f"{t}-{p}").is_dir():
                    tps.append((t, p))
        total = sum(store.partition(t, p).size_bytes for t, p in tps)
        cols = (SpinnerColumn(), TextColumn("verifying {task.fields[part]:<30}"), BarColumn(),
                DownloadColumn(), TimeRemainingColumn())
        with _progress(*cols, enabled=not as_json) as progress:
            task = progress.add_task("verify", total=max(total, 1), part="")
            for t, p in tps:
                lg = store.partition(t, p)
                progress.update(task, part=f"{t}-{p}")
                part_problems: list[str] = []
                part_repairable = 0
                bad_segments: set[str] = set()
                torn_segments: set[str] = set()
                nb = nbytes = 0
                prev_last = -1
                segs = lg.segments()
                for i, seg in enumerate(segs):
                    try:
                        n, last, size, probs, tail = _scan_segment(seg.path, seg.base_offset)
                    except FileNotFoundError:
                        if lg.deleted_by_writer(seg.base_offset):
                            # Retention or compaction beside us: routine, not damage.
                            skipped.append(f"{seg.path}: deleted by the writer while verify "
                                           f"ran (retention or compaction); not checked")
                            progress.advance(task, seg.size)
                            continue
                        raise DataError(f"{seg.path} is missing (deleted outside kstore); "
                                        f"offsets {seg.base_offset}.. cannot be read") from None
                    nb += n
                    nbytes += size
                    if n and prev_last >= seg.base_offset:
                        probs.append(f"{seg.path}: segment starts at offset {seg.base_offset}, "
                                     f"not after the previous segment's last offset {prev_last}")
                    prev_last = max(prev_last, last)
                    if probs:
                        bad_segments.add(seg.path.stem)
                    part_problems += probs
                    if tail and i == len(segs) - 1:
                        warnings.append(tail)
                        torn_segments.add(seg.path.stem)
                    elif tail:
                        part_problems.append(tail)
                        bad_segments.add(seg.path.stem)
                    progress.advance(task, size)
                # Index entries (and anything else the log itself checks). A problem in a
                # segment whose data is already reported follows from it (its index points at
                # batches the scan could not accept): only the data problem is shown. In the
                # last segment, an incomplete final batch (a write in progress, or a crash that
                # the writer's next open repairs) is a warning, and so is an index entry into it.
                for prob in lg.verify():
                    if any(f"/{stem}." in prob for stem in bad_segments) or prob in part_problems:
                        continue
                    if any(f"/{stem}." in prob for stem in torn_segments):
                        warnings.append(f"{prob} (it points into the incomplete tail; the next "
                                        f"writable open rebuilds the index)")
                        continue
                    if _is_index_problem(prob):
                        repairable.append(prob)
                        part_repairable += 1
                        continue
                    part_problems.append(prob)
                for side in lg.quarantined_files():
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile: gone
                        quarantined.append(f"{side} ({side.stat().st_size:,} bytes)")
                problems += part_problems
                rows.append({"partition": f"{t}-{p}", "segments": len(segs), "batches": nb,
                             "bytes": nbytes, "ok": not part_problems,
                             "indexes_ok": not part_repairable})
    repair = f"kstore repair-indexes --data {data}"
    if as_json:
        _print_json({"data": str(data), "ok": not problems and not repairable, "partitions": rows,
                     "problems": problems, "warnings": warnings, "repairable": repairable,
                     "repair_command": repair if repairable else None,
                     "quarantined": quarantined, "skipped": skipped})
    else:
        table = Table(title=f"verify {data}")
        for col in ("partition", "segments", "batches", "size", "status"):
            table.add_column(col, justify="left" if col in ("partition", "status") else "right")
        for r in rows:
            table.add_row(r["partition"], str(r["segments"]), f"{r['batches']:,}", _human(r["bytes"]),
                          "CORRUPT" if not r["ok"] else "ok" if r["indexes_ok"] else "REPAIRABLE")
        _out().print(table)
        for w in warnings:
            _note(f"warning: {w}")
        for q in quarantined:
            _note(f"warning: quarantined: {q}: bytes a crash recovery cut from the log (see its "
                  f"warning in the log); inspect with `kstore dump-log {q.split(' (')[0]}`, "
                  f"delete the file once you no longer need it")
        for line in repairable:
            _note(f"warning: repairable: {line}")
        for k in skipped:
            _note(f"skipped: {k}")
    if problems:
        _note(f"kstore: error: {len(problems)} problem{'s' * (len(problems) != 1)} found:\n  "
              + "\n  ".join(problems)
              + "\nThe bytes at these positions do not match their CRC or structure. Readers "
                "stop at them (`kstore consume --offset N` starts past one). Restore the affected "
                "segments from a backup if you have one; recovery after an unclean shutdown cuts "
                "the log at damage past its recovery point and keeps the cut bytes in "
                "<segment>.log.corrupt-* side files (see README, Durability).")
        sys.exit(EXIT_DATA)
    if repairable:
        _note(f"kstore: {len(repairable)} index file{'s' * (len(repairable) != 1)} damaged or "
              f"missing; the data itself is sound. Rebuild them from the data with `{repair}` "
              f"(it takes the writer lock: stop writers first)")
        sys.exit(EXIT_REPAIRABLE)
    if not as_json:
        _note(f"verified {len(rows)} partition{'s' * (len(rows) != 1)}: every batch CRC and index "
              f"entry is sound{' (see the warnings above)' if warnings or quarantined else ''}")


def _partitions_on_disk(store: kstore.Store, data: Path) -> list[tuple[str, int]]:
    return [(t, p) for t in store.topics(internal=True) for p in range(store.partitions_for(t))
            if (data / f"{t}-{p}").is_dir()]


def _index_problems(data: Path) -> list[str]:
    """Index-file problems of every partition, read-only (as verify finds them)."""
    out = []
    with _open_store(data, write=False) as store:
        for t, p in _partitions_on_disk(store, data):
            out += [prob for prob in store.partition(t, p).verify() if _is_index_problem(prob)]
    return out


def _is_index_problem(problem: str) -> bool:
    """Problems about index files name the file first (``<path>.index: ...``)."""
    head = problem.split(": ", 1)[0]
    return head.endswith(".index") or head.endswith(".timeindex")


@main.command("repair-indexes")
@click.argument("data_arg", metavar="[DATA]", required=False,
                type=click.Path(file_okay=False, path_type=Path))
@_data_option
def repair_indexes(data_arg: Path | None, data: Path | None) -> None:
    """Rebuild the .index and .timeindex files that `kstore verify` reports as repairable
    (exit 3) from the .log files, which it does not change (opening a store that was not closed
    cleanly still runs recovery first, which may cut a torn tail). Takes the writer lock of
    DATA, so it refuses to run beside a writer (stop `kstore serve` and producers first). Segments whose
    data is corrupt keep their indexes (exit 2: see `kstore verify`)."""
    data = data_arg or _data_dir(data)
    # What is damaged, seen as verify sees it: opening for writing already rebuilds some index
    # files (those the active segment needs), so look first.
    before = _index_problems(data)
    skipped: list[str] = []
    # Exclusive: rewriting index files under readers in other processes could cut files they
    # have mapped.
    with _open_store(data, write=True, exclusive=True) as store:
        for t, p in _partitions_on_disk(store, data):
            skipped += store.partition(t, p).repair_indexes()[1]
    after = set(_index_problems(data))
    rebuilt = [prob for prob in before if prob not in after]
    for r in rebuilt:
        _note(f"rebuilt: {r}")
    for r in skipped + sorted(after):
        _note(f"skipped: {r}")
    if skipped or after:
        sys.exit(EXIT_DATA)
    _note(f"{len(rebuilt)} index file{'s' * (len(rebuilt) != 1)} rebuilt" if rebuilt
          else "every index file is sound; nothing to rebuild")


# ==============================================================================================
# maintenance


@main.command()
@click.option("--json", "as_json", is_flag=True)
@_data_option
def maintenance(as_json: bool, data: Path | None) -> None:
    """Run retention (and compaction, where the store does it) now; print what was deleted."""
    with _open_store(_data_dir(data), write=True) as store:
        report = store.run_maintenance()
    rows = []
    expired = report.pop("expired_offsets", {}) if isinstance(report, dict) else {}
    for name, res in sorted(report.items()):
        if hasattr(res, "__dataclass_fields__"):
            d = {k: getattr(res, k) for k in res.__dataclass_fields__}
        elif isinstance(res, dict):
            d = dict(res)
        else:
            d = {"result": str(res)}
        rows.append({"partition": name, **d})
    if as_json:
        _print_json({"partitions": rows,
                     "expired_offsets": {g: [list(tp) for tp in v] for g, v in expired.items()}})
        return
    if not rows and not expired:
        _note("maintenance: nothing to delete")
        return
    if rows:
        keys = [k for k in rows[0] if k != "partition"]
        for r in rows[1:]:
            keys += [k for k in r if k not in keys and k != "partition"]
        table = Table(title="maintenance")
        table.add_column("partition")
        for k in keys:
            table.add_column(k.replace("_", " "), justify="right")
        for r in rows:
            table.add_row(r["partition"], *("" if r.get(k) is None else str(r.get(k)) for k in keys))
        _out().print(table)
    for g, tps in sorted(expired.items()):
        _note(f"expired committed offsets of group {g!r}: "
              + ", ".join(f"{t}-{p}" for t, p in tps))


# ==============================================================================================
# serve


def _parse_listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, like 127.0.0.1:9092, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@main.command()
@click.option("--listen", default="127.0.0.1:9092", show_default=True, callback=_parse_listen,
              help="Address to listen on, HOST:PORT (port 0: any free port, printed at start).")
@click.option("--advertise", default=None, help="HOST:PORT clients should connect to, if not the "
              "address they dialled (Kafka's advertised.listeners).")
@click.option("--partitions", "num_partitions", type=click.IntRange(1), default=1,
              show_default=True, help="Partitions of auto-created topics (num.partitions).")
@click.option("--auto-create/--no-auto-create", default=True, show_default=True,
              help="Create unknown topics on Metadata and Produce (auto.create.topics.enable).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate (chain) for TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key for TLS.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM CA bundle: require client certificates signed by it.")
@click.option("--sasl-users", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Require SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with the users in this "
              "file: one 'user:password' per line, or lines from `kstore scram-credential`.")
@click.option("--max-auto-create-per-request", type=click.IntRange(1), default=1000,
              show_default=True, help="Topics one Metadata or Produce request may auto-create; "
              "the rest are answered LEADER_NOT_AVAILABLE, so clients retry.")
@click.option("--max-connections", type=click.IntRange(1), default=1000, show_default=True,
              help="Open connections (max.connections); at the limit the longest-idle one is "
              "closed to admit a new one.")
@click.option("--max-connections-per-ip", type=click.IntRange(1), default=500,
              show_default=True, help="Open connections from one address "
              "(max.connections.per.ip); likewise its longest-idle one makes room.")
@click.option("--first-request-timeout", type=click.FloatRange(0.1), default=10.0,
              show_default=True, help="Seconds a new connection has to send a request (with "
              "SASL: to authenticate) before it is closed.")
@click.option("--max-request-bytes", type=click.IntRange(1024), default=104_857_600,
              show_default=True, help="Largest request accepted (socket.request.max.bytes).")
@click.option("--queued-max-request-bytes", type=click.IntRange(1024), default=104_857_600,
              show_default=True, help="Bytes of large requests in flight, server-wide "
              "(queued.max.request.bytes): over it, connections wait unread.")
@click.option("--receive-timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds to receive a whole request once it has started.")
@click.option("--idle-timeout", type=click.FloatRange(0.1), default=600.0, show_default=True,
              help="Seconds before an idle connection is closed (connections.max.idle.ms).")
@click.option("--group-initial-rebalance-delay-ms", type=click.IntRange(0), default=3000,
              show_default=True, help="How long a new consumer group waits for more members "
              "before its first rebalance (group.initial.rebalance.delay.ms).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@_data_option
def serve(listen: tuple[str, int], advertise: str | None, num_partitions: int, auto_create: bool,
          tls_cert: str | None, tls_key: str | None, tls_ca: str | None, sasl_users: str | None,
          max_auto_create_per_request: int, max_connections: int, max_connections_per_ip: int,
          first_request_timeout: float, max_request_bytes: int, queued_max_request_bytes: int,
          receive_timeout: float, idle_timeout: float, group_initial_rebalance_delay_ms: int,
          log_level: str, data: Path | None) -> None:
    """Serve the data directory over the Kafka protocol until Ctrl-C or SIGTERM.

    Kafka's clients (kcat, confluent-kafka, kafka-python, aiokafka, ...) connect with
    bootstrap.servers set to the --listen address. Topics, records and committed offsets are
    the same ones the embedded API sees.
    """
    import asyncio
    import logging
    import signal

    from kstore.server import Server, ServerConfig

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (tls_cert is None) != (tls_key is None):
        raise _usage("--tls-cert and --tls-key go together")
    ssl_context = users = None
    if tls_cert is not None:
        from kstore.server.auth import server_ssl_context
        try:
            ssl_context = server_ssl_context(tls_cert, tls_key, tls_ca)  # type: ignore[arg-type]
        except kerr.KStoreError as exc:
            raise DataError(str(exc)) from None
    if sasl_users is not None:
        from kstore.server.auth import Users
        try:
            users = Users.load(sasl_users)
        except kerr.KStoreError as exc:
            raise DataError(str(exc)) from None
    adv_host = adv_port = None
    if advertise is not None:
        adv_host, adv_port = _parse_listen(click.get_current_context(), None, advertise)  # type: ignore[arg-type]
    _raise_open_files_limit(max_connections)
    path = _data_dir(data)
    try:
        store = kstore.open(path)
    except kerr.LogLockedError:
        raise DataError(_locked_message(f"the data directory {path}")) from None
    cfg = ServerConfig(host=listen[0], port=listen[1], advertised_host=adv_host,
                       advertised_port=adv_port, num_partitions=num_partitions,
                       auto_create_topics=auto_create, ssl_context=ssl_context, sasl_users=users,
                       max_auto_create_per_request=max_auto_create_per_request,
                       max_connections=max_connections,
                       max_connections_per_ip=max_connections_per_ip,
                       first_request_timeout_s=first_request_timeout,
                       max_request_bytes=max_request_bytes,
                       queued_max_request_bytes=queued_max_request_bytes,
                       receive_timeout_s=receive_timeout, idle_timeout_s=idle_timeout,
                       group_initial_rebalance_delay_ms=group_initial_rebalance_delay_ms)

    async def run() -> None:
        server = Server(store, cfg)
        try:
            await server.start()
        except OSError as exc:
            raise DataError(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}") from None
        click.echo(f"kstore serving {path} on {listen[0]}:{server.port}", err=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.ensure_future(server.serve_forever())
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close()

    try:
        asyncio.run(run())
    finally:
        try:
            store.close()
        except kerr.KafkaStorageError as exc:  # e.g. a full disk: the logs recover next open
            raise DataError(f"kstore serve: stopped, but {exc}") from None
    click.echo("kstore serve: stopped", err=True)


def _raise_open_files_limit(max_connections: int) -> None:
    """Each connection is a file descriptor, besides the segment files: lift the soft limit
    (1024 on many systems) toward the hard one so that --max-connections can be reached."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _parse_client_configs(ctx: click.Context, param: click.Parameter,
                          values: tuple[str, ...]) -> dict[str, str]:
    """-X key=value: librdkafka settings under Kafka's names, passed through unchecked."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value (for example "
                                     f"security.protocol=SASL_SSL)", ctx, param)
        out[key.strip()] = value
    return out


@main.command()
@click.argument("src", metavar="SRC")
@click.argument("dest", metavar="DEST")
@click.option("--topic", "-t", "topic_names", multiple=True, metavar="NAME",
              help="Copy this topic (repeatable). Default: every topic but internal ones.")
@click.option("--include", default=None, metavar="REGEX",
              help="Copy the topics whose whole name matches REGEX (with --topic: both).")
@click.option("-X", "client_config", multiple=True, metavar="KEY=VALUE",
              callback=_parse_client_configs,
              help="confluent-kafka (librdkafka) setting for the cluster side, Kafka's names "
              "(sasl.username=..., security.protocol=SASL_SSL, ssl.ca.location=...). Repeatable.")
@click.option("--follow", "-F", is_flag=True,
              help="Keep copying new records (and group offsets, every 5 s) until Ctrl-C.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint file (default: DIR/.kstore-mirror/<other side>.json in the data "
              "directory side, the destination if both are). Needed from cluster to cluster.")
@click.option("--no-groups", is_flag=True, help="Do not copy committed group offsets.")
@click.option("--compression", "-z", type=click.Choice(list(records.CODECS)), default="lz4",
              show_default=True, help="Compression of the records written to DEST.")
@click.option("--max-rate", type=click.FloatRange(0), default=0, metavar="RECORDS/S",
              help="Copy at most this many records per second (default: no limit).")
@click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds to reach a cluster, and that a destination may acknowledge nothing, "
              "before the command fails.")
@click.option("--per-record", is_flag=True,
              help="Between a data directory and a cluster, copy record by record through "
              "confluent-kafka instead of sending (or fetching) whole batches as they are (that "
              "path is taken only over PLAINTEXT; with TLS/SASL settings records go one by one "
              "anyway).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def mirror(src: str, dest: str, topic_names: tuple[str, ...], include: str | None,
           client_config: dict[str, str], follow: bool, checkpoint: Path | None,
           no_groups: bool, compression: str, max_rate: float, timeout: float,
           per_record: bool, as_json: bool) -> None:
    """Copy topics, records and committed group offsets from SRC to DEST.

    SRC and DEST are each a data directory or kafka://host:port[,host:port...] (a Kafka
    cluster: Kafka, Redpanda, `kstore serve`). Records keep their partition, key, value, headers
    and timestamp; the destination numbers them from its own log end, and group offsets are
    translated to those numbers. Topics are created at DEST with the source's partition count
    and the configs DEST knows (the others are listed); a DEST topic with another partition
    count is an error, and nothing is copied.

    Resumable: run the same command again after a kill or Ctrl-C and it goes on where the
    checkpoint says, with no record lost or copied twice. Ctrl-C (SIGTERM) finishes the chunk
    in flight, copies the group offsets and prints the summary; exit code 130 (143), 0 when
    everything was copied, 2 on an error (the message says what to do).
    """
    from kstore.mirror import Mirror

    stats_box: list[Any] = []
    cols = [SpinnerColumn(), TextColumn("mirror"), TextColumn("{task.fields[records]:,} records"),
            TextColumn("{task.fields[rate]:,.0f}/s"), TextColumn("lag {task.fields[lag]:,}"),
            TimeElapsedColumn()]
    progress = _progress(*cols)
    task = progress.add_task("mirror", total=None, records=0, rate=0.0, lag=0)

    def on_progress(st: Any) -> None:
        progress.update(task, records=st.records, rate=st.records_per_second, lag=st.lag)

    m = Mirror(src, dest, topics=topic_names, include=include, client_config=client_config,
               follow=follow, checkpoint=checkpoint, groups=not no_groups,
               compression=compression, max_rate=max_rate, timeout=timeout,
               on_progress=on_progress, forward_batches=not per_record)
    signum: list[int] = []

    def on_signal(sig: int, frame: Any) -> None:
        if signum:  # a second one: stop now (the checkpoint is whole; the next run resumes)
            raise KeyboardInterrupt
        signum.append(sig)
        m.stop()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with progress:
            stats_box.append(m.run())
    except kerr.InvalidPartitionsError as exc:  # about the data, not the command line
        raise DataError(str(exc)) from None
    except KeyboardInterrupt:
        _note(f"interrupted: {m.stats.records:,} records copied in this run; the checkpoint "
              f"{m.stats.checkpoint} holds what was acknowledged, run the same command to go on")
        sys.exit(128 + (signum[-1] if signum else int(signal.SIGINT)))
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    st = stats_box[0]
    if as_json:
        _print_json({"records": st.records, "seconds": round(st.seconds, 3),
                     "records_per_second": round(st.records_per_second),
                     "lag": st.lag, "topics": st.topics, "created_topics": st.created_topics,
                     "skipped_configs": st.skipped_configs, "groups": st.groups,
                     "group_errors": st.group_errors, "interrupted": st.interrupted,
                     "resumed_partitions": st.resumed_partitions,
                     "skipped_on_resume": st.skipped_on_resume, "checkpoint": st.checkpoint})
    for t, keys in sorted(st.skipped_configs.items()):
        _note(f"topic {t!r}: configs not known at {dest}, not copied: {', '.join(keys)}")
    for g, why in sorted(st.group_errors.items()):
        _note(f"group {g!r}: offsets not copied: {why}")
    word = "interrupted" if st.interrupted else "done"
    _note(f"{word}: {st.records:,} records in {st.seconds:.1f}s "
          f"({st.records_per_second:,.0f} records/s) from {len(st.topics)} topics "
          f"({len(st.created_topics)} created), offsets of {len(st.groups)} groups; lag "
          f"{st.lag:,}; checkpoint {st.checkpoint}")
    if st.interrupted:
        sys.exit(128 + (signum[-1] if signum else int(signal.SIGINT)))
    if st.group_errors:
        sys.exit(EXIT_DATA)


@main.command("scram-credential")
@click.argument("user")
@click.option("--mechanism", type=click.Choice(["SCRAM-SHA-256", "SCRAM-SHA-512"]),
              default="SCRAM-SHA-256", show_default=True)
@click.option("--iterations", type=click.IntRange(4096, 1_000_000), default=4096, show_default=True)
@click.password_option("--password", prompt=True, help="Read from the terminal when not given.")
@click.option("--sasl-users", "users_file", type=click.Path(dir_okay=False), default=None,
              help="Write the line into this users file (replacing USER's line for the "
              "mechanism) instead of printing it. A new file is created with mode 0600; an "
              "existing one keeps its mode.")
def scram_credential(user: str, mechanism: str, iterations: int, password: str,
                     users_file: str | None) -> None:
    """Print a users-file line holding a SCRAM credential (salted keys, no password)."""
    from kstore.server.auth import add_credential_line, scram_credential_line

    try:
        line = scram_credential_line(user, password, mechanism, iterations)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    if users_file is None:
        click.echo(line)
        return
    try:
        add_credential_line(users_file, user, mechanism, line)
    except kerr.KStoreError as exc:
        raise DataError(str(exc)) from None
    click.echo(f"wrote {user}'s {mechanism} credential to {users_file}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
