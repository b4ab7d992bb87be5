"""The host service's audit log: append-only JSON Lines, each record chained to the one before it by SHA-256.

Every record gets ``seq`` (0, 1, 2, ... across all files), ``time`` (UTC, ISO 8601), ``prev`` (the previous
record's hash; 64 zeros for the first) and ``hash``: SHA-256 of the record's canonical JSON (sorted keys, no spaces,
UTF-8) without ``hash``. Each line is that canonical JSON, so a verifier recomputes the hash from the line itself.
:meth:`AuditLog.append` writes the line and fsyncs it before it returns, so a response sent after it is on disk.

Files: the live file is ``PATH``; when the next line would take it past ``max_bytes`` it is renamed to
``PATH.1`` (then ``PATH.2``, ...; the lowest number is the oldest) and a new ``PATH`` is started. The chain runs on
across files: the first record of a new file points at the last record of the previous one.

A crash (``kill -9``, power loss) can leave a torn last line: bytes without their newline, from an append that
never returned, so no response was sent for it. Opening the log cuts that tail off and appends, in the chain, a
record ``{"event": "torn_tail_recovered", "torn_bytes": ..., "torn_sha256": ..., "torn_tail_b64": ...}``, so
the repair is itself on the record and nothing is lost silently. :func:`verify_audit` on a log not yet reopened
reports the torn line as a problem. Anything else that does not fit (a complete line that is not a valid record,
a hash that does not match) stops the log from opening: the service does not write after a damaged chain.

A hash chain shows a changed, deleted, inserted or reordered record; it cannot show records cut off the end, nor a
rewrite of the whole chain by someone with write access. For those, keep the ``head`` (last seq and hash) that
``safeguard audit verify`` prints somewhere the service cannot write.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
    >>> with AuditLog(path) as log:
    ...     first = log.append({"request_id": "r1", "action": "allow"})
    ...     second = log.append({"request_id": "r2", "action": "block"})
    >>> second["seq"], second["prev"] == first["hash"]
    (1, True)
    >>> verify_audit(path).ok
    True
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from safeguard.errors import ConfigError, InputError
from safeguard.server.durable import fsync_dir

__all__ = ["DEFAULT_MAX_BYTES", "GENESIS", "AuditLog", "AuditReport", "canonical_json", "verify_audit"]

GENESIS = "0" * 64
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_CHAIN_FIELDS = ("seq", "time", "prev", "hash")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK = 64 * 1024


def canonical_json(value: Any) -> bytes:
    """The one byte encoding that record hashes are computed over: sorted keys, no spaces, UTF-8, no NaN.

    Example:
        >>> canonical_json({"b": 1, "a": "é"})
        b'{"a":"\\xc3\\xa9","b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _pieces(path: Path) -> list[tuple[int, Path]]:
    """The rotated files ``PATH.1``, ``PATH.2``, ... that exist, oldest first."""
    if not path.parent.is_dir():
        return []
    found = []
    for entry in path.parent.iterdir():
        suffix = entry.name[len(path.name) + 1 :]
        if entry.name.startswith(path.name + ".") and suffix.isdigit() and not suffix.startswith("0"):
            found.append((int(suffix), entry))
    return sorted(found)


