"""Observation feed under hostile input and storage faults: one bad message, odd names, non-files, OS errors.

Oracles: what survives a fault equals the clean decode of the good part, and no input file is ever lost.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import eccodes
import numpy as np
import pytest
import structlog

from align_da_ops.errors import InputDataError, ObservationError
from align_da_ops.obs import bufr
from align_da_ops.obs import feed as feed_mod
from align_da_ops.obs.bufr import decode_bufr_bytes, decode_bufr_file, scan_messages
from align_da_ops.obs.feed import FeedIOError, ObsFeed

BUFR = Path(__file__).resolve().parent.parent / "data" / "bufr"
SYNOP = (BUFR / "eccodes_synop.bufr").read_bytes()  # 3 messages, one report each
MULTI = (BUFR / "eccodes_synop_multi_subset.bufr").read_bytes()  # 1 message, 12 uncompressed subsets


def edit(message: bytes, values: dict) -> bytes:
    """Re-encode a message with some data keys changed (e.g. {"#1#latitude": 95.0})."""
    h = eccodes.codes_new_from_message(message)
    try:
        eccodes.codes_set(h, "unpack", 1)
        for key, value in values.items():
            eccodes.codes_set(h, key, value)
        eccodes.codes_set(h, "pack", 1)
        return eccodes.codes_get_message(h)
    finally:
        eccodes.codes_release(h)


def synop_messages() -> list[bytes]:
    messages, _, _ = scan_messages(SYNOP)
    assert len(messages) == 3
    return messages


# -- 1. one bad message or report never poisons the rest ----------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [{"#1#latitude": 95.0}, {"#1#longitude": 400.0}, {"#1#longitude": eccodes.CODES_MISSING_DOUBLE}, {"#1#month": 13}],
    ids=["lat95", "lon400", "lon-missing", "month13"],
)
def test_a_message_with_an_invalid_position_or_time_loses_only_its_own_reports(values):
    m1, m2, m3 = synop_messages()
    clean = decode_bufr_bytes(m1 + m2 + m3)
    assert sorted(set(clean.batch.report.tolist())) == [0, 1, 2]
    d = decode_bufr_bytes(m1 + edit(m2, values) + m3)  # must not raise
    r = d.report
    assert (r.messages, r.decoded, r.failed, r.reports) == (3, 3, 0, 3)
    assert any(p.startswith("message 2: 1 reports without a valid position or time") for p in r.problems)
    assert r.unusable_reason() is None
    assert d.batch.equals(clean.batch.select(clean.batch.report != 1))  # reports 0 and 2, bit for bit


def test_one_bad_subset_of_a_multi_subset_message_loses_only_that_report():
    (message,), _, _ = scan_messages(MULTI)
    clean = decode_bufr_bytes(message).batch
    d = decode_bufr_bytes(edit(message, {"#3#latitude": 95.0}))  # uncompressed: rank 3 is subset 3
    assert d.report.decoded == 1 and d.report.reports == 12
    assert d.batch.equals(clean.select(clean.report != 2))
    assert len(np.unique(d.batch.report)) == 11


def test_a_message_failing_half_way_leaves_no_partial_rows(monkeypatch):
    m1, m2, m3 = synop_messages()
    calls = {"n": 0}
    original = bufr._single_level

    def fails_on_second_message(*args):
        original(*args)  # rows are added first, then the message breaks
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("broken half-way")

    monkeypatch.setattr(bufr, "_single_level", fails_on_second_message)
    d = decode_bufr_bytes(m1 + m2 + m3, isolate=False)
    assert (d.report.decoded, d.report.failed) == (2, 1)
    assert any(p.startswith("message 2: decode failed") for p in d.report.problems)
    monkeypatch.setattr(bufr, "_single_level", original)
    assert d.batch.equals(decode_bufr_bytes(m1 + m3, isolate=False).batch)


def crasher() -> bytes:
    """Message 1 of eccodes_synop.bufr with byte 103 set to 102: ecCodes 2.50 unpacks it with SIGSEGV."""
    m = bytearray(synop_messages()[0])
    m[103] = 102
    return bytes(m)


def test_an_ecCodes_crash_costs_one_message_not_the_process():
    code = "import sys; from align_da_ops.obs.bufr import decode_bufr_bytes as d; "
    code += "d(sys.stdin.buffer.read(), isolate=False)"
    unisolated = subprocess.run([sys.executable, "-c", code], input=crasher(), capture_output=True, timeout=300)
    m1, m2, m3 = synop_messages()
    d = decode_bufr_bytes(m2 + crasher() + m3)  # in this process: must survive
    assert d.report.messages == 3 and d.report.decoded >= 2
    assert d.batch.select(d.batch.report < 1).equals(decode_bufr_bytes(m2).batch)
    if unisolated.returncode < 0:  # the C library really crashes on it (as with ecCodes 2.50)
        assert d.report.failed == 1
        assert any("crashed the decoder process (signal SIGSEGV)" in p for p in d.report.problems)
        assert d.batch.equals(decode_bufr_bytes(m2 + m3).batch)
    assert decode_bufr_bytes(SYNOP).batch.equals(decode_bufr_bytes(SYNOP, isolate=False).batch)  # worker is back


def test_a_message_that_hangs_is_stopped_and_counted(monkeypatch):
    monkeypatch.setattr(bufr, "MESSAGE_TIMEOUT_S", 1e-9)
    d = decode_bufr_bytes(synop_messages()[0])
    assert d.report.failed == 1 and "took over" in d.report.problems[0]
    assert d.report.unusable_reason() is not None
    monkeypatch.undo()
    assert decode_bufr_bytes(SYNOP).batch.equals(decode_bufr_bytes(SYNOP, isolate=False).batch)


def test_feed_keeps_the_good_messages_of_a_file_with_a_bad_one(tmp_path):
    m1, m2, m3 = synop_messages()
    feed = ObsFeed(tmp_path)
    (feed.incoming / "mixed.bufr").write_bytes(m1 + edit(m2, {"#1#latitude": 95.0}) + m3)
    (result,) = feed.poll()
    assert result.status == "processed" and result.reports == 3
    clean = decode_bufr_bytes(m1 + m2 + m3).batch
    assert feed.collect().equals(clean.select(clean.report != 1))
    assert str(clean.time.min())[:10] == "2009-01-24"  # the manifest's time range selects the file, or not
    assert feed.collect(np.datetime64("2009-01-24"), np.datetime64("2009-01-25")).equals(feed.collect())
    assert len(feed.collect(np.datetime64("2009-01-25"), np.datetime64("2009-01-26"))) == 0


# -- 2. decoded files: names owned by the feed, checked when read back ---------------------------------------------
def test_an_input_named_like_a_decoded_file_is_just_an_input(tmp_path):
    feed = ObsFeed(tmp_path)
    (feed.incoming / "x.ioda.nc").write_bytes(SYNOP)
    (feed.incoming / "x.ioda.nc.json").write_bytes(b'{"ioda_sha256": "0", "ioda_bytes": 0}')
    results = {r.name: r for r in feed.poll()}
    assert results["x.ioda.nc"].status == "processed"
    assert results["x.ioda.nc.json"].status == "quarantined"
    for _ in range(2):  # every later cycle works
        assert feed.poll() == []
        assert feed.collect().equals(decode_bufr_file(BUFR / "eccodes_synop.bufr").batch)
    assert (feed.processed / "x.ioda.nc").read_bytes() == SYNOP


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage_manifest", "no_manifest"])
def test_a_corrupt_decoded_file_is_quarantined_and_the_others_still_read(tmp_path, damage):
    feed = ObsFeed(tmp_path)
    (feed.incoming / "a.bufr").write_bytes(SYNOP)
    (feed.incoming / "b.bufr").write_bytes((BUFR / "eccodes_temp.bufr").read_bytes())
    feed.poll()
    ioda, manifest = feed.decoded / "a.bufr.ioda.nc", feed.decoded / "a.bufr.json"
    data = ioda.read_bytes()
    if damage == "truncate":
        ioda.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        ioda.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    elif damage == "garbage_manifest":
        manifest.write_bytes(b"\x00{not json")
    else:
        manifest.unlink()
    with structlog.testing.capture_logs() as logs:
        got = feed.collect()
    assert got.equals(decode_bufr_file(BUFR / "eccodes_temp.bufr").batch)
    assert not ioda.exists()
    (note,) = feed.quarantine.glob("*.reason.txt")
    assert note.name == "a.bufr.ioda.nc.reason.txt" and "processed/a.bufr" in note.read_text()
    expected = {"truncate": "corrupt or truncated", "flip": "corrupt or truncated"}.get(damage, "manifest")
    assert expected in note.read_text()
    assert (feed.quarantine / "a.bufr.ioda.nc").exists()  # kept for inspection
    assert any(e["event"] == "obs_file_quarantined" for e in logs)
    assert feed.collect().equals(got)  # next cycle: same, no error


def test_a_kill_between_decoding_and_commit_leaves_no_duplicate(tmp_path, monkeypatch):
    feed = ObsFeed(tmp_path)
    (feed.incoming / "a.bufr").write_bytes(SYNOP)
    real = os.replace

    def killed(src, dst):
        if Path(dst).parent == feed.processed:
            raise SystemExit("kill -9")  # nothing cleans up after a kill
        real(src, dst)

    monkeypatch.setattr(feed_mod.os, "replace", killed)
    with pytest.raises(SystemExit):
        feed.poll()
    monkeypatch.setattr(feed_mod.os, "replace", real)
    assert (feed.decoded / "a.bufr.ioda.nc").exists() and (feed.incoming / "a.bufr").exists()
    assert len(feed.collect()) == 0  # not committed
    (result,) = feed.poll()
    assert result.path == feed.processed / "a.bufr"
    assert feed.collect().equals(decode_bufr_bytes(SYNOP).batch)  # once, not twice


# -- 3. names at the filesystem limit -----------------------------------------------------------------------------
@pytest.mark.parametrize("stem", ["o" * 250, "é" * 125], ids=["ascii", "utf8"])
def test_a_255_byte_name_is_handled_and_every_derived_name_fits(tmp_path, stem):
    feed = ObsFeed(tmp_path)
    good, bad = stem + ".bufr", stem + ".bin"
    assert len(os.fsencode(good)) == 255 and len(os.fsencode(bad)) <= 255
    (feed.incoming / good).write_bytes(SYNOP)
    (feed.incoming / bad).write_bytes(b"not bufr" * 10)
    results = {r.name: r for r in feed.poll()}
    assert results[good].status == "processed" and results[bad].status == "quarantined"
    assert results[good].path.read_bytes() == SYNOP and len(os.fsencode(results[good].path.name)) <= 200
    assert feed.collect().equals(decode_bufr_bytes(SYNOP).batch)
    (note,) = feed.quarantine.glob("*.reason.txt")
    assert f"original name: {bad}" in note.read_text(encoding="utf-8")
    for d in (feed.processed, feed.decoded, feed.quarantine):
        assert all(len(os.fsencode(p.name)) <= 230 for p in d.iterdir())
    (feed.incoming / good).write_bytes(SYNOP)  # the same long name again gets its own key
    (again,) = feed.poll()
    assert again.path != results[good].path and len(feed.collect()) == 2 * len(decode_bufr_bytes(SYNOP).batch)


@pytest.mark.parametrize(
    "raw", [b"obs\xff\xfe.bufr", b"back\\slash.bufr", b"new\nline\t.bufr"], ids=["latin1", "backslash", "control"]
)
def test_odd_byte_names_are_handled(tmp_path, raw):
    """Not UTF-8, a backslash (netCDF-C reads it as a separator), control characters."""
    feed = ObsFeed(tmp_path)
    name = os.fsdecode(raw)
    (feed.incoming / name).write_bytes(SYNOP)
    (feed.incoming / (name + ".junk")).write_bytes(b"junk")
    results = {r.name: r for r in feed.poll()}
    assert results[name].status == "processed" and results[name + ".junk"].status == "quarantined"
    assert results[name].path.read_bytes() == SYNOP and results[name + ".junk"].path.read_bytes() == b"junk"
    assert feed.collect().equals(decode_bufr_bytes(SYNOP).batch)


# -- 4. entries that are not regular files ------------------------------------------------------------------------
def test_directories_fifos_sockets_and_links_are_quarantined_unopened_with_a_reason(tmp_path, monkeypatch):
    feed = ObsFeed(tmp_path)
    inc = feed.incoming
    (inc / "adir").mkdir()
    (inc / "adir" / "inner.bufr").write_bytes(SYNOP)
    os.mkfifo(inc / "apipe")
    os.mkfifo(inc / "writing.part")  # in flight: left alone
    (inc / ".hidden").mkdir()
    os.symlink(tmp_path / "nowhere", inc / "dangling")
    (tmp_path / "real.bufr").write_bytes(SYNOP)
    os.symlink(tmp_path / "real.bufr", inc / "link.bufr")
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(inc)  # a socket path must be short
    sock.bind("asock")
    (inc / "good.bufr").write_bytes(SYNOP)
    out: list = []
    with structlog.testing.capture_logs() as logs:
        t = threading.Thread(target=lambda: out.append(feed.poll()), daemon=True)
        t.start()
        t.join(120)
    sock.close()
    assert not t.is_alive(), "poll blocked (opened a FIFO?)"
    results = {r.name: r for r in out[0]}
    assert results.pop("good.bufr").status == "processed"
    kinds = {"adir": "directory", "apipe": "FIFO", "asock": "socket"}
    kinds |= {"dangling": "dangling", "link.bufr": "not followed"}
    assert set(results) == set(kinds)
    for name, kind in kinds.items():
        r = results[name]
        assert r.status == "quarantined" and "not a regular file" in r.reason and kind in r.reason
        assert os.path.lexists(feed.quarantine / name) and not os.path.lexists(inc / name)
        assert kind in (feed.quarantine / f"{name}.reason.txt").read_text()
    assert (feed.quarantine / "adir" / "inner.bufr").read_bytes() == SYNOP  # moved whole
    assert (tmp_path / "real.bufr").read_bytes() == SYNOP  # a link's target is never touched
    quarantined = {e["file"] for e in logs if e["event"] == "obs_file_quarantined" and e["log_level"] == "warning"}
    assert quarantined == set(kinds)
    assert sorted(os.listdir(inc)) == [".hidden", "writing.part"]
    assert feed.poll() == [] and feed.collect().equals(decode_bufr_bytes(SYNOP).batch)


def test_decode_bufr_file_never_blocks_on_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "p")
    (tmp_path / "d").mkdir()
    for name in ("p", "d"):
        r = decode_bufr_file(tmp_path / name).report
        assert r.unusable_reason().startswith("not a regular file")
    assert decode_bufr_file(tmp_path / "missing").report.unusable_reason().startswith("cannot read")


# -- 5. storage faults: clear errors, no input lost -----------------------------------------------------------------
def oserror(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def test_disk_full_while_writing_decoded_data_is_a_clear_error_and_keeps_the_input(tmp_path, monkeypatch):
    feed = ObsFeed(tmp_path)
    (feed.incoming / "a.bufr").write_bytes(SYNOP)
    monkeypatch.setattr(feed_mod, "write_ioda", oserror(errno.ENOSPC))
    with pytest.raises(FeedIOError, match=r"cannot write .*a\.bufr\.ioda\.nc: No space left on device \(ENOSPC\)"):
        feed.poll()
    assert (feed.incoming / "a.bufr").read_bytes() == SYNOP and os.listdir(feed.decoded) == []
    monkeypatch.undo()
    (result,) = feed.poll()  # once the disk has room, the same file goes through
    assert result.status == "processed" and feed.collect().equals(decode_bufr_bytes(SYNOP).batch)


@pytest.mark.parametrize("where", ["processed", "quarantine_note", "quarantine_move"])
def test_unwritable_feed_directories_are_clear_errors_and_keep_the_input(tmp_path, monkeypatch, where):
    feed = ObsFeed(tmp_path)
    name, data = ("a.bufr", SYNOP) if where == "processed" else ("junk.bin", b"junk")
    (feed.incoming / name).write_bytes(data)
    real_replace, real_write = os.replace, feed_mod._write_atomic

    def replace(src, dst):
        if Path(dst).parent in (feed.processed, feed.quarantine) and not Path(dst).name.endswith(".txt"):
            raise PermissionError(errno.EACCES, "Permission denied")
        real_replace(src, dst)

    def write(path, text):
        if path.parent == feed.quarantine:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_write(path, text)

    if where == "quarantine_note":
        monkeypatch.setattr(feed_mod, "_write_atomic", write)
    else:
        monkeypatch.setattr(feed_mod.os, "replace", replace)
    with pytest.raises(FeedIOError, match=r"Permission denied \(EACCES\)") as info:
        feed.poll()
    assert name in str(info.value) and isinstance(info.value, ObservationError | InputDataError)
    assert info.value.exit_code == 3
    assert (feed.incoming / name).read_bytes() == data  # not lost, not moved
    assert os.listdir(feed.decoded) == [] and os.listdir(feed.quarantine) == []  # no half-done leftovers
    monkeypatch.undo()
    (result,) = feed.poll()
    assert result.path.read_bytes() == data


def test_a_feed_root_that_cannot_be_laid_out_is_a_clear_error(tmp_path):
    (tmp_path / "processed").write_bytes(b"a file where a directory should be")
    with pytest.raises(FeedIOError, match=r"cannot create directory .*processed"):
        ObsFeed(tmp_path)


def test_obs_ingest_to_an_unwritable_output_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from align_da_ops.cli import app
    from align_da_ops.errors import StoreError

    (tmp_path / "file").write_bytes(b"")
    out = tmp_path / "file" / "obs.nc"  # its directory is a file: ENOTDIR/EEXIST
    res = CliRunner().invoke(app, ["obs", "ingest", str(BUFR / "eccodes_synop.bufr"), "-o", str(out)])
    assert isinstance(res.exception, StoreError) and str(out) in str(res.exception)
