"""The classic Kafka group coordinator of ``kstore serve``: JoinGroup, SyncGroup, Heartbeat,
LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups and DeleteGroups.

    coordinator = GroupCoordinator(store, initial_rebalance_delay_ms=3000)
    response = await coordinator.join_group(request, version, client_id, client_host)

Requests arrive decoded (dicts with every field of their schema, snake_case) and the methods
return response dicts; the codec fills the fields left out. Everything runs on one asyncio event
loop: no method may be called from another thread. JoinGroup and SyncGroup *park* (their
coroutine waits) until the rebalance completes, as Kafka's purgatories do; the timers of
``docs/kafka-protocol.md`` section 4 (session expiry, rebalance timeout, the initial rebalance
delay, members that never sync) are ``loop.call_later`` handles, so they fire on their own.

Membership lives in memory only: Kafka writes it to ``__consumer_offsets`` as group metadata
records, we do not, so after a restart every member rejoins (as after a coordinator failover)
and a group that had members shows protocol type "" until one joins. Offsets go to the store
(``Store.commit_offsets``) and are read back from it, so the embedded API
(``store.committed()``) and the wire see the same commits.

The semantics follow Kafka's ``GroupCoordinator`` / ``GroupMetadata`` (states table 4.1); the
deliberate differences are said where they occur (a parked request that is superseded or whose
member is removed is answered instead of being dropped, because a coroutine left waiting would
hold its connection forever).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kstore.errors import (
    GroupIdNotFoundError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidGroupIdError,
    InvalidRequestError,
    InvalidSessionTimeoutError,
    KStoreError,
    NonEmptyGroupError,
    OffsetOutOfRangeError,
    RebalanceInProgressError,
    UnknownMemberIdError,
    UnknownTopicOrPartitionError,
)

if TYPE_CHECKING:
    from kstore.store import Store

__all__ = ["GroupCoordinator", "GroupState"]

log = logging.getLogger("kstore.server.groups")

# Kafka error codes (Errors.java). Those kstore.errors has a class for come from it.
NONE = 0
OFFSET_OUT_OF_RANGE = OffsetOutOfRangeError.code
UNKNOWN_TOPIC_OR_PARTITION = UnknownTopicOrPartitionError.code
OFFSET_METADATA_TOO_LARGE = 12
COORDINATOR_NOT_AVAILABLE = 15
ILLEGAL_GENERATION = IllegalGenerationError.code
INCONSISTENT_GROUP_PROTOCOL = InconsistentGroupProtocolError.code
INVALID_GROUP_ID = InvalidGroupIdError.code
UNKNOWN_MEMBER_ID = UnknownMemberIdError.code
INVALID_SESSION_TIMEOUT = InvalidSessionTimeoutError.code
REBALANCE_IN_PROGRESS = RebalanceInProgressError.code
NON_EMPTY_GROUP = NonEmptyGroupError.code
GROUP_ID_NOT_FOUND = GroupIdNotFoundError.code
INVALID_REQUEST = InvalidRequestError.code
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82

OFFSET_METADATA_MAX_BYTES = 4096  # offset.metadata.max.bytes
# GroupCoordinator.NewMemberJoinTimeoutMs: a new member whose JoinGroup is parked cannot
# heartbeat, and a client that gave up may retry as yet another new member; this bounds them.
NEW_MEMBER_JOIN_TIMEOUT_MS = 300_000
AUTHORIZED_OPERATIONS_OMITTED = -(1 << 31)  # INT32_MIN: "not computed" (KIP-430)
GROUP_TYPE_CLASSIC = "classic"
# A session timer that fires this close to (or past) its deadline expires the member; earlier
# than that it re-arms for the rest (heartbeats move the deadline, not the timer).
_TIMER_SLACK_S = 0.001


def commit_response(topics: list[dict[str, Any]], errors: dict[tuple[str, int], int]) -> dict:
    """An OffsetCommit/TxnOffsetCommit response: each requested partition with its error."""
    return {"topics": [
        {"name": t["name"], "partitions": [
            {"partition_index": p["partition_index"],
             "error_code": errors.get((t["name"], p["partition_index"]), NONE)}
            for p in t["partitions"]]}
        for t in topics]}


class GroupState(enum.Enum):
    """Kafka's group states; the values are the names DescribeGroups and ListGroups report."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


EMPTY = GroupState.EMPTY
PREPARING_REBALANCE = GroupState.PREPARING_REBALANCE
COMPLETING_REBALANCE = GroupState.COMPLETING_REBALANCE
STABLE = GroupState.STABLE
DEAD = GroupState.DEAD


# ----------------------------------------------------------------------------------------------
# Results handed to parked requests (built into a response for the request's own version)


@dataclass
class _JoinResult:
    error: int
    member_id: str
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)
    skip_assignment: bool = False


@dataclass
class _SyncResult:
    error: int
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


def _join_response(r: _JoinResult, version: int) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "error_code": r.error,
        "generation_id": r.generation_id,
        # Non-nullable before v7: a null there breaks clients (doc pitfall 8.12).
        "protocol_name": r.protocol_name if version >= 7 else (r.protocol_name or ""),
        "leader": r.leader,
        "member_id": r.member_id,
        "members": [{"member_id": m, "group_instance_id": i, "metadata": md}
                    for m, i, md in r.members],
    }
    if version >= 7:
        resp["protocol_type"] = r.protocol_type
    if version >= 9:
        resp["skip_assignment"] = r.skip_assignment
    return resp


def _sync_response(r: _SyncResult, version: int) -> dict[str, Any]:
    resp: dict[str, Any] = {"error_code": r.error, "assignment": r.assignment}
    if version >= 5:
        resp["protocol_type"] = r.protocol_type
        resp["protocol_name"] = r.protocol_name
    return resp


# ----------------------------------------------------------------------------------------------
# Group and member state


