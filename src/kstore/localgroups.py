"""Consumer groups shared by the processes on one data directory, without a server.

Members of a group, in one process or several, meet in ``<dir>/.kstore-groups/<hash>/`` (the
hash is of the group name, which may hold any character)::

    name                  the group's name (for listing)
    group.lock            flock held a moment by whoever changes state.json
    state.json            generation, live members and their topics, partition counts, and
                          the range assignment of that generation (replaced atomically)
    members/<hash>.lock   one per member, flock LOCK_EX held for the member's whole life
    claims/<topic>-<p>.claim
                          flock LOCK_EX held by the member reading that partition now

Liveness is the kernel's word, not a heartbeat: a member's lock goes when its process dies,
even on SIGKILL, so a slow member that is alive never loses its partitions and a dead one is
seen by the first member that looks (every ``check_interval`` seconds, at most 100 ms or a
tenth of the session timeout). Whoever sees a dead member (its lock can be taken) rebalances:
under ``group.lock`` it drops the dead members (and their files), recomputes Kafka's range
assignment and writes the next generation. Members read ``state.json`` again when its stat
changes.

The rebalance barrier is a claim flock per partition: a member reads a partition only while it
holds its claim, and lets go of a revoked partition only after committing its position, so
the new owner (which takes the claim before reading) starts from that commit. A dead owner
lets go by dying; two members never read one partition at once, whatever the state file says.

Limits: flock locks are per open file description: a process forked (not exec'ed) while it has
members shares their locks with the child, and a member then counts as alive until both are
gone. Locks over NFS are only as good as the NFS server's.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kstore.errors import KafkaStorageError, RebalanceInProgressError, UnknownTopicOrPartitionError

TopicPartition = tuple[str, int]
GROUPS_DIR = ".kstore-groups"
STATE = "state.json"
DEFAULT_SESSION_TIMEOUT_MS = 10_000
MAX_CHECK_INTERVAL = 0.1  # seconds between liveness checks of a polling member, at most


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def group_dir(data_dir: str | os.PathLike, group: str) -> Path:
    """The folder of ``group``'s shared state in the data directory ``data_dir``."""
    return Path(data_dir) / GROUPS_DIR / _hash(group)


def check_interval(session_timeout_ms: int) -> float:
    """Seconds between the liveness checks of a member: a tenth of the session timeout, at
    most MAX_CHECK_INTERVAL."""
    return min(MAX_CHECK_INTERVAL, session_timeout_ms / 10_000)


def _claim_name(topic: str, partition: int) -> str:
    # Topic names are [A-Za-z0-9._-]{1,249}: safe in a file name, but too long with a suffix.
    base = topic if len(topic) <= 200 else _hash(topic)
    return f"{base}-{partition}.claim"


def range_assign(subscriptions: dict[str, list[str]],
                 partition_counts: dict[str, int]) -> dict[str, list[TopicPartition]]:
    """Kafka's RangeAssignor: per topic, partitions in order, the members subscribed to it
    sorted by id, the first ``n % m`` of them get one extra. Topics without a count (unknown)
    are not assigned."""
    out: dict[str, list[TopicPartition]] = {m: [] for m in subscriptions}
    for t in sorted({t for ts in subscriptions.values() for t in ts}):
        n = partition_counts.get(t)
        if not n:
            continue
        subs = sorted(m for m, ts in subscriptions.items() if t in ts)
        per, extra = divmod(n, len(subs))
        start = 0
        for i, mid in enumerate(subs):
            count = per + (1 if i < extra else 0)
            out[mid] += [(t, p) for p in range(start, start + count)]
            start += count
    return out