def _split_tail(path: Path) -> tuple[bytes | None, bytes]:
    """(the last complete line without its newline or None, the bytes after the last newline) of a file."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        buffer = b""
        start = end
        # Read backwards until the buffer holds the newline that ends the last complete line and the one before it.
        while start > 0:
            start = max(0, start - _TAIL_CHUNK)
            f.seek(start)
            buffer = f.read(end - start)
            last_newline = buffer.rfind(b"\n")
            if last_newline >= 0 and (buffer.rfind(b"\n", 0, last_newline) >= 0 or start == 0):
                break
        last_newline = buffer.rfind(b"\n")
        if last_newline < 0:
            return None, buffer
        line_start = buffer.rfind(b"\n", 0, last_newline) + 1
        return buffer[line_start:last_newline], buffer[last_newline + 1 :]


def _parse_record(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the record, "") if ``line`` is a well-formed self-consistent record, else (None, what is wrong)."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"not valid JSON ({err})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    missing = [f for f in _CHAIN_FIELDS if f not in record]
    if missing:
        return None, f"lacks the chain field(s) {missing}"
    if isinstance(record["seq"], bool) or not isinstance(record["seq"], int) or record["seq"] < 0:
        return None, f"seq is not a non-negative integer: {record['seq']!r}"
    for field in ("prev", "hash"):
        if not isinstance(record[field], str) or not _HEX64.fullmatch(record[field]):
            return None, f"{field} is not 64 hex digits"
    if _record_hash(record) != record["hash"]:
        return None, f"record seq {record['seq']} was changed: its hash does not match its content"
    return record, ""


class AuditLog:
    """Appends hash-chained records to ``path``; thread-safe; one writing process per log (a lock file says so).

    Opening continues the chain from the last record on disk (repairing a torn last line, see the module notes).

    Raises:
        ConfigError: another process holds the log open, ``max_bytes`` is not a positive integer, or the last
            record on disk is damaged.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
        >>> with AuditLog(path, max_bytes=1_000_000) as log:
        ...     log.append({"request_id": "r1"})["seq"]
        0
    """

    def __init__(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"audit max_bytes must be a positive integer, not {max_bytes!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._failed: OSError | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ConfigError(f"{self.path}: another process has this audit log open for writing") from None
        try:
            torn = self._recover()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._size = os.fstat(self._fd).st_size
            fsync_dir(self.path.parent)
            if torn:
                self.append(
                    {
                        "event": "torn_tail_recovered",
                        "torn_bytes": len(torn),
                        "torn_sha256": hashlib.sha256(torn).hexdigest(),
                        "torn_tail_b64": base64.b64encode(torn).decode("ascii"),
                    }
                )
        except BaseException:
            self._lock_file.close()
            raise

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, max_bytes={self.max_bytes})"

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record written; (-1, GENESIS) for an empty log."""
        with self._lock:
            return self._seq, self._prev

    def _recover(self) -> bytes:
        """Set the chain's head from disk; cut off and return a torn last line of the live file (b"" if none)."""
        pieces = _pieces(self.path)
        self._next_piece = pieces[-1][0] + 1 if pieces else 1
        self._seq, self._prev = -1, GENESIS
        torn = b""
        last: bytes | None = None
        if self.path.exists():
            last, torn = _split_tail(self.path)
            if torn:
                size = self.path.stat().st_size
                os.truncate(self.path, size - len(torn))
        if last is None and pieces:
            last, piece_tail = _split_tail(pieces[-1][1])
            if piece_tail:
                # Rotated files are complete and fsynced before the rename; a tail here is damage, not a crash.
                raise ConfigError(f"{pieces[-1][1]}: ends in {len(piece_tail)} bytes without a newline")
        if last is not None:
            record, problem = _parse_record(last)
            if record is None:
                raise ConfigError(f"{self.path}: the last record is damaged ({problem}); run safeguard audit verify")
            self._seq, self._prev = record["seq"], record["hash"]
        return torn

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Add ``seq``, ``time``, ``prev`` and ``hash`` to a copy of ``record``, write it, fsync, and return it.

        Raises:
            InputError: ``record`` is not a mapping of JSON values, or sets a chain field itself.
            OSError: the write or fsync failed; the log is left as it was if it could be, else refuses all writes.

        Example:
            >>> import tempfile, pathlib
            >>> with AuditLog(pathlib.Path(tempfile.mkdtemp()) / "a.jsonl") as log:
            ...     sorted(log.append({"request_id": "r1"}))
            ['hash', 'prev', 'request_id', 'seq', 'time']
        """
        if not isinstance(record, dict):
            raise InputError(f"an audit record must be a dict, not {type(record).__name__}")
        clash = sorted(set(record) & set(_CHAIN_FIELDS))
        if clash:
            raise InputError(f"an audit record may not set the chain field(s) {clash}")
        with self._lock:
            if self._lock_file.closed:
                raise OSError(f"{self.path}: the audit log is closed")
            if self._failed is not None:
                raise OSError(f"{self.path}: the audit log refuses writes after an earlier failure: {self._failed}")
            full = {
                **record,
                "seq": self._seq + 1,
                "time": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "prev": self._prev,
            }
            try:
                full["hash"] = _record_hash(full)
                line = canonical_json(full) + b"\n"
            except (TypeError, ValueError) as err:
                raise InputError(f"an audit record must hold only JSON values: {err}") from err
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                try:
                    self._rotate()
                except OSError as err:
                    self._failed = err
                    raise
            self._write(line)
            self._seq, self._prev = full["seq"], full["hash"]
            return full

    def _write(self, line: bytes) -> None:
        size = self._size
        try:
            written = 0
            while written < len(line):
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
        except OSError as err:
            try:
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)
            except OSError:
                self._failed = err
            raise
        self._size = size + len(line)

    def _rotate(self) -> None:
        os.close(self._fd)
        os.rename(self.path, self.path.with_name(f"{self.path.name}.{self._next_piece}"))
        self._next_piece += 1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        fsync_dir(self.path.parent)

    def close(self) -> None:
        """Close the file and release the writer's lock; appending afterwards is an error."""
        with self._lock:
            if self._lock_file.closed:
                return
            os.close(self._fd)
            self._lock_file.close()


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_audit` found: ``ok``, how many records in which files, the head, the first problem."""

    ok: bool
    records: int
    files: tuple[str, ...]
    last_seq: int | None
    last_hash: str | None
    problem: str | None = None
    problem_file: str | None = None
    problem_line: int | None = None

    def __str__(self) -> str:
        head = f"head seq {self.last_seq} hash {self.last_hash}" if self.last_hash else "no records"
        summary = f"{self.records} records in {len(self.files)} file(s); {head}"
        if self.ok:
            return f"OK: {summary}"
        return f"BROKEN at {self.problem_file}:{self.problem_line}: {self.problem}\n(before it: {summary})"


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        yield from enumerate(f, start=1)


def verify_audit(path: str | Path) -> AuditReport:
    """Check the whole chain of the audit log at ``path`` (its rotated files ``PATH.1`` ... first).

    Reports the first record that was changed, is missing, out of order or unreadable, a missing rotated file,
    and a torn last line (a crash during a write that reopening the log repairs).

    Raises:
        ConfigError: there is no audit log at ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
        >>> with AuditLog(path) as log:
        ...     _ = log.append({"request_id": "r1"})
        >>> _ = path.write_text(path.read_text().replace("r1", "r2"))
        >>> print(verify_audit(path).problem)
        record seq 0 was changed: its hash does not match its content
    """
    path = Path(path)
    pieces = _pieces(path)
    files = [p for _, p in pieces] + ([path] if path.exists() else [])
    if not files:
        raise ConfigError(f"no audit log at {path}")
    seq, prev, records = -1, GENESIS, 0

    def report(problem: str | None = None, where: Path | None = None, line: int | None = None) -> AuditReport:
        return AuditReport(
            ok=problem is None,
            records=records,
            files=tuple(str(f) for f in files),
            last_seq=seq if records else None,
            last_hash=prev if records else None,
            problem=problem,
            problem_file=str(where) if where else None,
            problem_line=line,
        )

    for expected, (number, piece) in enumerate(pieces, start=1):
        if number != expected:
            return report(f"rotated file {path.name}.{expected} is missing", piece, 0)
    for file in files:
        for number, raw in _lines(file):
            if not raw.endswith(b"\n"):
                if file == path:
                    return report(
                        f"torn last line ({len(raw)} bytes without a newline): a write cut off by a crash; "
                        "reopening the log (restarting the server) moves it into a recovery record",
                        file,
                        number,
                    )
                return report("a line without its newline inside a rotated file", file, number)
            record, problem = _parse_record(raw[:-1])
            if record is None:
                return report(problem, file, number)
            if record["prev"] != prev or record["seq"] != seq + 1:
                if record["seq"] > seq + 1:
                    gap = f"records seq {seq + 1}..{record['seq'] - 1} are missing"
                elif record["seq"] <= seq:
                    gap = f"seq {record['seq']} comes after seq {seq}: records were reordered or repeated"
                else:
                    gap = f"seq {record['seq']} does not point at the record before it (prev hash differs)"
                return report(f"broken link: {gap}", file, number)
            seq, prev, records = record["seq"], record["hash"], records + 1
    return report()
