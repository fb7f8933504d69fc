"""The container status rules, as tables and as random operation sequences over real stores.

The expected rules are spelled out here literally (not read back from
``sandboxrt._core.status``), so a wrong table entry fails these tests.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sandboxrt._core.records import ContainerRecord
from sandboxrt._core.status import (
    ALLOWED_BY_OPERATION,
    TRANSITIONS,
    Operation,
    Status,
    can_transition,
    check_transition,
    require,
)
from sandboxrt.errors import ContainerExistsError, ContainerNotFoundError, InvalidStateError
from sandboxrt.stores import FileStore, MemoryStore, MetadataStore

ALL = {"creating", "created", "running", "paused", "stopped"}

EXPECTED_ALLOWED: dict[str, set[str]] = {
    "start": {"created"},
    "exec": {"created", "running"},
    "pause": {"running"},
    "resume": {"paused"},
    "kill": {"created", "running", "paused"},
    "kill-all": {"created", "running", "paused", "stopped"},
    "processes": {"created", "running", "paused", "stopped"},
    "stats": {"created", "running", "paused", "stopped"},
    "files": {"created", "running", "paused"},
    "update": {"created", "running", "paused"},
    "destroy": ALL,
    "add-container": {"created", "running"},  # to the sandbox whose root this is
}

EXPECTED_TRANSITIONS: set[tuple[str, str]] = {
    ("creating", "created"),
    ("created", "running"),
    ("running", "paused"),
    ("paused", "running"),
} | {(old, "stopped") for old in ALL}

#: How each operation reads in "cannot <verb> container ...".
EXPECTED_VERBS = {
    "start": "start",
    "exec": "exec in",
    "pause": "pause",
    "resume": "resume",
    "kill": "kill",
    "kill-all": "kill all processes of",
    "processes": "list the processes of",
    "stats": "read the stats of",
    "files": "use the files of",
    "update": "update",
    "destroy": "destroy",
    "add-container": "add a container to",
}

#: The status an operation leaves behind (None: unchanged; "gone": record deleted).
#: kill is modelled as SIGKILL, so it stops the container.
EFFECT: dict[str, str | None] = {
    "start": "running",
    "exec": None,
    "pause": "paused",
    "resume": "running",
    "kill": "stopped",
    "kill-all": "stopped",
    "processes": None,
    "stats": None,
    "files": None,
    "update": None,
    "destroy": "gone",
    "add-container": None,
}


# -- plain table tests ---------------------------------------------------------------------


def test_operation_table_matches_the_rules() -> None:
    assert {op.value for op in Operation} == set(EXPECTED_ALLOWED)
    for op, allowed in ALLOWED_BY_OPERATION.items():
        assert {s.value for s in allowed} == EXPECTED_ALLOWED[op.value], op


@pytest.mark.parametrize("op", list(Operation))
@pytest.mark.parametrize("status", list(Status))
def test_require_allows_exactly_the_listed_statuses(op: Operation, status: Status) -> None:
    if status.value in EXPECTED_ALLOWED[op.value]:
        require(op, "c1", status)
    else:
        with pytest.raises(InvalidStateError) as info:
            require(op, "c1", status)
        assert str(info.value) == f'cannot {EXPECTED_VERBS[op]} container "c1" in state {status}'
        assert info.value.container_id == "c1"
        assert info.value.status == status.value


def test_start_on_running_message_is_exact() -> None:
    with pytest.raises(InvalidStateError) as info:
        require(Operation.START, "web1", Status.RUNNING)
    assert str(info.value) == 'cannot start container "web1" in state running'
    assert isinstance(info.value, RuntimeError)


def test_transition_table_matches_the_rules() -> None:
    table = {(old.value, new.value) for old, news in TRANSITIONS.items() for new in news}
    assert table == EXPECTED_TRANSITIONS
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize("old", list(Status))
@pytest.mark.parametrize("new", list(Status))
def test_transitions(old: Status, new: Status) -> None:
    legal = (old.value, new.value) in EXPECTED_TRANSITIONS
    assert can_transition(old, new) is legal
    record = _record("c1", old)
    if legal:
        assert check_transition("c1", old, new) is new
        assert record.with_status(new).status is new
    else:
        with pytest.raises(InvalidStateError, match=rf'^cannot .+ container "c1" in state {old}$'):
            check_transition("c1", old, new)
        with pytest.raises(InvalidStateError):
            record.with_status(new)


def test_nothing_returns_to_creating() -> None:
    assert not any(Status.CREATING in news for news in TRANSITIONS.values())


# -- random operation sequences against the stores -------------------------------------------

IDS = st.sampled_from(["web1", "web1", "web1", "db"])  # mostly one, to reach deep statuses


def _record(cid: str, status: Status) -> ContainerRecord:
    return ContainerRecord(
        id=cid,
        bundle=f"/bundles/{cid}",
        spec={"ociVersion": "1.0.2", "process": {"args": ["sh"]}},
        status=status,
        created_at=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )


def run_operation(store: MetadataStore, cid: str, op: Operation) -> None:
    """What the container layer does: lock, load, check, apply, save."""
    with store.lock(cid, timeout=5):
        record = store.load(cid)
        require(op, cid, record.status)
        effect = EFFECT[op.value]
        if effect == "gone":
            store.delete(cid)
        elif effect is not None:
            store.save(record.with_status(Status(effect)))


class StoreStatusMachine(RuleBasedStateMachine):
    """Drives random operations; the model holds each container's legal status history."""

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.history: dict[str, list[str]] = {}

    def make_store(self) -> MetadataStore:
        raise NotImplementedError

    def _status(self, cid: str) -> str:
        return self.history[cid][-1]

    def _moved(self, cid: str, new: str) -> None:
        old = self._status(cid)
        assert old == new or (old, new) in EXPECTED_TRANSITIONS, (old, new)
        self.history[cid].append(new)

    def _create(self, cid: str, *, finish: bool) -> None:
        record = _record(cid, Status.CREATING)
        try:
            with self.store.lock(cid, timeout=5):
                self.store.create(record)
                if finish:
                    self.store.save(record.with_status(Status.CREATED))
        except ContainerExistsError as exc:
            assert cid in self.history
            assert "already exists" in str(exc)
            return
        assert cid not in self.history
        self.history[cid] = ["creating"]
        if finish:
            self._moved(cid, "created")

    @initialize()
    def create_first(self) -> None:
        self._create("web1", finish=True)

    @rule(cid=IDS)
    def create(self, cid: str) -> None:
        self._create(cid, finish=True)

    @rule(cid=IDS)
    def create_interrupted(self, cid: str) -> None:
        """A create that died after writing its first record (left in 'creating')."""
        self._create(cid, finish=False)

    @rule(cid=IDS, op=st.sampled_from(list(Operation)))
    def operate(self, cid: str, op: Operation) -> None:
        """Run any operation: it must succeed exactly when the rules allow it."""
        before = self.history.get(cid, [None])[-1]
        try:
            run_operation(self.store, cid, op)
        except ContainerNotFoundError:
            assert before is None
            return
        except InvalidStateError as exc:
            assert before is not None
            assert before not in EXPECTED_ALLOWED[op.value]
            verb = EXPECTED_VERBS[op.value]
            assert str(exc) == f'cannot {verb} container "{cid}" in state {before}'
            return
        assert before in EXPECTED_ALLOWED[op.value], (op, before)
        effect = EFFECT[op.value]
        if effect == "gone":
            del self.history[cid]
        elif effect is not None:
            self._moved(cid, effect)

    @rule(cid=IDS, data=st.data())
    def advance(self, cid: str, data: st.DataObject) -> None:
        """Run an operation the rules allow now, so that deep statuses are reached."""
        if cid not in self.history:
            return
        allowed = sorted(op for op, ok in EXPECTED_ALLOWED.items() if self._status(cid) in ok)
        lasting = [op for op in allowed if op not in {"kill", "kill-all", "destroy"}]
        self.operate(cid, Operation(data.draw(st.sampled_from(lasting or allowed))))

    @rule(cid=IDS, new=st.sampled_from(list(Status)))
    def change_status(self, cid: str, new: Status) -> None:
        """Any status change the container layer might attempt; STOPPED: the sandbox died."""
        with self.store.lock(cid, timeout=5):
            try:
                record = self.store.load(cid)
            except ContainerNotFoundError:
                assert cid not in self.history
                return
            old = record.status.value
            try:
                changed = record.with_status(new)
            except InvalidStateError as exc:
                assert (old, new.value) not in EXPECTED_TRANSITIONS
                assert re.fullmatch(rf'cannot .+ container "{cid}" in state {old}', str(exc))
                return
            assert (old, new.value) in EXPECTED_TRANSITIONS
            self.store.save(changed)
        self._moved(cid, new.value)

    @rule(cid=IDS)
    def load(self, cid: str) -> None:
        if cid not in self.history:
            with pytest.raises(ContainerNotFoundError):
                self.store.load(cid)
        else:
            record = self.store.load(cid)
            assert record == _record(cid, Status(self._status(cid)))

    @invariant()
    def stored_statuses_follow_legal_paths(self) -> None:
        assert self.store.list_ids() == sorted(self.history)
        for cid, path in self.history.items():
            assert path[0] == "creating"
            for old, new in itertools.pairwise(path):
                assert old == new or (old, new) in EXPECTED_TRANSITIONS
            assert self.store.load(cid).status.value == path[-1]


MACHINE_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@MACHINE_SETTINGS
class FileStoreMachine(StoreStatusMachine):
    def make_store(self) -> MetadataStore:
        self.root = tempfile.mkdtemp(prefix="sandboxrt-test-")
        return FileStore(self.root)

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@MACHINE_SETTINGS
class MemoryStoreMachine(StoreStatusMachine):
    def make_store(self) -> MetadataStore:
        return MemoryStore()


TestFileStoreStatusMachine = FileStoreMachine.TestCase
TestMemoryStoreStatusMachine = MemoryStoreMachine.TestCase