def _lock_is_held(path: Path) -> bool:
    """True while some open file (in any process, this one included) holds ``path``'s flock;
    False when nobody does or the file is gone. Never blocks, never takes the lock for long."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            # Shared is enough to test for an exclusive holder, and two probers of one dead
            # member do not get in each other's way.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        return False
    finally:
        os.close(fd)  # drops the probe's lock with it


def read_state(directory: Path) -> dict[str, Any]:
    """The group's state.json as a dict; an empty state when it is missing or unreadable (it
    is rebuilt from the live members at the next rebalance: nothing in it outlives them)."""
    try:
        data = json.loads((directory / STATE).read_bytes())
        if not isinstance(data, dict) or not isinstance(data.get("members"), dict) \
                or not isinstance(data.get("generation"), int):
            raise ValueError("not a group state")
        data["members"] = {m: i for m, i in data["members"].items() if isinstance(i, dict)}
        return data
    except (OSError, ValueError, UnicodeDecodeError):
        return {"generation": 0, "members": {}, "partitions": {}, "assignments": {}}


def _write_atomic(path: Path, data: bytes) -> None:
    """tmp + rename, so a reader sees the old or the new file. No fsync: the state lives only
    as long as its members' processes, and a torn file after a power loss reads as empty
    (read_state) and is rebuilt."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def live_members(data_dir: str | os.PathLike, group: str) -> dict[str, dict[str, Any]]:
    """The members of ``group`` whose process is alive, from every process, with their topics,
    pid, host and current assignment (as a list of [topic, partition]). Only reads."""
    d = group_dir(data_dir, group)
    state = read_state(d)
    out = {}
    for mid, info in state["members"].items():
        if _lock_is_held(d / "members" / str(info.get("lock", ""))):
            out[mid] = dict(info, assignment=[tuple(tp) for tp in
                                              state.get("assignments", {}).get(mid, [])],
                            generation=state["generation"])
    return out


def list_groups(data_dir: str | os.PathLike) -> list[str]:
    """Names of the groups with a live member in some process on this data directory."""
    root = Path(data_dir) / GROUPS_DIR
    try:
        dirs = list(root.iterdir())
    except OSError:
        return []
    names = []
    for d in dirs:
        try:
            name = (d / "name").read_bytes().decode("utf-8", "surrogatepass")
        except (OSError, UnicodeDecodeError):
            continue
        if d.name == _hash(name) and live_members(data_dir, name):
            names.append(name)
    return sorted(names)


def activity_hook(data_dir: str | os.PathLike, now_ms: Callable[[], int],
                  ) -> Callable[[], tuple[dict[str, int], int]]:
    """For ``Store.group_activity_hooks`` (``now_ms``: the store's clock): groups with a live
    member in any process count as active now, so offset expiry (KIP-211) never drops their
    commits; it says nothing of the others (floor 0: their commit time decides, as without a
    hook)."""
    def hook() -> tuple[dict[str, int], int]:
        now = now_ms()
        return {g: now for g in list_groups(data_dir)}, 0
    return hook


