"""Local authorization: the Local Authorization List, the Authorization Cache, and the rule that uses them.

Pure; time comes in as `now` (aware UTC datetime). OCPP 1.6 references:
§3.5.1 Authorization Cache, §3.5.2 Local Authorization List, §3.5.3 how the two
relate, §3.5.4 Unknown Offline Authorization, §5.15 SendLocalList,
§5.10 GetLocalListVersion, §5.4 ClearCache.

idTags are CiString20Type (the IdToken type): they are compared case-insensitively
and kept in the spelling the backend sent.

Decisions (the spec leaves these open):
- Only Accepted, unexpired entries are valid; ConcurrentTx in a list or cache counts as not valid.
- GetLocalListVersion reports 0 while the list is empty (§5.10: "0 = the list is empty"),
  whatever version the update that emptied it carried; a Differential update must carry
  a version greater than the reported one (the UpdateStatus VersionMismatch otherwise).
- A Full update whose listVersion is below 1 with a non-empty list fails: 0 and -1 have
  their own meaning in GetLocalListVersion.
- A Differential update with an empty list changes no entry but does take the new version.
- Offline, a tag found in the list or cache with a status other than Accepted (or expired)
  is rejected, never let through as "unknown" (§3.5.4). A valid tag found while
  LocalAuthorizeOffline is false counts as unknown (it is not refused where a truly
  unknown tag would be let in).
- Online, a tag that is not valid locally is still put to the backend: the backend owns
  the list and may have changed its mind.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.clock import parse_wire_time, wire_time
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.ocpp_config import OcppConfiguration

ID_TAG_MAX_CHARS = 20  # the IdToken type is CiString20Type


class LocalAuthError(GatewayError):
    """A malformed idTagInfo or snapshot; an update carrying one fails as a whole."""


class AuthorizationStatus(enum.Enum):
    """The AuthorizationStatus type of OCPP 1.6, values as on the wire."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"


class UpdateType(enum.Enum):
    """The UpdateType of SendLocalList.req (OCPP 1.6 §5.15)."""

    FULL = "Full"
    DIFFERENTIAL = "Differential"


class UpdateStatus(enum.Enum):
    """SendLocalList.conf status (OCPP 1.6 §5.15)."""

    ACCEPTED = "Accepted"
    FAILED = "Failed"
    NOT_SUPPORTED = "NotSupported"  # never answered: the gateway supports local lists
    VERSION_MISMATCH = "VersionMismatch"


def _key(id_tag: str) -> str:
    return id_tag.lower()  # CiString: printable ASCII, case-insensitive


