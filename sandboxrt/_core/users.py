"""Resolving an exec's ``user`` against a container's ``/etc/passwd`` and ``/etc/group``.

Pure: the exec'd process reads both files inside the container (beneath its
root, never the host's) and hands their text here. The rules are runc's
(``GetExecUser``), which Docker shares:

* ``user`` is ``USER`` or ``USER:GROUP``; each is a name or a number;
* ``USER`` matches the first passwd entry with that name or uid: its uid and
  primary gid are taken. A number matching no entry is taken as is (gid 0);
  a name matching none is an error;
* without ``GROUP``, a user found in passwd gets the gids of every group that
  lists it as a member as supplementary groups;
* ``GROUP`` matches the first group entry with that name or gid, else must be
  a number; it replaces the gid and there are no supplementary groups.

Standard library only.
"""

from __future__ import annotations

import dataclasses

__all__ = ["MAX_ID", "ResolvedUser", "home_of", "parse_user_spec", "resolve_user"]

#: The largest uid or gid (``(uid_t)-1`` is "no change" to the kernel).
MAX_ID = 2**32 - 2


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def parse_user_spec(user: str) -> tuple[str, str]:
    """``(USER, GROUP)`` of ``"USER[:GROUP]"`` (GROUP may be empty); ``ValueError`` if malformed."""
    parts = user.split(":")
    bad = len(parts) > 2 or any(
        not p or any(c in p for c in "\0\n,") or p != p.strip() for p in parts
    )
    if bad:
        raise ValueError(f"user must be 'user' or 'user:group' (names or ids), not {user!r}")
    for part in parts:
        number = _number(part)
        if number is not None and number > MAX_ID:
            raise ValueError(f"user {user!r}: ids must be between 0 and {MAX_ID}")
    return parts[0], parts[1] if len(parts) > 1 else ""


def _entries(text: str, fields: int) -> list[list[str]]:
    """The well-formed lines of a passwd/group file, split on ``:`` (comments skipped)."""
    found = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields and _number(parts[2]) is not None:
            found.append(parts)
    return found


def resolve_user(user: str, passwd: str, group: str) -> ResolvedUser:
    """Resolve ``user`` (``"USER[:GROUP]"``) with the text of ``/etc/passwd`` and
    ``/etc/group``; ``LookupError`` names a user or group that is neither found nor numeric."""
    user_part, group_part = parse_user_spec(user)
    entry = next(
        (e for e in _entries(passwd, 4) if user_part in (e[0], e[2]) and _number(e[3]) is not None),
        None,
    )
    if entry is not None:
        uid, gid, name = int(entry[2]), int(entry[3]), entry[0]
    else:
        number = _number(user_part)
        if number is None:
            raise LookupError(f"no user {user_part!r} in the container's /etc/passwd")
        uid, gid, name = number, 0, ""
    if not group_part and not name:
        return ResolvedUser(uid, gid)
    groups = _entries(group, 3)
    if not group_part:
        member = [int(g[2]) for g in groups if len(g) > 3 and name in g[3].split(",")]
        return ResolvedUser(uid, gid, tuple(dict.fromkeys(member)))
    matched = next((g for g in groups if group_part in (g[0], g[2])), None)
    if matched is not None:
        return ResolvedUser(uid, int(matched[2]))
    number = _number(group_part)
    if number is None:
        raise LookupError(f"no group {group_part!r} in the container's /etc/group")
    return ResolvedUser(uid, number)


def home_of(uid: int, passwd: str) -> str:
    """The home directory of ``uid`` in the text of ``/etc/passwd``; ``/`` when it has
    none there (as runc sets ``HOME``)."""
    for entry in _entries(passwd, 6):
        if int(entry[2]) == uid and entry[5]:
            return entry[5]
    return "/"