class GroupMember:
    """One member of a consumer group shared across the processes of a data directory.

    ``partitions_for(topic)`` gives a topic's partition count (UnknownTopicOrPartitionError
    when it has none). Not thread-safe: one thread uses a member at a time (the Consumer's).
    Raises KafkaStorageError when the group's files cannot be written, and
    RebalanceInProgressError when the group lock stays taken for a whole session timeout
    (a process stopped while changing the group)."""

    def __init__(self, data_dir: str | os.PathLike, group: str, member_id: str,
                 partitions_for: Callable[[str], int], *,
                 session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
                 client_id: str = "kstore") -> None:
        self.group = group
        self.member_id = member_id
        self.directory = group_dir(data_dir, group)
        self.partitions_for = partitions_for
        self.session_timeout_ms = session_timeout_ms
        self.check_interval = check_interval(session_timeout_ms)
        self.client_id = client_id
        self.topics: list[str] = []
        self.generation = -1
        self.assigned: list[TopicPartition] = []
        self._lock_name = _hash(member_id) + ".lock"
        self._lock_fd = -1
        self._claims: dict[TopicPartition, int] = {}
        self._state: dict[str, Any] = {}
        self._stat: tuple[int, int, int] | None = None
        self._last_check = 0.0

    # ==========================================================================================
    # Files

    def _fs(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except OSError as exc:
            raise KafkaStorageError(
                f"consumer group {self.group!r}: cannot {what} in {self.directory}: {exc}; "
                f"check the data directory's permissions and free space") from exc

    def _group_lock(self) -> int:
        def take() -> int:
            for sub in ("members", "claims"):
                (self.directory / sub).mkdir(parents=True, exist_ok=True)
            return os.open(self.directory / "group.lock", os.O_RDWR | os.O_CREAT, 0o644)

        fd = self._fs("open the group lock", take)
        deadline = time.monotonic() + max(self.session_timeout_ms / 1000, 1.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise KafkaStorageError(
                        f"cannot lock {self.directory / 'group.lock'}: {exc}") from exc
            else:
                name = self.directory / "name"
                try:
                    if not name.exists():  # under the lock: one writer of name.tmp at a time
                        _write_atomic(name, self.group.encode("utf-8", "surrogatepass"))
                except OSError as exc:
                    os.close(fd)
                    raise KafkaStorageError(
                        f"consumer group {self.group!r}: cannot write {name}: {exc}; check the "
                        f"data directory's permissions and free space") from exc
                return fd
            if time.monotonic() > deadline:
                os.close(fd)
                raise RebalanceInProgressError(
                    f"consumer group {self.group!r}: {self.directory / 'group.lock'} has been "
                    f"held by another process for over {self.session_timeout_ms} ms (is one "
                    f"stopped?); retry, or end the process that holds it")
            time.sleep(0.001)

    # ==========================================================================================
    # Membership

    def join(self, topics: Iterable[str]) -> None:
        """Join the group (or change this member's topics) and rebalance."""
        self.topics = list(topics)
        if self._lock_fd < 0:
            def create() -> int:
                path = self.directory / "members" / self._lock_name
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            gfd = self._group_lock()
            try:
                # Locked before state.json names it: a prober never takes a joining member
                # for a dead one.
                self._lock_fd = self._fs("create the member lock", create)
                self._rebalance_locked()
            finally:
                os.close(gfd)
        else:
            self._rebalance(force=True)

    def leave(self) -> None:
        """Let go of every claim and leave the group (the others rebalance). Idempotent."""
        self.release(list(self._claims))
        if self._lock_fd < 0:
            return
        gfd = self._group_lock()
        try:
            self.topics = []
            self._rebalance_locked(leaving=True)
            try:
                os.unlink(self.directory / "members" / self._lock_name)
            except OSError:
                pass
        finally:
            os.close(self._lock_fd)
            self._lock_fd = -1
            os.close(gfd)

    @property
    def joined(self) -> bool:
        return self._lock_fd >= 0

    def _rebalance(self, force: bool = False) -> bool:
        gfd = self._group_lock()
        try:
            return self._rebalance_locked(force=force)
        finally:
            os.close(gfd)

    def _rebalance_locked(self, leaving: bool = False, force: bool = True) -> bool:
        """Under the group lock: drop dead members, (re)add or remove this one, recompute the
        assignment. Writes the next generation when anything changed (or ``force``); returns
        whether it wrote."""
        state = read_state(self.directory)
        members_dir = self.directory / "members"
        members: dict[str, dict[str, Any]] = {}
        dead_files = []
        for mid, info in state["members"].items():
            if mid == self.member_id:
                continue
            if not isinstance(info, dict):
                continue
            lock = members_dir / str(info.get("lock", ""))
            if _lock_is_held(lock):
                members[mid] = info
            else:
                dead_files.append(lock)
        if not leaving:
            members[self.member_id] = {
                "lock": self._lock_name, "topics": self.topics, "pid": os.getpid(),
                "host": socket.gethostname(), "client_id": self.client_id,
                "session_timeout_ms": self.session_timeout_ms}
        # Lock files no state names: a joiner that died before writing the state.
        known = {str(i.get("lock")) for i in members.values()} | {self._lock_name}
        try:
            for f in members_dir.iterdir():
                if f.name not in known and f.suffix == ".lock" and not _lock_is_held(f):
                    dead_files.append(f)
        except OSError:
            pass
        prev_counts = state.get("partitions") or {}
        counts: dict[str, int] = {}
        for t in sorted({t for i in members.values() for t in i.get("topics", [])}):
            try:
                n = self.partitions_for(t)
            except UnknownTopicOrPartitionError:
                n = 0
            # Partitions only grow; another process may know of more than this one does.
            n = max(n, int(prev_counts.get(t, 0) or 0))
            if n:
                counts[t] = n
        assignments = range_assign({m: list(i.get("topics", [])) for m, i in members.items()},
                                   counts)
        changed = (force or set(members) != set(state["members"]) or counts != prev_counts
                   or any(state["members"].get(m, {}).get("topics") != i.get("topics")
                          for m, i in members.items()))
        if changed:
            new = {"version": 1, "group": self.group, "generation": state["generation"] + 1,
                   "members": members, "partitions": counts,
                   "assignments": {m: [list(tp) for tp in a] for m, a in assignments.items()}}
            self._fs("write the group state", lambda: _write_atomic(
                self.directory / STATE, json.dumps(new, sort_keys=True).encode()))
            state = new
        for f in dead_files:
            try:
                os.unlink(f)
            except OSError:
                pass
        self._adopt(state)
        return changed

    # ==========================================================================================
    # Assignment

    def _adopt(self, state: dict[str, Any]) -> None:
        self._state = state
        try:
            st = os.stat(self.directory / STATE)
            self._stat = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            self._stat = None
        self.generation = state["generation"]
        self.assigned = [(str(t), int(p)) for t, p in
                         state.get("assignments", {}).get(self.member_id, [])]

    def refresh(self) -> tuple[int, list[TopicPartition]]:
        """(generation, this member's partitions). Cheap: one stat of state.json; every
        ``check_interval`` seconds it also checks that the other members are alive and the
        partition counts the same, and rebalances when not."""
        if self._lock_fd < 0:
            return self.generation, self.assigned
        try:
            st = os.stat(self.directory / STATE)
            sig: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            sig = None
        if sig is None or sig != self._stat:
            self._adopt(read_state(self.directory))
        now = time.monotonic()
        if now - self._last_check >= self.check_interval:
            self._last_check = now
            if self._needs_rebalance():
                self._rebalance(force=False)
        return self.generation, self.assigned

    def _needs_rebalance(self) -> bool:
        state = self._state
        members = state.get("members", {})
        if self.member_id not in members:  # the state was lost or rebuilt without us
            return True
        members_dir = self.directory / "members"
        for mid, info in members.items():
            if mid != self.member_id and not _lock_is_held(members_dir / str(info.get("lock", ""))):
                return True
        counts = state.get("partitions") or {}
        for t in self.topics:
            try:
                n = self.partitions_for(t)
            except UnknownTopicOrPartitionError:
                continue
            if n > counts.get(t, 0):
                return True
        return False

    # ==========================================================================================
    # Claims (the rebalance barrier)

    def claim(self, tp: TopicPartition) -> bool:
        """Take the claim on a partition, unless its previous owner still holds it. True when
        this member holds it (now or already)."""
        if tp in self._claims:
            return True
        path = self.directory / "claims" / _claim_name(*tp)
        fd = self._fs("open a partition claim",
                      lambda: os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise KafkaStorageError(f"cannot lock {path}: {exc}") from exc
        self._claims[tp] = fd
        return True

    def release(self, parts: Iterable[TopicPartition]) -> None:
        """Let go of these partitions' claims (after committing their positions)."""
        for tp in parts:
            fd = self._claims.pop(tp, None)
            if fd is not None:
                os.close(fd)

    def holds(self, tp: TopicPartition) -> bool:
        return tp in self._claims

    def close(self) -> None:
        """Like leave(), but never raises (for finalizers and failed joins)."""
        try:
            self.leave()
        except Exception:
            for fd in self._claims.values():
                os.close(fd)
            self._claims.clear()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


__all__ = ["GroupMember", "range_assign", "live_members", "list_groups", "group_dir",
           "check_interval", "read_state", "activity_hook", "GROUPS_DIR",
           "DEFAULT_SESSION_TIMEOUT_MS"]