def _id_tag(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= ID_TAG_MAX_CHARS:
        raise LocalAuthError(f"idTag must be a string of 1..{ID_TAG_MAX_CHARS} characters")
    return value


@dataclass(frozen=True)
class IdTagInfo:
    """What the backend says about an idTag (the IdTagInfo type of OCPP 1.6)."""

    status: AuthorizationStatus
    expiry_date: datetime | None = None
    parent_id_tag: str | None = None

    @classmethod
    def from_wire(cls, payload: Mapping[str, Any]) -> IdTagInfo:
        """From the camelCase idTagInfo object of a conf or a SendLocalList entry."""
        try:
            status = AuthorizationStatus(payload["status"])
            expiry = payload.get("expiryDate")
            parent = payload.get("parentIdTag")
            return cls(
                status,
                parse_wire_time(expiry) if expiry is not None else None,
                _id_tag(parent) if parent is not None else None,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise LocalAuthError(f"malformed idTagInfo: {exc}") from exc

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value}
        if self.expiry_date is not None:
            out["expiryDate"] = wire_time(self.expiry_date)
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        return out

    def at(self, now: datetime) -> IdTagInfo:
        """This info as it stands at `now`: an Accepted entry past its expiryDate is Expired (§3.5.1)."""
        if self.status is AuthorizationStatus.ACCEPTED and self.expiry_date is not None and self.expiry_date <= now:
            return replace(self, status=AuthorizationStatus.EXPIRED)
        return self

    def is_valid(self, now: datetime) -> bool:
        return self.at(now).status is AuthorizationStatus.ACCEPTED


def _entry_to_wire(id_tag: str, info: IdTagInfo) -> dict[str, Any]:
    return {"idTag": id_tag, "idTagInfo": info.to_wire()}


class LocalList:
    """The Local Authorization List (§3.5.2): idTag -> IdTagInfo, replaced or patched only by SendLocalList."""

    def __init__(self) -> None:
        self._version = 0
        self._entries: dict[str, tuple[str, IdTagInfo]] = {}  # lowercased idTag -> (idTag as sent, info)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, id_tag: str) -> bool:
        return _key(id_tag) in self._entries

    @property
    def version(self) -> int:
        """GetLocalListVersion.conf listVersion (§5.10): 0 while the list is empty."""
        return self._version if self._entries else 0

    def lookup(self, id_tag: str) -> IdTagInfo | None:
        """The stored info, as sent (use `.at(now)` for expiry); None when the tag is not on the list."""
        entry = self._entries.get(_key(id_tag))
        return entry[1] if entry else None

    def apply(
        self,
        update_type: UpdateType | str,
        list_version: int,
        entries: Sequence[Mapping[str, Any]] | None,
        max_length: int,
        *,
        send_max_length: int | None = None,
    ) -> UpdateStatus:
        """SendLocalList.req (§5.15), all or nothing: the list changes only when Accepted is returned.

        `entries` is localAuthorizationList as on the wire ([{idTag, idTagInfo?}]);
        `max_length` is LocalAuthListMaxLength, `send_max_length` SendLocalListMaxLength.
        """
        try:
            kind = UpdateType(update_type)
        except ValueError:
            return UpdateStatus.FAILED
        items = list(entries or ())
        if send_max_length is not None and len(items) > send_max_length:
            return UpdateStatus.FAILED
        if kind is UpdateType.DIFFERENTIAL and list_version <= self.version:
            return UpdateStatus.VERSION_MISMATCH
        try:
            parsed = self._parse(items, full=kind is UpdateType.FULL)
        except LocalAuthError:
            return UpdateStatus.FAILED
        if kind is UpdateType.FULL:
            new = {k: entry for k, entry in parsed.items() if entry is not None}
        else:
            new = dict(self._entries)
            for k, entry in parsed.items():
                if entry is None:  # Differential without idTagInfo: remove the tag (§5.15)
                    new.pop(k, None)
                else:
                    new[k] = entry
        if len(new) > max_length or (new and list_version < 1):
            return UpdateStatus.FAILED
        self._entries, self._version = new, list_version
        return UpdateStatus.ACCEPTED

    @staticmethod
    def _parse(items: Iterable[Mapping[str, Any]], *, full: bool) -> dict[str, tuple[str, IdTagInfo] | None]:
        parsed: dict[str, tuple[str, IdTagInfo] | None] = {}
        for item in items:
            if not isinstance(item, Mapping):
                raise LocalAuthError("list entry is not an object")
            id_tag = _id_tag(item.get("idTag"))
            if _key(id_tag) in parsed:  # §5.15: idTags in one request MUST be unique
                raise LocalAuthError(f"idTag {id_tag!r} twice in one update")
            raw_info = item.get("idTagInfo")
            if raw_info is None and full:  # AuthorizationData type: idTagInfo is required in a Full update
                raise LocalAuthError(f"idTag {id_tag!r} without idTagInfo in a Full update")
            parsed[_key(id_tag)] = (id_tag, IdTagInfo.from_wire(raw_info)) if raw_info is not None else None
        return parsed

    def to_json(self) -> dict[str, Any]:
        return {"version": self._version, "entries": [_entry_to_wire(t, i) for t, i in self._entries.values()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalList:
        out = cls()
        try:
            out._version = int(data["version"])
            out._entries = {k: e for k, e in cls._parse(data["entries"], full=True).items() if e is not None}
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalAuthError(f"malformed local list snapshot: {exc}") from exc
        return out


@dataclass
class _CacheEntry:
    id_tag: str
    info: IdTagInfo
    last_used: datetime


class AuthCache:
    """The Authorization Cache (§3.5.1): what the backend last said about each idTag, bounded, LRU."""

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("cache capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, id_tag: str) -> bool:
        return _key(id_tag) in self._entries

    def update(self, id_tag: str, info: IdTagInfo, now: datetime, *, local_list: LocalList) -> None:
        """Record the idTagInfo of an Authorize/StartTransaction/StopTransaction.conf (§3.5.1).

        A tag on the local list is not cached: the two are distinct, and the list wins (§3.5.3).
        The caller checks AuthorizationCacheEnabled.
        """
        if id_tag in local_list:
            return
        key = _key(id_tag)
        if key not in self._entries and len(self._entries) >= self.capacity:
            self._evict(now)
        self._entries[key] = _CacheEntry(id_tag, info, now)
        self._entries.move_to_end(key)

    def lookup(self, id_tag: str, now: datetime) -> IdTagInfo | None:
        """The info as it stands at `now`, marking the entry as used; None when the tag is not cached.

        An entry found past its expiryDate is changed to Expired in the cache (§3.5.1).
        """
        key = _key(id_tag)
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.info = entry.info.at(now)
        entry.last_used = now
        self._entries.move_to_end(key)
        return entry.info

    def peek(self, id_tag: str) -> IdTagInfo | None:
        """The stored info without marking it used; None when the tag is not cached."""
        entry = self._entries.get(_key(id_tag))
        return entry.info if entry else None

    def clear(self) -> None:
        """ClearCache.req (§5.4)."""
        self._entries.clear()

    def _evict(self, now: datetime) -> None:
        # §3.5.1: when full, first drop entries that are no longer valid, then the least recently used.
        victim = next((k for k, e in self._entries.items() if not e.info.is_valid(now)), None)
        if victim is None:
            victim = next(iter(self._entries))
        del self._entries[victim]

    def to_json(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "entries": [
                {**_entry_to_wire(e.id_tag, e.info), "lastUsed": wire_time(e.last_used)}
                for e in self._entries.values()
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuthCache:
        try:
            out = cls(int(data["capacity"]))
            for item in data["entries"]:
                id_tag = _id_tag(item["idTag"])
                entry = _CacheEntry(id_tag, IdTagInfo.from_wire(item["idTagInfo"]), parse_wire_time(item["lastUsed"]))
                out._entries[_key(id_tag)] = entry
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalAuthError(f"malformed cache snapshot: {exc}") from exc
        return out


@dataclass(frozen=True)
class AuthFlags:
    """The configuration keys that steer local authorization (§9.1, §9.2)."""

    local_authorize_offline: bool = True
    local_pre_authorize: bool = False
    allow_offline_tx_for_unknown_id: bool = False
    authorization_cache_enabled: bool = True
    local_auth_list_enabled: bool = True

    @classmethod
    def from_config(cls, config: OcppConfiguration) -> AuthFlags:
        return cls(
            local_authorize_offline=config.bool_value("LocalAuthorizeOffline"),
            local_pre_authorize=config.bool_value("LocalPreAuthorize"),
            allow_offline_tx_for_unknown_id=config.bool_value("AllowOfflineTxForUnknownId"),
            authorization_cache_enabled=config.bool_value("AuthorizationCacheEnabled"),
            local_auth_list_enabled=config.bool_value("LocalAuthListEnabled"),
        )


class DecisionKind(enum.Enum):
    ACCEPT = "accept"  # start now, without waiting for the backend
    REJECT = "reject"
    ASK_BACKEND = "ask_backend"  # send Authorize.req and act on its answer


class Source(enum.Enum):
    LIST = "list"
    CACHE = "cache"
    OFFLINE_UNKNOWN = "offline-unknown"  # let in by AllowOfflineTxForUnknownId (§3.5.4)
    BACKEND = "backend"  # the decision is the backend's
    NONE = "none"  # nothing vouches for the tag


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    id_tag_info: IdTagInfo | None  # what the list or cache said (at `now`), if anything
    source: Source

    @property
    def parent_id_tag(self) -> str | None:
        return self.id_tag_info.parent_id_tag if self.id_tag_info else None


def known_info(
    id_tag: str, now: datetime, flags: AuthFlags, local_list: LocalList, cache: AuthCache
) -> tuple[IdTagInfo | None, Source]:
    """What the enabled local stores say about a tag, at `now`: the list first (§3.5.3), then the cache."""
    if flags.local_auth_list_enabled:
        listed = local_list.lookup(id_tag)
        if listed is not None:
            return listed.at(now), Source.LIST
    if flags.authorization_cache_enabled:
        cached = cache.lookup(id_tag, now)
        if cached is not None:
            return cached, Source.CACHE
    return None, Source.NONE


def decide(
    id_tag: str, now: datetime, online: bool, flags: AuthFlags, local_list: LocalList, cache: AuthCache
) -> Decision:
    """Whether a presented idTag may start charging now, must wait for the backend, or is refused.

    Marks a cache entry it reads as used (LRU, §3.5.1).
    """
    info, source = known_info(id_tag, now, flags, local_list, cache)
    valid = info is not None and info.status is AuthorizationStatus.ACCEPTED
    if online:
        # §9.1 LocalPreAuthorize: a locally valid tag starts at once; the
        # backend still sees it in StartTransaction.
        if valid and flags.local_pre_authorize:
            return Decision(DecisionKind.ACCEPT, info, source)
        return Decision(DecisionKind.ASK_BACKEND, info, Source.BACKEND)
    if info is not None and not valid:
        return Decision(DecisionKind.REJECT, info, source)  # §3.5.4: known and not valid is never "unknown"
    if valid and flags.local_authorize_offline:
        return Decision(DecisionKind.ACCEPT, info, source)
    if flags.allow_offline_tx_for_unknown_id:
        return Decision(DecisionKind.ACCEPT, None, Source.OFFLINE_UNKNOWN)
    return Decision(DecisionKind.REJECT, info, Source.NONE)


def parent_id_tag_of(id_tag: str, local_list: LocalList, cache: AuthCache) -> str | None:
    """The parentIdTag the list or cache knows for a tag (for reservations, §3.11, §5.13); None when unknown."""
    info = local_list.lookup(id_tag) or cache.peek(id_tag)
    return info.parent_id_tag if info else None
