"""The host service's audit log: hash chain, tampering, torn lines, restarts, rotation, threads, kill -9."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from safeguard import cli
from safeguard.errors import ConfigError, InputError
from safeguard.server import audit as audit_module
from safeguard.server.audit import GENESIS, AuditLog, canonical_json, verify_audit


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def _fill(path: Path, count: int, max_bytes: int = audit_module.DEFAULT_MAX_BYTES) -> list[dict]:
    with AuditLog(path, max_bytes=max_bytes) as log:
        return [log.append({"request_id": f"r{i}", "action": "allow", "score": i / 10}) for i in range(count)]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_records_are_chained_by_the_hash_of_their_canonical_json(log_path: Path) -> None:
    records = _fill(log_path, 3)
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert records[0]["prev"] == GENESIS
    assert [r["prev"] for r in records[1:]] == [r["hash"] for r in records[:-1]]
    for line, record in zip(_lines(log_path), records, strict=True):
        assert json.loads(line) == record
        body = {k: v for k, v in record.items() if k != "hash"}
        assert record["hash"] == hashlib.sha256(canonical_json(body)).hexdigest()
        assert record["time"].endswith("Z")
    report = verify_audit(log_path)
    assert report.ok and report.records == 3 and report.last_seq == 2 and report.last_hash == records[-1]["hash"]
    assert report.files == (str(log_path),)


def test_append_returns_only_after_the_line_is_fsynced(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        real_fsync(fd)
        if log_path.exists():
            synced.append(log_path.read_text())

    with AuditLog(log_path) as log:
        monkeypatch.setattr(audit_module.os, "fsync", watching_fsync)
        record = log.append({"request_id": "r1"})
    assert any(record["hash"] in text for text in synced)


def test_a_changed_record_is_reported_at_its_line(log_path: Path) -> None:
    _fill(log_path, 5)
    lines = _lines(log_path)
    lines[2] = lines[2].replace('"allow"', '"block"')
    log_path.write_text("".join(lines))
    report = verify_audit(log_path)
    assert not report.ok and report.problem_line == 3 and report.problem_file == str(log_path)
    assert "seq 2 was changed" in report.problem and report.records == 2


def test_a_changed_record_with_a_recomputed_hash_breaks_the_next_link(log_path: Path) -> None:
    _fill(log_path, 5)
    lines = _lines(log_path)
    forged = json.loads(lines[2])
    forged["action"] = "block"
    del forged["hash"]
    forged["hash"] = hashlib.sha256(canonical_json(forged)).hexdigest()
    lines[2] = canonical_json(forged).decode() + "\n"
    log_path.write_text("".join(lines))
    report = verify_audit(log_path)
    assert not report.ok and report.problem_line == 4
    assert "does not point at the record before it" in report.problem


@pytest.mark.parametrize(
    ("index", "line", "message"),
    [(2, 3, "records seq 2..2 are missing"), (0, 1, "records seq 0..0 are missing")],
)
def test_a_deleted_record_is_a_missing_link(log_path: Path, index: int, line: int, message: str) -> None:
    _fill(log_path, 5)
    lines = _lines(log_path)
    del lines[index]
    log_path.write_text("".join(lines))
    report = verify_audit(log_path)
    assert not report.ok and report.problem_line == line and message in report.problem


def test_reordered_records_are_reported(log_path: Path) -> None:
    _fill(log_path, 5)
    lines = _lines(log_path)
    lines[1], lines[3] = lines[3], lines[1]
    log_path.write_text("".join(lines))
    report = verify_audit(log_path)
    assert not report.ok and report.problem_line == 2 and "records seq 1..2 are missing" in report.problem
    lines = _lines(log_path)
    lines[1], lines[3] = lines[3], lines[1]
    lines[1], lines[2] = lines[2], lines[1]
    log_path.write_text("".join(lines))
    report = verify_audit(log_path)
    assert not report.ok and report.problem_line == 2


def test_a_record_inserted_from_elsewhere_or_garbage_is_reported(log_path: Path, tmp_path: Path) -> None:
    _fill(log_path, 3)
    other = _fill(tmp_path / "other.jsonl", 2)
    lines = _lines(log_path)
    lines.insert(1, canonical_json(other[1]).decode() + "\n")
    log_path.write_text("".join(lines))
    assert verify_audit(log_path).problem_line == 2
    lines[1] = "{oops\n"
    log_path.write_text("".join(lines))
    report = verify_audit(log_path)
    assert report.problem_line == 2 and "not valid JSON" in report.problem


def test_restart_continues_the_chain(log_path: Path) -> None:
    first = _fill(log_path, 2)
    with AuditLog(log_path) as log:
        assert log.head == (1, first[-1]["hash"])
        third = log.append({"request_id": "r2"})
    assert third["seq"] == 2 and third["prev"] == first[-1]["hash"]
    assert verify_audit(log_path).records == 3


def test_a_torn_last_line_is_reported_then_repaired_into_a_recovery_record(log_path: Path) -> None:
    records = _fill(log_path, 3)
    torn = b'{"request_id":"r3","seq":3,"ti'
    with open(log_path, "ab") as f:
        f.write(torn)
    report = verify_audit(log_path)
    assert not report.ok and report.problem_line == 4 and "torn last line" in report.problem
    assert report.records == 3

    with AuditLog(log_path) as log:
        after = log.append({"request_id": "r4"})
    recovery = json.loads(_lines(log_path)[3])
    assert recovery["event"] == "torn_tail_recovered" and recovery["seq"] == 3
    assert recovery["prev"] == records[-1]["hash"]
    assert recovery["torn_bytes"] == len(torn) and recovery["torn_sha256"] == hashlib.sha256(torn).hexdigest()
    assert base64.b64decode(recovery["torn_tail_b64"]) == torn
    assert after["seq"] == 4 and after["prev"] == recovery["hash"]
    report = verify_audit(log_path)
    assert report.ok and report.records == 5


def test_a_torn_first_line_is_repaired_too(log_path: Path) -> None:
    log_path.write_bytes(b'{"request_id":')
    with AuditLog(log_path) as log:
        assert log.head[0] == 0
    assert verify_audit(log_path).ok


def test_a_damaged_last_record_stops_the_log_from_opening(log_path: Path) -> None:
    _fill(log_path, 2)
    lines = _lines(log_path)
    lines[-1] = lines[-1].replace('"allow"', '"block"')
    log_path.write_text("".join(lines))
    with pytest.raises(ConfigError, match="the last record is damaged"):
        AuditLog(log_path)
    # The refusal left the lock free: once the damage is dealt with, the log opens.
    log_path.write_text("".join(lines[:-1]))
    AuditLog(log_path).close()


def test_rotation_keeps_one_chain_across_numbered_files(log_path: Path) -> None:
    records = _fill(log_path, 40, max_bytes=1000)
    pieces = sorted(log_path.parent.glob("audit.jsonl.*[0-9]"), key=lambda p: int(p.suffix[1:]))
    assert len(pieces) >= 3
    assert all(p.stat().st_size <= 1000 for p in [*pieces, log_path])
    report = verify_audit(log_path)
    assert report.ok and report.records == 40 and report.files == (*map(str, pieces), str(log_path))
    # The first record of each file points at the last record of the file before it.
    first_of_second = json.loads(_lines(pieces[1])[0])
    assert first_of_second["prev"] == json.loads(_lines(pieces[0])[-1])["hash"]
    # A restart after rotation continues from the live file, and from the newest rotated file when it is empty.
    with AuditLog(log_path, max_bytes=1000) as log:
        assert log.append({"request_id": "again"})["prev"] == records[-1]["hash"]
    assert verify_audit(log_path).records == 41


def test_a_crash_between_rename_and_new_file_continues_from_the_newest_rotated_file(log_path: Path) -> None:
    records = _fill(log_path, 40, max_bytes=1000)
    count = len(list(log_path.parent.glob("audit.jsonl.*[0-9]")))
    log_path.rename(log_path.with_name(f"audit.jsonl.{count + 1}"))
    with AuditLog(log_path, max_bytes=1000) as log:
        assert log.append({"request_id": "after-crash"})["prev"] == records[-1]["hash"]
    assert verify_audit(log_path).ok


def test_a_deleted_rotated_file_is_reported(log_path: Path) -> None:
    _fill(log_path, 40, max_bytes=1000)
    log_path.with_name("audit.jsonl.2").unlink()
    report = verify_audit(log_path)
    assert not report.ok and report.problem == "rotated file audit.jsonl.2 is missing"
    log_path.with_name("audit.jsonl.1").unlink()
    assert "rotated file audit.jsonl.1 is missing" in verify_audit(log_path).problem


def test_appends_from_many_threads_form_one_unbroken_chain(log_path: Path) -> None:
    errors: list[BaseException] = []
    with AuditLog(log_path, max_bytes=20_000) as log:

        def worker(index: int) -> None:
            try:
                for i in range(100):
                    log.append({"request_id": f"t{index}-{i}"})
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert errors == []
    report = verify_audit(log_path)
    assert report.ok and report.records == 800 and len(report.files) > 1
    ids = [json.loads(line)["request_id"] for f in report.files for line in _lines(Path(f))]
    assert sorted(ids) == sorted(f"t{n}-{i}" for n in range(8) for i in range(100))


def test_a_second_writer_is_refused_until_the_first_closes(log_path: Path) -> None:
    log = AuditLog(log_path)
    with pytest.raises(ConfigError, match="another process has this audit log open"):
        AuditLog(log_path)
    log.close()
    with pytest.raises(OSError, match="closed"):
        log.append({"request_id": "late"})
    AuditLog(log_path).close()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"seq": 5}, "may not set the chain field"),
        ({"hash": "x"}, "may not set the chain field"),
        ({"score": float("nan")}, "only JSON values"),
        ({"blob": b"bytes"}, "only JSON values"),
        ({"text": "\ud800"}, "only JSON values"),
        (["not", "a", "dict"], "must be a dict"),
    ],
)
def test_bad_records_are_refused_and_leave_the_chain_intact(log_path: Path, record: object, message: str) -> None:
    with AuditLog(log_path) as log:
        log.append({"request_id": "r0"})
        with pytest.raises(InputError, match=message):
            log.append(record)  # type: ignore[arg-type]
        assert log.append({"request_id": "r1"})["seq"] == 1
    assert verify_audit(log_path).ok


def test_a_failed_write_is_rolled_back(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with AuditLog(log_path) as log:
        log.append({"request_id": "r0"})
        real_write = os.write

        def half_write(fd: int, data: bytes) -> int:
            real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(audit_module.os, "write", half_write)
        with pytest.raises(OSError, match="No space left"):
            log.append({"request_id": "r1"})
        monkeypatch.setattr(audit_module.os, "write", real_write)
        assert log.append({"request_id": "r2"})["seq"] == 1
    report = verify_audit(log_path)
    assert report.ok and report.records == 2


def test_max_bytes_must_be_a_positive_integer(log_path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="max_bytes must be a positive integer"):
            AuditLog(log_path, max_bytes=bad)  # type: ignore[arg-type]


def test_verify_a_missing_log_is_a_config_error(log_path: Path) -> None:
    with pytest.raises(ConfigError, match="no audit log at"):
        verify_audit(log_path)


_WRITER = """
import sys
from safeguard.server.audit import AuditLog
log = AuditLog(sys.argv[1], max_bytes=4000)
i = 0
while True:
    log.append({"request_id": f"k{i}", "padding": "x" * (i % 50)})
    print(f"k{i}", flush=True)
    i += 1
"""


def test_kill_9_mid_write_then_reopen_verifies_with_every_acknowledged_record(log_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(log_path)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    acknowledged: list[str] = []
    deadline = time.monotonic() + 30
    assert writer.stdout is not None
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        acknowledged.append(writer.stdout.readline().strip())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert len(acknowledged) == 300
    with AuditLog(log_path, max_bytes=4000):
        pass
    report = verify_audit(log_path)
    assert report.ok, report
    logged = {json.loads(line).get("request_id") for f in report.files for line in _lines(Path(f))}
    assert set(acknowledged) <= logged


def test_cli_audit_verify_exit_codes_and_json(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(log_path, 3)
    assert cli.main(["audit", "verify", str(log_path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 3 records in 1 file(s)")
    lines = _lines(log_path)
    log_path.write_text(lines[0] + lines[2])
    assert cli.main(["audit", "verify", "--json", str(log_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problem_line"] == 2 and "missing" in report["problem"]
    assert cli.main(["audit", "verify", str(log_path.with_name("nope.jsonl"))]) == cli.EXIT_ERROR
    assert "no audit log at" in capsys.readouterr().err