@dataclass(eq=False)
class _Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    is_new: bool = False  # joined and not yet through a completed join
    join_future: asyncio.Future[_JoinResult] | None = None
    sync_future: asyncio.Future[_SyncResult] | None = None
    deadline: float = 0.0  # clock() time at which the session expires
    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0  # clock() time at which ``timer`` fires

    def metadata(self, protocol: str | None) -> bytes:
        for name, md in self.protocols:
            if name == protocol:
                return md
        return b""

    def names(self) -> set[str]:
        return {name for name, _ in self.protocols}


class _Group:
    """One group's membership. Members keep join order (the first joiner leads)."""

    def __init__(self, group_id: str, now_ms: int) -> None:
        self.group_id = group_id
        self.state = EMPTY
        # Store time (ms) at which the group last became Empty: offsets expire only once a
        # group has been Empty for offsets.retention.minutes (KIP-211).
        self.empty_since_ms = now_ms
        self.generation_id = 0
        self.protocol_type: str | None = None  # kept after the last member leaves, as Kafka
        self.protocol_name: str | None = None
        self.leader_id: str | None = None
        self.members: dict[str, _Member] = {}
        self.static_members: dict[str, str] = {}  # group_instance_id -> member_id
        self.pending: dict[str, asyncio.TimerHandle] = {}  # told MEMBER_ID_REQUIRED, not back yet
        self.pending_sync: set[str] = set()
        self.new_member_added = False
        self.join_timer: asyncio.TimerHandle | None = None
        self.join_initial = False  # the join timer is group.initial.rebalance.delay.ms
        self.join_remaining_ms = 0
        self.sync_timer: asyncio.TimerHandle | None = None

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_joined(self) -> bool:
        return not self.pending and all(m.join_future is not None for m in self.members.values())

    def is_static_fenced(self, instance_id: str | None, member_id: str) -> bool:
        if instance_id is None:
            return False
        current = self.static_members.get(instance_id)
        return current is not None and current != member_id

    def supports(self, protocol_type: str, names: list[str], joining: _Member | None) -> bool:
        """Kafka's supportsProtocols: the type matches and one of ``names`` is supported by
        every other member. The joining member's own old protocols do not count, so a sole
        member may switch assignors."""
        if not _valid_protocols(protocol_type, names):
            return False
        if not self.members:
            return True
        if protocol_type != self.protocol_type:
            return False
        others = [m.names() for m in self.members.values() if m is not joining]
        return any(all(n in o for o in others) for n in names)

    def select_protocol(self) -> str:
        """Among the protocols every member supports, each member votes for the first in its own
        order; the most votes win, ties going to the earliest voter's choice."""
        members = list(self.members.values())
        candidates = set.intersection(*(m.names() for m in members)) if members else set()
        votes: dict[str, int] = {}
        for m in members:
            for name, _ in m.protocols:
                if name in candidates:
                    votes[name] = votes.get(name, 0) + 1
                    break
        if not votes:  # unreachable while supports() guards every join; stay defined anyway
            return members[0].protocols[0][0] if members and members[0].protocols else ""
        return max(votes, key=votes.__getitem__)

    def add(self, member: _Member) -> None:
        if not self.members:
            self.protocol_type = member.protocol_type
        if self.leader_id is None:
            self.leader_id = member.member_id
        self.members[member.member_id] = member
        if member.group_instance_id is not None:
            self.static_members[member.group_instance_id] = member.member_id

    def remove(self, member: _Member) -> None:
        if self.members.get(member.member_id) is member:
            del self.members[member.member_id]
        if member.timer is not None:
            member.timer.cancel()
            member.timer = None
        iid = member.group_instance_id
        if iid is not None and self.static_members.get(iid) == member.member_id:
            del self.static_members[iid]
        if self.leader_id == member.member_id:
            self.leader_id = next(iter(self.members), None)
        self.pending_sync.discard(member.member_id)


def _valid_protocols(protocol_type: str, names: list[str]) -> bool:
    """What any group, even an empty one, asks of a JoinGroup: a protocol type and at least
    one protocol."""
    return bool(protocol_type) and bool(names)


@dataclass
class _JoinSpec:
    """What a JoinGroup asks for, past validation."""

    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    version: int

    def names(self) -> list[str]:
        return [name for name, _ in self.protocols]


# An answer now, or a parked request's future answer.
_JoinOutcome = _JoinResult | asyncio.Future[_JoinResult]
_SyncOutcome = _SyncResult | asyncio.Future[_SyncResult]


# ----------------------------------------------------------------------------------------------
# The coordinator


