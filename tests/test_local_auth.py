"""Local Authorization List, Authorization Cache and the decision rule (OCPP 1.6 §3.5, §5.10, §5.15)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.local_auth import (
    AuthCache,
    AuthFlags,
    AuthorizationStatus,
    DecisionKind,
    IdTagInfo,
    LocalAuthError,
    LocalList,
    Source,
    UpdateStatus,
    UpdateType,
    decide,
    known_info,
    parent_id_tag_of,
)
from gateway.ocpp_config import OcppConfiguration

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
ACCEPTED = {"status": "Accepted"}


def entry(tag: str, status: str = "Accepted", **extra: str) -> dict:
    return {"idTag": tag, "idTagInfo": {"status": status, **extra}}


def tags(n: int, prefix: str = "TAG") -> list[dict]:
    return [entry(f"{prefix}{i:05d}") for i in range(n)]


def full_list(items: list[dict], version: int = 1) -> LocalList:
    lst = LocalList()
    assert lst.apply("Full", version, items, 1000) is UpdateStatus.ACCEPTED
    return lst


# --- IdTagInfo ---------------------------------------------------------------------


def test_id_tag_info_wire_round_trip_and_expiry() -> None:
    wire = {"status": "Accepted", "expiryDate": "2026-05-01T13:00:00.000Z", "parentIdTag": "FLEET"}
    info = IdTagInfo.from_wire(wire)
    assert info.to_wire() == wire
    assert info.is_valid(NOW)
    assert info.at(NOW + timedelta(hours=1)).status is AuthorizationStatus.EXPIRED
    assert not info.is_valid(NOW + timedelta(hours=2))
    blocked = IdTagInfo(AuthorizationStatus.BLOCKED, expiry_date=LATER)
    assert blocked.at(LATER + timedelta(1)).status is AuthorizationStatus.BLOCKED


@pytest.mark.parametrize("wire", [{}, {"status": "Maybe"}, {"status": "Accepted", "expiryDate": "soon"},
                                  {"status": "Accepted", "parentIdTag": "X" * 21}])
def test_id_tag_info_malformed(wire: dict) -> None:
    with pytest.raises(LocalAuthError):
        IdTagInfo.from_wire(wire)


# --- LocalList: SendLocalList / GetLocalListVersion --------------------------------


def test_empty_list_reports_version_zero() -> None:
    assert LocalList().version == 0


def test_full_of_1000_then_differentials() -> None:
    lst = full_list(tags(1000), version=7)
    assert len(lst) == 1000 and lst.version == 7
    assert "tag00042" in lst  # CiString: case-insensitive
    # Differential: add one, block one, remove one (no idTagInfo)
    update = [entry("NEW1"), entry("TAG00001", "Blocked"), {"idTag": "TAG00002"}]
    assert lst.apply(UpdateType.DIFFERENTIAL, 8, update, 1001) is UpdateStatus.ACCEPTED
    assert len(lst) == 1000 and lst.version == 8
    blocked = lst.lookup("TAG00001")
    assert blocked is not None and blocked.status is AuthorizationStatus.BLOCKED
    assert lst.lookup("TAG00002") is None
    assert lst.lookup("new1") is not None


def test_full_over_max_length_fails_and_changes_nothing() -> None:
    lst = full_list(tags(3), version=2)
    assert lst.apply("Full", 3, tags(1001), 1000) is UpdateStatus.FAILED
    assert len(lst) == 3 and lst.version == 2


def test_differential_over_max_length_fails() -> None:
    lst = full_list(tags(1000))
    assert lst.apply("Differential", 2, [entry("ONE-TOO-MANY")], 1000) is UpdateStatus.FAILED
    assert lst.version == 1 and "ONE-TOO-MANY" not in lst
    # replacing an existing tag does not grow the list
    assert lst.apply("Differential", 2, [entry("TAG00000", "Expired")], 1000) is UpdateStatus.ACCEPTED


def test_send_local_list_max_length() -> None:
    lst = LocalList()
    assert lst.apply("Full", 1, tags(11), 1000, send_max_length=10) is UpdateStatus.FAILED
    assert lst.apply("Full", 1, tags(10), 1000, send_max_length=10) is UpdateStatus.ACCEPTED


@pytest.mark.parametrize("version", [4, 5])
def test_differential_needs_a_higher_version(version: int) -> None:
    lst = full_list(tags(2), version=5)
    assert lst.apply("Differential", version, [entry("X")], 1000) is UpdateStatus.VERSION_MISMATCH
    assert "X" not in lst


def test_full_may_go_back_in_version() -> None:
    lst = full_list(tags(2), version=5)
    assert lst.apply("Full", 3, tags(1), 1000) is UpdateStatus.ACCEPTED
    assert lst.version == 3 and len(lst) == 1


def test_full_with_empty_list_clears_and_version_reads_zero() -> None:
    lst = full_list(tags(5), version=5)
    assert lst.apply("Full", 6, None, 1000) is UpdateStatus.ACCEPTED
    assert len(lst) == 0 and lst.version == 0
    assert lst.apply("Differential", 1, [entry("A")], 1000) is UpdateStatus.ACCEPTED  # 1 > reported 0
    assert lst.version == 1


def test_differential_without_entries_only_takes_the_version() -> None:
    lst = full_list(tags(2), version=1)
    assert lst.apply("Differential", 2, [], 1000) is UpdateStatus.ACCEPTED
    assert len(lst) == 2 and lst.version == 2


@pytest.mark.parametrize("update_type,items,version", [
    ("Full", [entry("A"), entry("a")], 1),                 # duplicate idTag (case-insensitive)
    ("Full", [{"idTag": "A"}], 1),                          # Full needs idTagInfo
    ("Full", [entry("A", "Sometimes")], 1),                 # bad status
    ("Full", [entry("A", expiryDate="tomorrow")], 1),       # bad date
    ("Full", [entry("X" * 21)], 1),                         # idTag longer than 20
    ("Full", [{"idTagInfo": ACCEPTED}], 1),                 # no idTag
    ("Full", ["A"], 1),                                     # not an object
    ("Full", [entry("A")], 0),                              # version 0 means "empty"
    ("Partial", [entry("A")], 1),                           # unknown update type
    ("Differential", [entry("A"), {"idTag": "A"}], 9),      # duplicate in a differential
])
def test_malformed_update_fails_atomically(update_type: str, items: list, version: int) -> None:
    lst = full_list(tags(3), version=1)
    before = lst.to_json()
    assert lst.apply(update_type, version, items, 1000) is UpdateStatus.FAILED
    assert lst.to_json() == before


def test_local_list_json_round_trip() -> None:
    items = tags(1000) + [entry("PARENTED", "Accepted", parentIdTag="FLEET", expiryDate="2026-06-01T00:00:00.000Z")]
    lst = LocalList()
    assert lst.apply("Full", 42, items, 2000) is UpdateStatus.ACCEPTED
    snapshot = json.loads(json.dumps(lst.to_json()))
    again = LocalList.from_json(snapshot)
    assert again.version == 42 and len(again) == 1001
    assert again.to_json() == lst.to_json()
    assert again.lookup("PARENTED") == lst.lookup("PARENTED")
    with pytest.raises(LocalAuthError):
        LocalList.from_json({"version": 1})


@settings(max_examples=60, deadline=None)
@given(st.lists(
    st.tuples(st.sampled_from(["A", "B", "C", "D", "E", "F"]), st.sampled_from(["Accepted", "Blocked", None])),
    max_size=12,
))
def test_differentials_match_a_dict_model(ops: list[tuple[str, str | None]]) -> None:
    lst = full_list([entry("A"), entry("B", "Expired")])
    model = {"a": "Accepted", "b": "Expired"}
    for n, (tag, status) in enumerate(ops, start=2):
        item = {"idTag": tag} if status is None else entry(tag, status)
        after = {**model, tag.lower(): status} if status else {k: v for k, v in model.items() if k != tag.lower()}
        expected_size = len(after)
        result = lst.apply("Differential", n, [item], 4)
        if expected_size > 4:
            assert result is UpdateStatus.FAILED
            continue
        assert result is UpdateStatus.ACCEPTED
        if status is None:
            model.pop(tag.lower(), None)
        else:
            model[tag.lower()] = status
        for t in "ABCDEF":
            found = lst.lookup(t)
            assert (found.status.value if found else None) == model.get(t.lower())
        assert lst.version == (n if model else 0)


# --- AuthCache ------------------------------------------------------------------------


def info(status: AuthorizationStatus = AuthorizationStatus.ACCEPTED, expiry: datetime | None = None) -> IdTagInfo:
    return IdTagInfo(status, expiry)


def test_cache_skips_tags_on_the_local_list() -> None:
    lst = full_list([entry("LISTED")])
    cache = AuthCache()
    cache.update("listed", info(AuthorizationStatus.BLOCKED), NOW, local_list=lst)
    cache.update("OTHER", info(), NOW, local_list=lst)
    assert "LISTED" not in cache and "other" in cache


def test_cache_lru_eviction_prefers_invalid_entries() -> None:
    empty = LocalList()
    cache = AuthCache(capacity=3)
    cache.update("A", info(), NOW, local_list=empty)
    cache.update("B", info(AuthorizationStatus.BLOCKED), NOW + timedelta(seconds=1), local_list=empty)
    cache.update("C", info(), NOW + timedelta(seconds=2), local_list=empty)
    cache.update("D", info(), NOW + timedelta(seconds=3), local_list=empty)
    assert "B" not in cache and len(cache) == 3  # the blocked one went first, though A is older
    cache.lookup("A", NOW + timedelta(seconds=4))  # A is now the most recently used
    cache.update("E", info(), NOW + timedelta(seconds=5), local_list=empty)
    assert "C" not in cache and {"A", "D", "E"} <= {t for t in "ACDE" if t in cache}


def test_cache_eviction_counts_expired_as_invalid() -> None:
    empty = LocalList()
    cache = AuthCache(capacity=2)
    cache.update("OLD", info(), NOW, local_list=empty)
    cache.update("SHORT", info(expiry=NOW + timedelta(minutes=1)), NOW + timedelta(seconds=1), local_list=empty)
    cache.update("NEW", info(), NOW + timedelta(hours=1), local_list=empty)
    assert "SHORT" not in cache and "OLD" in cache


def test_cache_marks_expired_entries() -> None:
    cache = AuthCache()
    cache.update("T", info(expiry=NOW + timedelta(minutes=5)), NOW, local_list=LocalList())
    found = cache.lookup("T", NOW + timedelta(minutes=10))
    assert found is not None and found.status is AuthorizationStatus.EXPIRED
    peeked = cache.peek("T")
    assert peeked is not None and peeked.status is AuthorizationStatus.EXPIRED  # changed in the cache too
    assert cache.lookup("NOPE", NOW) is None


def test_cache_clear_and_json_round_trip() -> None:
    cache = AuthCache(capacity=1500)
    empty = LocalList()
    for i in range(1000):
        accepted = IdTagInfo(AuthorizationStatus.ACCEPTED, LATER, "P")
        cache.update(f"T{i}", accepted, NOW + timedelta(seconds=i), local_list=empty)
    snapshot = json.loads(json.dumps(cache.to_json()))
    again = AuthCache.from_json(snapshot)
    assert again.to_json() == cache.to_json() and len(again) == 1000
    # LRU order survives: the next eviction in both takes T0
    again.capacity = 1000
    again.update("NEW", info(), LATER - timedelta(days=1), local_list=empty)
    assert "T0" not in again and "T1" in again
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(LocalAuthError):
        AuthCache.from_json({"capacity": 0, "entries": []})
    with pytest.raises(ValueError):
        AuthCache(0)


# --- decide ------------------------------------------------------------------------------


ALL_ON = AuthFlags(
    local_authorize_offline=True,
    local_pre_authorize=True,
    allow_offline_tx_for_unknown_id=False,
    authorization_cache_enabled=True,
    local_auth_list_enabled=True,
)


def stores() -> tuple[LocalList, AuthCache]:
    lst = full_list(tags(996) + [  # 1000 entries, LocalAuthListMaxLength
        entry("BLOCKED", "Blocked"),
        entry("GONE", "Accepted", expiryDate="2026-04-01T00:00:00Z"),
        entry("KID", "Accepted", parentIdTag="FAMILY"),
        entry("BOTH", "Blocked"),
    ])
    cache = AuthCache()
    cache.update("CACHED", info(), NOW, local_list=LocalList())
    cache.update("CACHE-INVALID", info(AuthorizationStatus.INVALID), NOW, local_list=LocalList())
    cache.update("BOTH", info(), NOW, local_list=LocalList())  # accepted in the cache, blocked on the list
    return lst, cache


@pytest.mark.parametrize("tag,online,flags,kind,source", [
    # online, LocalPreAuthorize: a locally valid tag starts at once
    ("TAG00500", True, ALL_ON, DecisionKind.ACCEPT, Source.LIST),
    ("CACHED", True, ALL_ON, DecisionKind.ACCEPT, Source.CACHE),
    ("UNKNOWN", True, ALL_ON, DecisionKind.ASK_BACKEND, Source.BACKEND),
    ("BLOCKED", True, ALL_ON, DecisionKind.ASK_BACKEND, Source.BACKEND),
    ("GONE", True, ALL_ON, DecisionKind.ASK_BACKEND, Source.BACKEND),
    # online without LocalPreAuthorize: always the backend
    ("TAG00500", True, AuthFlags(local_pre_authorize=False), DecisionKind.ASK_BACKEND, Source.BACKEND),
    # offline, LocalAuthorizeOffline
    ("TAG00500", False, ALL_ON, DecisionKind.ACCEPT, Source.LIST),
    ("CACHED", False, ALL_ON, DecisionKind.ACCEPT, Source.CACHE),
    ("BLOCKED", False, ALL_ON, DecisionKind.REJECT, Source.LIST),
    ("GONE", False, ALL_ON, DecisionKind.REJECT, Source.LIST),
    ("CACHE-INVALID", False, ALL_ON, DecisionKind.REJECT, Source.CACHE),
    ("BOTH", False, ALL_ON, DecisionKind.REJECT, Source.LIST),  # the list wins over the cache
    ("UNKNOWN", False, ALL_ON, DecisionKind.REJECT, Source.NONE),
    # offline, unknown tags let in
    ("UNKNOWN", False, AuthFlags(allow_offline_tx_for_unknown_id=True), DecisionKind.ACCEPT, Source.OFFLINE_UNKNOWN),
    ("BLOCKED", False, AuthFlags(allow_offline_tx_for_unknown_id=True), DecisionKind.REJECT, Source.LIST),
    ("GONE", False, AuthFlags(allow_offline_tx_for_unknown_id=True), DecisionKind.REJECT, Source.LIST),
    # offline, local authorization off
    ("TAG00500", False, AuthFlags(local_authorize_offline=False), DecisionKind.REJECT, Source.NONE),
    ("TAG00500", False, AuthFlags(local_authorize_offline=False, allow_offline_tx_for_unknown_id=True),
     DecisionKind.ACCEPT, Source.OFFLINE_UNKNOWN),
    # disabled stores are not consulted
    ("TAG00500", False, AuthFlags(local_auth_list_enabled=False), DecisionKind.REJECT, Source.NONE),
    ("CACHED", False, AuthFlags(authorization_cache_enabled=False), DecisionKind.REJECT, Source.NONE),
    ("BOTH", False, AuthFlags(local_auth_list_enabled=False), DecisionKind.ACCEPT, Source.CACHE),
])
def test_decide(tag: str, online: bool, flags: AuthFlags, kind: DecisionKind, source: Source) -> None:
    lst, cache = stores()
    decision = decide(tag, NOW, online, flags, lst, cache)
    assert (decision.kind, decision.source) == (kind, source)


def test_decide_returns_parent_and_info() -> None:
    lst, cache = stores()
    decision = decide("kid", NOW, False, ALL_ON, lst, cache)
    assert decision.kind is DecisionKind.ACCEPT and decision.parent_id_tag == "FAMILY"
    expired = decide("GONE", NOW, False, ALL_ON, lst, cache)
    assert expired.id_tag_info is not None and expired.id_tag_info.status is AuthorizationStatus.EXPIRED
    unknown = decide("UNKNOWN", NOW, False, AuthFlags(allow_offline_tx_for_unknown_id=True), lst, cache)
    assert unknown.parent_id_tag is None


def test_decide_honours_expiry_in_the_cache() -> None:
    lst = LocalList()
    cache = AuthCache()
    cache.update("T", info(expiry=NOW + timedelta(minutes=1)), NOW, local_list=lst)
    assert decide("T", NOW, False, ALL_ON, lst, cache).kind is DecisionKind.ACCEPT
    later = decide("T", NOW + timedelta(minutes=2), False, AuthFlags(allow_offline_tx_for_unknown_id=True), lst, cache)
    assert later.kind is DecisionKind.REJECT  # expired by time: never "unknown" (§3.5.4)


def test_parent_id_tag_of_and_known_info() -> None:
    lst, cache = stores()
    cache.update("CHILD", IdTagInfo(AuthorizationStatus.ACCEPTED, None, "P2"), NOW, local_list=lst)
    assert parent_id_tag_of("KID", lst, cache) == "FAMILY"
    assert parent_id_tag_of("CHILD", lst, cache) == "P2"
    assert parent_id_tag_of("UNKNOWN", lst, cache) is None
    assert known_info("UNKNOWN", NOW, ALL_ON, lst, cache) == (None, Source.NONE)


def test_flags_from_config() -> None:
    config = OcppConfiguration(2)
    config.change("LocalPreAuthorize", "true")
    config.change("AllowOfflineTxForUnknownId", "TRUE")
    flags = AuthFlags.from_config(config)
    assert flags == AuthFlags(
        local_authorize_offline=True,
        local_pre_authorize=True,
        allow_offline_tx_for_unknown_id=True,
        authorization_cache_enabled=True,
        local_auth_list_enabled=True,
    )