class GroupCoordinator:
    """Kafka's classic group coordinator over a :class:`kstore.Store`.

    ``clock`` returns seconds (``time.monotonic`` by default). Session deadlines are measured
    with it while the timers are the event loop's: a session expires when its timer fires and
    ``clock()`` has reached the deadline (a clock that stands still keeps sessions alive; one
    that runs ahead expires them at the next firing). Methods never raise for a protocol
    error: they answer with its code. Call them only on the loop's thread.
    """

    def __init__(self, store: Store, *, clock: Callable[[], float] | None = None,
                 initial_rebalance_delay_ms: int = 3000, min_session_timeout_ms: int = 6000,
                 max_session_timeout_ms: int = 1_800_000) -> None:
        self._store = store
        self._clock: Callable[[], float] = clock or time.monotonic
        self.initial_rebalance_delay_ms = initial_rebalance_delay_ms
        self.min_session_timeout_ms = min_session_timeout_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self._groups: dict[str, _Group] = {}
        self._closed = False
        # Groups this coordinator never saw count as active since it started (offset expiry).
        self._started_ms = store.now_ms()

    # ==========================================================================================
    # JoinGroup

    async def join_group(self, req: dict[str, Any], version: int, client_id: str,
                         client_host: str) -> dict[str, Any]:
        """JoinGroup (v0-9). Parks until the rebalance completes when the member must wait."""
        out = self._join(req, version, client_id, client_host)
        result = await out if isinstance(out, asyncio.Future) else out
        return _join_response(result, version)

    def _join(self, req: dict[str, Any], version: int, client_id: str,
              client_host: str) -> _JoinOutcome:
        group_id: str = req["group_id"]
        member_id: str = req["member_id"] or ""
        instance_id: str | None = (req["group_instance_id"] or None) if version >= 5 else None
        if self._closed:
            return _JoinResult(COORDINATOR_NOT_AVAILABLE, member_id)
        if not group_id:
            return _JoinResult(INVALID_GROUP_ID, member_id)
        session_ms: int = req["session_timeout_ms"]
        if not self.min_session_timeout_ms <= session_ms <= self.max_session_timeout_ms:
            return _JoinResult(INVALID_SESSION_TIMEOUT, member_id)
        # v0 has no rebalance timeout; Kafka uses the session timeout (KafkaApis).
        rebalance_ms = session_ms if version == 0 else max(req["rebalance_timeout_ms"], 0)
        protocol_type: str = req["protocol_type"] or ""
        protocols = [(p["name"], bytes(p["metadata"])) for p in req["protocols"]]
        spec = _JoinSpec(client_id, client_host, session_ms, rebalance_ms, protocol_type,
                         protocols, version)
        group = self._groups.get(group_id)
        if not member_id:
            if group is None:
                # Create the group only for a join it would accept: a refused one (no protocols,
                # no protocol type) must not leave an Empty group behind for ListGroups.
                if not _valid_protocols(spec.protocol_type, spec.names()):
                    return _JoinResult(INCONSISTENT_GROUP_PROTOCOL, "")
                group = self._groups[group_id] = _Group(group_id, self._store.now_ms())
            result = self._join_new_member(group, instance_id, spec)
        else:
            if group is None:
                return _JoinResult(UNKNOWN_MEMBER_ID, member_id)
            result = self._join_current_member(group, member_id, instance_id, spec)
        self._try_complete_join(group)
        return result

    def _join_new_member(self, group: _Group, instance_id: str | None,
                         spec: _JoinSpec) -> _JoinOutcome:
        if group.state is DEAD:
            return _JoinResult(COORDINATOR_NOT_AVAILABLE, "")
        if not group.supports(spec.protocol_type, spec.names(), None):
            return _JoinResult(INCONSISTENT_GROUP_PROTOCOL, "")
        new_id = f"{instance_id or spec.client_id}-{uuid.uuid4()}"
        if instance_id is not None:
            old_id = group.static_members.get(instance_id)
            if old_id is not None and old_id in group.members:
                return self._replace_static_member(group, instance_id, old_id, new_id, spec)
            return self._add_member_and_rebalance(group, new_id, instance_id, spec)
        if spec.version >= 4:
            # KIP-394: the client learns its id first and rejoins with it, so a client that
            # retries after a timeout does not leave a stray member behind.
            self._add_pending(group, new_id, spec.session_timeout_ms)
            return _JoinResult(MEMBER_ID_REQUIRED, new_id)
        return self._add_member_and_rebalance(group, new_id, None, spec)

    def _join_current_member(self, group: _Group, member_id: str, instance_id: str | None,
                             spec: _JoinSpec) -> _JoinOutcome:
        if group.state is DEAD:
            return _JoinResult(COORDINATOR_NOT_AVAILABLE, member_id)
        member = group.members.get(member_id)
        if not group.supports(spec.protocol_type, spec.names(), member):
            return _JoinResult(INCONSISTENT_GROUP_PROTOCOL, member_id)
        if member_id in group.pending:
            return self._add_member_and_rebalance(group, member_id, None, spec)
        if group.is_static_fenced(instance_id, member_id):
            return _JoinResult(FENCED_INSTANCE_ID, member_id)
        if member is None or (instance_id is not None and instance_id not in group.static_members):
            return _JoinResult(UNKNOWN_MEMBER_ID, member_id)
        same = member.protocols == spec.protocols
        if group.state is PREPARING_REBALANCE:
            return self._update_member_and_rebalance(group, member, spec)
        if group.state is COMPLETING_REBALANCE:
            if same:  # it missed the JoinGroup response: answer again for this generation
                return self._current_result(group, member, group.leader_id == member_id)
            return self._update_member_and_rebalance(group, member, spec)
        if group.state is STABLE:
            # The leader's JoinGroup always rebalances: it is how a leader reacts to changes
            # that leave member metadata alone (new partitions of a subscribed topic).
            if group.leader_id == member_id or not same:
                return self._update_member_and_rebalance(group, member, spec)
            return self._current_result(group, member, False)
        return _JoinResult(UNKNOWN_MEMBER_ID, member_id)  # Empty: no member can be current

    def _current_result(self, group: _Group, member: _Member, with_members: bool) -> _JoinResult:
        self._touch(group, member)
        return _JoinResult(NONE, member.member_id, group.generation_id, group.protocol_type,
                           group.protocol_name, group.leader_id or "",
                           self._member_metadata(group) if with_members else [])

    def _member_metadata(self, group: _Group) -> list[tuple[str, str | None, bytes]]:
        return [(m.member_id, m.group_instance_id, m.metadata(group.protocol_name))
                for m in group.members.values()]

    def _add_member_and_rebalance(self, group: _Group, member_id: str, instance_id: str | None,
                                  spec: _JoinSpec) -> asyncio.Future[_JoinResult]:
        handle = group.pending.pop(member_id, None)
        if handle is not None:
            handle.cancel()
        member = _Member(member_id, instance_id, spec.client_id, spec.client_host,
                         spec.session_timeout_ms, spec.rebalance_timeout_ms,
                         spec.protocol_type, spec.protocols, is_new=True)
        if group.state is PREPARING_REBALANCE and group.join_initial:
            group.new_member_added = True
        group.add(member)
        fut = self._park_join(member)
        self._touch(group, member, NEW_MEMBER_JOIN_TIMEOUT_MS)
        self._maybe_prepare_rebalance(group, f"member {member_id} joined")
        return fut

    def _update_member_and_rebalance(self, group: _Group, member: _Member,
                                     spec: _JoinSpec) -> asyncio.Future[_JoinResult]:
        member.protocols = spec.protocols
        member.session_timeout_ms = spec.session_timeout_ms
        member.rebalance_timeout_ms = spec.rebalance_timeout_ms
        fut = self._park_join(member)
        self._touch(group, member)
        self._maybe_prepare_rebalance(group, f"member {member.member_id} rejoined")
        return fut

    def _replace_static_member(self, group: _Group, instance_id: str, old_id: str, new_id: str,
                               spec: _JoinSpec) -> _JoinOutcome:
        """KIP-345: a static member restarted (member id "" with a known instance id). It takes
        over the old member's place under a new id; the old id is fenced from now on."""
        old_leader = group.leader_id
        member = group.members.pop(old_id)
        self._resolve_join(member, _JoinResult(FENCED_INSTANCE_ID, old_id))
        self._resolve_sync(member, _SyncResult(FENCED_INSTANCE_ID))
        member.member_id = new_id
        group.members[new_id] = member
        group.static_members[instance_id] = new_id
        if group.leader_id == old_id:
            group.leader_id = new_id
        if old_id in group.pending_sync:
            group.pending_sync.discard(old_id)
            group.pending_sync.add(new_id)
        member.client_id, member.client_host = spec.client_id, spec.client_host
        member.protocols = spec.protocols
        member.session_timeout_ms = spec.session_timeout_ms
        member.rebalance_timeout_ms = spec.rebalance_timeout_ms
        self._touch(group, member)
        fut = self._park_join(member)
        if group.state is STABLE:
            # Kafka rebalances only if the protocol the group would select changes: the
            # subscription bytes of a restarted consumer differ anyway (owned partitions,
            # generation), and avoiding that rebalance is the point of static membership.
            if group.select_protocol() == group.protocol_name:
                leads = group.leader_id == new_id
                if spec.version >= 9 and leads:
                    # The leader learns it leads but must not reassign a stable group.
                    result = _JoinResult(NONE, new_id, group.generation_id, group.protocol_type,
                                         group.protocol_name, new_id,
                                         self._member_metadata(group), skip_assignment=True)
                else:
                    # Before v9, naming the old leader id keeps a restarted leader from running
                    # an assignment that a stable group would not hand out.
                    result = _JoinResult(NONE, new_id, group.generation_id, group.protocol_type,
                                         group.protocol_name, old_leader or "")
                self._resolve_join(member, result)
            else:
                self._prepare_rebalance(group, f"static member {instance_id} changed protocols")
        elif group.state is COMPLETING_REBALANCE:
            self._prepare_rebalance(group, f"static member {instance_id} rejoined")
        return fut

    def _add_pending(self, group: _Group, member_id: str, session_ms: int) -> None:
        loop = asyncio.get_running_loop()
        group.pending[member_id] = loop.call_later(
            session_ms / 1000, self._expire_pending, group, member_id)

    def _expire_pending(self, group: _Group, member_id: str) -> None:
        if group.pending.pop(member_id, None) is not None:
            log.info("group %s: pending member %s did not rejoin within its session timeout",
                     group.group_id, member_id)
            self._try_complete_join(group)
            self._drop_if_unused(group)

    def _drop_if_unused(self, group: _Group) -> None:
        """Forget a group that a v4+ join created (MEMBER_ID_REQUIRED) but whose pending
        member never came back: no generation, no members, nobody pending and no commits.
        Kafka's offset expiry task removes such groups too; ListGroups must not show them."""
        if (group.state is EMPTY and group.generation_id == 0 and not group.members
                and not group.pending and self._groups.get(group.group_id) is group
                and not self._store._load_committed().get(group.group_id)):
            log.info("group %s: forgotten (no member ever joined, no commits)", group.group_id)
            self._forget(group)

    # ==========================================================================================
    # The rebalance: PreparingRebalance -> CompletingRebalance (or Empty)

    def _maybe_prepare_rebalance(self, group: _Group, reason: str) -> None:
        if group.state in (STABLE, COMPLETING_REBALANCE, EMPTY):
            self._prepare_rebalance(group, reason)

    def _prepare_rebalance(self, group: _Group, reason: str) -> None:
        log.info("group %s: preparing to rebalance (generation %d): %s", group.group_id,
                 group.generation_id, reason)
        if group.state is COMPLETING_REBALANCE:
            # Members waiting for the leader's assignment must rejoin instead.
            for m in group.members.values():
                m.assignment = b""
                self._resolve_sync(m, _SyncResult(REBALANCE_IN_PROGRESS))
        self._cancel_sync_timer(group)
        group.pending_sync.clear()
        if group.state is EMPTY:
            # group.initial.rebalance.delay.ms: let a whole fleet of starting consumers into
            # the first generation instead of rebalancing once per arrival.
            delay_ms = self.initial_rebalance_delay_ms
            group.join_initial = True
            group.new_member_added = False
            group.join_remaining_ms = max(group.rebalance_timeout_ms() - delay_ms, 0)
        else:
            delay_ms = group.rebalance_timeout_ms()
            group.join_initial = False
        group.state = PREPARING_REBALANCE
        self._arm_join_timer(group, delay_ms)
        self._try_complete_join(group)

    def _arm_join_timer(self, group: _Group, delay_ms: int) -> None:
        if group.join_timer is not None:
            group.join_timer.cancel()
        loop = asyncio.get_running_loop()
        group.join_timer = loop.call_later(delay_ms / 1000, self._on_join_timer, group)

    def _on_join_timer(self, group: _Group) -> None:
        group.join_timer = None
        if group.state is not PREPARING_REBALANCE:
            return
        if group.join_initial and group.new_member_added and group.join_remaining_ms > 0:
            # Someone joined during the delay: wait again, within the rebalance timeout.
            group.new_member_added = False
            delay_ms = min(self.initial_rebalance_delay_ms, group.join_remaining_ms)
            group.join_remaining_ms -= delay_ms
            self._arm_join_timer(group, delay_ms)
            return
        self._complete_join(group)

    def _try_complete_join(self, group: _Group) -> None:
        if (group.state is PREPARING_REBALANCE and not group.join_initial
                and group.all_joined()):
            self._complete_join(group)

    def _complete_join(self, group: _Group) -> None:
        """Kafka's onCompleteJoin: drop dynamic members that did not rejoin, start the next
        generation and answer every parked JoinGroup (only the leader gets the members)."""
        if group.join_timer is not None:
            group.join_timer.cancel()
            group.join_timer = None
        group.join_initial = False
        for m in list(group.members.values()):
            # Static members stay: they leave only by session expiry or LeaveGroup (KIP-345).
            if m.join_future is None and m.group_instance_id is None:
                log.info("group %s: removing member %s, which did not rejoin in time",
                         group.group_id, m.member_id)
                self._drop_member(group, m)
        if group.members and not any(m.join_future is not None for m in group.members.values()):
            # Only static members that did not rejoin: wait for their sessions to expire.
            self._arm_join_timer(group, group.rebalance_timeout_ms())
            return
        leader = group.members.get(group.leader_id or "")
        if group.members and (leader is None or leader.join_future is None):
            # The leader did not rejoin: any member that did leads instead.
            group.leader_id = next(m.member_id for m in group.members.values()
                                   if m.join_future is not None)
        group.generation_id += 1
        group.pending_sync.clear()
        if not group.members:
            group.protocol_name = None
            group.leader_id = None
            group.state = EMPTY
            group.empty_since_ms = self._store.now_ms()
            log.info("group %s: empty at generation %d", group.group_id, group.generation_id)
            return
        group.protocol_name = group.select_protocol()
        group.state = COMPLETING_REBALANCE
        log.info("group %s: generation %d with %d members, protocol %s, leader %s",
                 group.group_id, group.generation_id, len(group.members), group.protocol_name,
                 group.leader_id)
        everyone = self._member_metadata(group)
        for m in list(group.members.values()):
            leads = m.member_id == group.leader_id
            self._resolve_join(m, _JoinResult(
                NONE, m.member_id, group.generation_id, group.protocol_type, group.protocol_name,
                group.leader_id or "", everyone if leads else []))
            m.is_new = False
            self._touch(group, m)
            group.pending_sync.add(m.member_id)
        self._arm_sync_timer(group)

    # ==========================================================================================
    # SyncGroup

    async def sync_group(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """SyncGroup (v0-5). A follower in CompletingRebalance parks until the leader syncs."""
        out = self._sync(req, version)
        result = await out if isinstance(out, asyncio.Future) else out
        return _sync_response(result, version)

    def _sync(self, req: dict[str, Any], version: int) -> _SyncOutcome:
        group_id: str = req["group_id"]
        member_id: str = req["member_id"]
        instance_id = (req["group_instance_id"] or None) if version >= 3 else None
        if self._closed:
            return _SyncResult(COORDINATOR_NOT_AVAILABLE)
        if not group_id:
            return _SyncResult(INVALID_GROUP_ID)
        group = self._groups.get(group_id)
        if group is None:
            return _SyncResult(UNKNOWN_MEMBER_ID)
        if group.state is DEAD:
            return _SyncResult(COORDINATOR_NOT_AVAILABLE)
        if group.is_static_fenced(instance_id, member_id):
            return _SyncResult(FENCED_INSTANCE_ID)
        member = group.members.get(member_id)
        if member is None:
            return _SyncResult(UNKNOWN_MEMBER_ID)
        if req["generation_id"] != group.generation_id:
            return _SyncResult(ILLEGAL_GENERATION)
        if version >= 5:
            ptype, pname = req["protocol_type"], req["protocol_name"]
            if ((ptype is not None and ptype != group.protocol_type)
                    or (pname is not None and pname != group.protocol_name)):
                return _SyncResult(INCONSISTENT_GROUP_PROTOCOL)
        if group.state is EMPTY:
            return _SyncResult(UNKNOWN_MEMBER_ID)
        if group.state is PREPARING_REBALANCE:
            return _SyncResult(REBALANCE_IN_PROGRESS)
        self._remove_pending_sync(group, member_id)
        self._touch(group, member)
        if group.state is STABLE:
            return _SyncResult(NONE, member.assignment, group.protocol_type, group.protocol_name)
        # CompletingRebalance
        fut = self._park_sync(member)
        if member_id == group.leader_id:
            given = {a["member_id"]: bytes(a["assignment"]) for a in req["assignments"]}
            group.state = STABLE
            log.info("group %s: stable at generation %d", group.group_id, group.generation_id)
            for m in group.members.values():
                # Members the leader left out get a zero-length assignment (pitfall 8.12).
                m.assignment = given.get(m.member_id, b"")
                self._resolve_sync(m, _SyncResult(NONE, m.assignment, group.protocol_type,
                                                  group.protocol_name))
                self._touch(group, m)
        return fut

    def _arm_sync_timer(self, group: _Group) -> None:
        self._cancel_sync_timer(group)
        loop = asyncio.get_running_loop()
        group.sync_timer = loop.call_later(group.rebalance_timeout_ms() / 1000,
                                           self._on_sync_timer, group, group.generation_id)

    def _cancel_sync_timer(self, group: _Group) -> None:
        if group.sync_timer is not None:
            group.sync_timer.cancel()
            group.sync_timer = None

    def _remove_pending_sync(self, group: _Group, member_id: str) -> None:
        group.pending_sync.discard(member_id)
        if not group.pending_sync:
            self._cancel_sync_timer(group)

    def _on_sync_timer(self, group: _Group, generation_id: int) -> None:
        """Members that did not sync within the rebalance timeout are removed and the others
        rebalance without them (Kafka's onExpirePendingSync)."""
        group.sync_timer = None
        if (generation_id != group.generation_id or group.state not in (COMPLETING_REBALANCE, STABLE)
                or not group.pending_sync):
            return
        late = sorted(group.pending_sync)
        for member_id in late:
            m = group.members.get(member_id)
            if m is not None:
                self._drop_member(group, m)
        self._prepare_rebalance(group, f"members {late} did not sync in time")

    # ==========================================================================================
    # Heartbeat, LeaveGroup, session expiry

    def heartbeat(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """Heartbeat (v0-4): restarts the session; 27 in PreparingRebalance tells it to rejoin."""
        return {"error_code": self._heartbeat(req, version)}

    def _heartbeat(self, req: dict[str, Any], version: int) -> int:
        group_id: str = req["group_id"]
        member_id: str = req["member_id"]
        instance_id = (req["group_instance_id"] or None) if version >= 3 else None
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE
        if not group_id:
            return INVALID_GROUP_ID
        group = self._groups.get(group_id)
        if group is None:
            return UNKNOWN_MEMBER_ID
        if group.state is DEAD:
            return COORDINATOR_NOT_AVAILABLE
        if group.is_static_fenced(instance_id, member_id):
            return FENCED_INSTANCE_ID
        member = group.members.get(member_id)
        if member is None:
            return UNKNOWN_MEMBER_ID
        if req["generation_id"] != group.generation_id:
            return ILLEGAL_GENERATION
        if group.state is EMPTY:
            return UNKNOWN_MEMBER_ID
        self._touch(group, member)
        return REBALANCE_IN_PROGRESS if group.state is PREPARING_REBALANCE else NONE

    def leave_group(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """LeaveGroup: v0-2 one member_id; v3+ a batch with an error per member, where a member
        named only by group_instance_id is removed administratively."""
        if version >= 3:
            leaving = [(m["member_id"] or "", m["group_instance_id"]) for m in req["members"]]
        else:
            leaving = [(req["member_id"] or "", None)]
        top, errors = self._leave(req["group_id"], leaving)
        if version >= 3:
            return {"error_code": top, "members": [
                {"member_id": mid, "group_instance_id": iid, "error_code": err}
                for (mid, iid), err in zip(leaving, errors)]}
        # v0-2 carry one member, so its error is the answer (LeaveGroupResponse.getError).
        return {"error_code": top or next((e for e in errors if e), NONE)}

    def _leave(self, group_id: str, leaving: list[tuple[str, str | None]]) -> tuple[int, list[int]]:
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE, []
        if not group_id:
            return INVALID_GROUP_ID, []
        group = self._groups.get(group_id)
        if group is None:
            return NONE, [UNKNOWN_MEMBER_ID] * len(leaving)
        if group.state is DEAD:
            return COORDINATOR_NOT_AVAILABLE, []
        errors = []
        for member_id, instance_id in leaving:
            if not member_id:
                current = group.static_members.get(instance_id or "")
                if instance_id is None or current is None:
                    errors.append(UNKNOWN_MEMBER_ID)
                    continue
                member_id = current
            elif member_id in group.pending:
                group.pending.pop(member_id).cancel()
                self._try_complete_join(group)
                self._drop_if_unused(group)
                errors.append(NONE)
                continue
            elif group.is_static_fenced(instance_id, member_id):
                errors.append(FENCED_INSTANCE_ID)
                continue
            member = group.members.get(member_id)
            if member is None:
                errors.append(UNKNOWN_MEMBER_ID)
                continue
            self._remove_member(group, member, "left the group")
            errors.append(NONE)
        return NONE, errors

    def _touch(self, group: _Group, member: _Member, timeout_ms: int | None = None) -> None:
        """(Re)start a member's session (Kafka's completeAndScheduleNextHeartbeatExpiration).

        A heartbeat only moves the deadline; the one timer re-arms itself when it fires early,
        and is replaced only when the deadline moves earlier than it."""
        timeout = member.session_timeout_ms if timeout_ms is None else timeout_ms
        now = self._clock()
        member.deadline = now + timeout / 1000
        if member.timer is not None:
            if member.timer_due <= member.deadline:
                return
            member.timer.cancel()
        self._arm_session(group, member, timeout / 1000, now)

    def _arm_session(self, group: _Group, member: _Member, delay_s: float, now: float) -> None:
        member.timer_due = now + delay_s
        member.timer = asyncio.get_running_loop().call_later(
            delay_s, self._on_session_timer, group, member)

    def _on_session_timer(self, group: _Group, member: _Member) -> None:
        member.timer = None
        if group.members.get(member.member_id) is not member:
            return
        now = self._clock()
        left = member.deadline - now
        if left > _TIMER_SLACK_S:
            self._arm_session(group, member, left, now)
            return
        if not member.is_new and (member.join_future is not None
                                  or member.sync_future is not None):
            # A member parked in JoinGroup or SyncGroup cannot heartbeat; it counts as alive
            # (MemberMetadata.hasSatisfiedHeartbeat) and the rebalance timers bound the wait.
            self._touch(group, member)
            return
        log.info("group %s: member %s expired (no heartbeat for %d ms)", group.group_id,
                 member.member_id, member.session_timeout_ms)
        self._remove_member(group, member, "session timeout")

    def _remove_member(self, group: _Group, member: _Member, reason: str) -> None:
        """Kafka's removeMemberAndUpdateGroup: remove, then rebalance the others."""
        self._drop_member(group, member)
        if group.state in (STABLE, COMPLETING_REBALANCE):
            self._prepare_rebalance(group, f"member {member.member_id}: {reason}")
        self._try_complete_join(group)

    def _drop_member(self, group: _Group, member: _Member) -> None:
        """Remove a member without rebalancing; a request it has parked gets 25 (the client
        rejoins as a new member if it is still alive)."""
        self._resolve_join(member, _JoinResult(UNKNOWN_MEMBER_ID, ""))
        self._resolve_sync(member, _SyncResult(UNKNOWN_MEMBER_ID))
        group.remove(member)

    # ==========================================================================================
    # Parking

    def _park_join(self, member: _Member) -> asyncio.Future[_JoinResult]:
        # A second JoinGroup from the same member supersedes the first (Kafka overwrites the
        # callback); answer the first so its coroutine does not wait forever.
        self._resolve_join(member, _JoinResult(REBALANCE_IN_PROGRESS, member.member_id))
        fut: asyncio.Future[_JoinResult] = asyncio.get_running_loop().create_future()
        member.join_future = fut
        return fut

    def _park_sync(self, member: _Member) -> asyncio.Future[_SyncResult]:
        self._resolve_sync(member, _SyncResult(REBALANCE_IN_PROGRESS))
        fut: asyncio.Future[_SyncResult] = asyncio.get_running_loop().create_future()
        member.sync_future = fut
        return fut

    @staticmethod
    def _resolve_join(member: _Member, result: _JoinResult) -> None:
        fut, member.join_future = member.join_future, None
        if fut is not None and not fut.done():  # done: its request was cancelled
            fut.set_result(result)

    @staticmethod
    def _resolve_sync(member: _Member, result: _SyncResult) -> None:
        fut, member.sync_future = member.sync_future, None
        if fut is not None and not fut.done():
            fut.set_result(result)

    # ==========================================================================================
    # OffsetCommit and OffsetFetch

    def offset_commit(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """OffsetCommit (v0-8): an error per partition. Valid partitions are committed with one
        ``store.commit_offsets`` call."""
        group_id: str = req["group_id"]
        generation: int = req["generation_id_or_member_epoch"] if version >= 1 else -1
        member_id: str = (req["member_id"] or "") if version >= 1 else ""
        instance_id = (req["group_instance_id"] or None) if version >= 7 else None
        errors: dict[tuple[str, int], int] = {}
        known: list[tuple[str, dict[str, Any]]] = []
        for t in req["topics"]:
            count = self._partition_count(t["name"])
            for p in t["partitions"]:
                if count is None or not 0 <= p["partition_index"] < count:
                    errors[(t["name"], p["partition_index"])] = UNKNOWN_TOPIC_OR_PARTITION
                else:
                    known.append((t["name"], p))
        group_error = self._commit_error(group_id, generation, member_id, instance_id)
        commits: dict[tuple[str, int], tuple[int, str, int]] = {}
        for topic, p in known:
            tp = (topic, p["partition_index"])
            if group_error:
                errors[tp] = group_error
                continue
            metadata: str = p["committed_metadata"] or ""
            try:
                size = len(metadata.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates: the store could not write it
                errors[tp] = INVALID_REQUEST
                continue
            if size > OFFSET_METADATA_MAX_BYTES:
                errors[tp] = OFFSET_METADATA_TOO_LARGE
                continue
            offset: int = p["committed_offset"]
            # Store.commit_offsets refuses the whole batch for one bad partition; checking here
            # keeps each error on its own partition.
            try:
                self._store.partition(*tp)
            except KStoreError as exc:
                errors[tp] = exc.code
                continue
            if offset < 0:
                errors[tp] = OFFSET_OUT_OF_RANGE
                continue
            epoch: int = p["committed_leader_epoch"] if version >= 6 else -1
            commits[tp] = (offset, metadata, epoch)
        if commits:
            try:
                # Past the log end too, as Kafka takes them (the embedded API does not).
                self._store.commit_offsets(group_id, commits, _past_log_end=True)
            except KStoreError as exc:
                log.warning("group %s: committing offsets failed: %s", group_id, exc)
                for tp in commits:
                    errors[tp] = exc.code
        return commit_response(req["topics"], errors)

    def _partition_count(self, topic: str) -> int | None:
        # Not store.partitions_for alone: with auto_create_topics it would create the topic,
        # and a commit must never create one (Kafka answers 3).
        try:
            if topic not in self._store.topics(internal=True):
                return None
            return self._store.partitions_for(topic)
        except UnknownTopicOrPartitionError:
            return None

    def _commit_error(self, group_id: str, generation: int, member_id: str,
                      instance_id: str | None) -> int:
        """The group-level checks of an OffsetCommit (doc section 4.4)."""
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE
        if not group_id:
            return INVALID_GROUP_ID  # the store keeps no offsets for group ""
        group = self._groups.get(group_id)
        if group is None:
            # No group here: a "simple" consumer (manual assignment) commits with
            # generation -1; anything else comes from a generation that no longer exists.
            if generation >= 0:
                return ILLEGAL_GENERATION
            return UNKNOWN_MEMBER_ID if member_id or instance_id is not None else NONE
        if group.state is DEAD:
            return COORDINATOR_NOT_AVAILABLE
        if generation >= 0 or member_id or instance_id is not None:
            if instance_id is not None:
                current = group.static_members.get(instance_id)
                if current is None:
                    return UNKNOWN_MEMBER_ID
                if current != member_id:
                    return FENCED_INSTANCE_ID
            elif member_id not in group.members:
                return UNKNOWN_MEMBER_ID
            if generation != group.generation_id:
                return ILLEGAL_GENERATION
        elif group.state is not EMPTY:
            return UNKNOWN_MEMBER_ID  # only members commit to a group that has members
        if group.state is COMPLETING_REBALANCE:
            return REBALANCE_IN_PROGRESS
        member = group.members.get(member_id)
        if member is not None:
            self._touch(group, member)
        return NONE

    def offset_fetch(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """OffsetFetch: v0-7 one group (topics None from v2: every committed partition), v8
        batched by groups[]. Served in every group state; no commit gives offset -1."""
        if version >= 8:
            out = []
            for g in req["groups"]:
                topics, error = self._fetch_offsets(g["group_id"], g["topics"], version)
                out.append({"group_id": g["group_id"], "topics": topics, "error_code": error})
            return {"groups": out}
        topics, error = self._fetch_offsets(req["group_id"], req["topics"], version)
        resp: dict[str, Any] = {"topics": topics}
        if version >= 2:
            resp["error_code"] = error
        return resp

    def _fetch_offsets(self, group_id: str, wanted: list[dict[str, Any]] | None,
                       version: int) -> tuple[list[dict[str, Any]], int]:
        error = COORDINATOR_NOT_AVAILABLE if self._closed else NONE
        # A copy: the store's maintenance thread may expire offsets meanwhile.
        committed = {} if error else dict(self._store._load_committed().get(group_id, {}))
        if wanted is None:
            by_topic: dict[str, list[int]] = {}
            for name, idx in sorted(committed):
                by_topic.setdefault(name, []).append(idx)
            wanted = [{"name": n, "partition_indexes": ps} for n, ps in by_topic.items()]
        topics = []
        for t in wanted:
            parts = []
            for idx in t["partition_indexes"]:
                c = committed.get((t["name"], idx))
                parts.append({
                    "partition_index": idx,
                    "committed_offset": -1 if c is None else c.offset,
                    "committed_leader_epoch": -1 if c is None else c.leader_epoch,
                    "metadata": "" if c is None else c.metadata,
                    # Before v2 there is no group-level error: it goes on every partition.
                    "error_code": error if version < 2 else NONE,
                })
            topics.append({"name": t["name"], "partitions": parts})
        return topics, error

    # ==========================================================================================
    # ListGroups, DescribeGroups, DeleteGroups

    def list_groups(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """ListGroups (v0-5): groups with members here plus groups that only have committed
        offsets (Empty). states_filter (v4+) is case-insensitive, as in Kafka."""
        if self._closed:
            return {"error_code": COORDINATOR_NOT_AVAILABLE, "groups": []}
        states = {s.lower() for s in req["states_filter"]} if version >= 4 else set()
        types = {s.lower() for s in req["types_filter"]} if version >= 5 else set()
        if types and GROUP_TYPE_CLASSIC not in types:
            return {"error_code": NONE, "groups": []}
        listed: dict[str, tuple[str, str]] = {}
        for gid, g in self._groups.items():
            if g.state is not DEAD:
                listed[gid] = (g.protocol_type or "", g.state.value)
        for gid, entries in list(self._store._load_committed().items()):
            if entries:
                listed.setdefault(gid, ("", EMPTY.value))
        return {"error_code": NONE, "groups": [
            {"group_id": gid, "protocol_type": ptype, "group_state": state,
             "group_type": GROUP_TYPE_CLASSIC}
            for gid, (ptype, state) in sorted(listed.items())
            if not states or state.lower() in states]}

    def describe_groups(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """DescribeGroups (v0-5). An unknown group is error 0, "Dead", no members. As in Kafka,
        member metadata, assignments and protocol_data are filled only when Stable."""
        out = []
        for gid in req["groups"]:
            d = self._describe(gid)
            if version >= 3:
                d["authorized_operations"] = AUTHORIZED_OPERATIONS_OMITTED
            out.append(d)
        return {"groups": out}

    def _describe(self, group_id: str) -> dict[str, Any]:
        d: dict[str, Any] = {"error_code": NONE, "group_id": group_id,
                             "group_state": DEAD.value, "protocol_type": "",
                             "protocol_data": "", "members": []}
        if self._closed:
            d["error_code"] = COORDINATOR_NOT_AVAILABLE
            return d
        g = self._groups.get(group_id)
        if g is None or g.state is DEAD:
            if self._store._load_committed().get(group_id):
                d["group_state"] = EMPTY.value
            return d
        stable = g.state is STABLE
        d["group_state"] = g.state.value
        d["protocol_type"] = g.protocol_type or ""
        d["protocol_data"] = (g.protocol_name or "") if stable else ""
        d["members"] = [
            {"member_id": m.member_id, "group_instance_id": m.group_instance_id,
             "client_id": m.client_id, "client_host": m.client_host,
             "member_metadata": m.metadata(g.protocol_name) if stable else b"",
             "member_assignment": m.assignment if stable else b""}
            for m in g.members.values()]
        return d

    def delete_groups(self, req: dict[str, Any], version: int) -> dict[str, Any]:
        """DeleteGroups (v0-2): 68 while the group has members, 69 if nothing is known of it;
        otherwise its committed offsets are tombstoned and it is forgotten."""
        return {"results": [{"group_id": gid, "error_code": self._delete(gid)}
                            for gid in req["groups_names"]]}

    def _delete(self, group_id: str) -> int:
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE
        g = self._groups.get(group_id)
        if g is not None and g.state not in (EMPTY, DEAD):
            return NON_EMPTY_GROUP
        if g is None and not self._store._load_committed().get(group_id):
            return GROUP_ID_NOT_FOUND
        try:
            self._store.delete_group_offsets(group_id)
        except KStoreError as exc:
            log.warning("group %s: deleting its offsets failed: %s", group_id, exc)
            return exc.code
        if g is not None:
            self._forget(g)
        log.info("group %s: deleted", group_id)
        return NONE

    def _forget(self, group: _Group) -> None:
        group.state = DEAD
        for handle in group.pending.values():
            handle.cancel()
        group.pending.clear()
        for timer in (group.join_timer, group.sync_timer):
            if timer is not None:
                timer.cancel()
        group.join_timer = group.sync_timer = None
        if self._groups.get(group.group_id) is group:
            del self._groups[group.group_id]

    # ==========================================================================================
    # Life cycle

    def group_activity(self) -> tuple[dict[str, int], int]:
        """For ``Store.group_activity_hooks`` (offset expiry, KIP-211): ({group: last active,
        store ms}, when this coordinator started). A group with members, or on its way to
        having some (pending members, a rebalance under way), is active now; an Empty group
        was last active when it became Empty. Groups not named here (never seen since the
        start: a restart, standalone consumers) count as active at the start time.

        Safe to call from another thread (the store's maintenance thread does): it reads a
        snapshot and changes nothing."""
        now = self._store.now_ms()
        out: dict[str, int] = {}
        for gid, g in list(self._groups.items()):
            state = g.state
            if state is DEAD:
                continue
            if g.members or g.pending or state is not EMPTY:
                out[gid] = now
            else:
                out[gid] = g.empty_since_ms
        return out, self._started_ms

    async def close(self) -> None:
        """Stop: cancel every timer and answer every parked JoinGroup and SyncGroup with
        COORDINATOR_NOT_AVAILABLE (clients look for the coordinator again). Later calls answer
        15 too. Offsets are already in the store; nothing else needs saving."""
        if self._closed:
            return
        self._closed = True
        for g in list(self._groups.values()):
            for m in list(g.members.values()):
                self._resolve_join(m, _JoinResult(COORDINATOR_NOT_AVAILABLE, m.member_id))
                self._resolve_sync(m, _SyncResult(COORDINATOR_NOT_AVAILABLE))
                if m.timer is not None:
                    m.timer.cancel()
                    m.timer = None
            self._forget(g)
        # Let the parked coroutines turn their answers into responses before we return.
        await asyncio.sleep(0)
