"""journald's native protocol (k3snoded/journal.py) against real unix sockets standing where
journald's would be; what journald itself does with it is tested in the systemd lab."""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
from pathlib import Path

import pytest

from k3snoded import journal


def parse(data: bytes) -> dict[str, str]:
    """The inverse of journal.encode (both the FIELD=value and the binary form)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            out[name.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            out[line.decode()] = data[nl + 9 : nl + 9 + size].decode()
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return out


@pytest.fixture
def sink(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "socket"))
    s.settimeout(5)
    return s


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("k3snoded.vip", level, "/x/vip.py", 42, msg, args, None, "ensure")


def test_a_record_becomes_fields(sink: socket.socket, tmp_path: Path) -> None:
    h = journal.JournalHandler(
        "k3snoded", context=lambda: {"K3SNODED_ROLE": "server"}, path=tmp_path / "socket"
    )
    h.emit(record("moved %s\nto %s", "a", "b"))
    fields = parse(sink.recv(65536))
    assert fields["MESSAGE"] == "moved a\nto b"  # the binary form keeps the newline
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "k3snoded"
    assert fields["LOGGER"] == "k3snoded.vip"
    assert fields["CODE_LINE"] == "42"
    assert fields["K3SNODED_ROLE"] == "server"
    h.close()


def test_extra_fields_and_invalid_names(sink: socket.socket, tmp_path: Path) -> None:
    h = journal.JournalHandler("k3snoded", path=tmp_path / "socket")
    r = record("x", level=logging.ERROR)
    r.journal = {"K3SNODED_EVENT": "vip-moved", "bad name": "dropped", "_PID": "spoofed"}
    h.emit(r)
    fields = parse(sink.recv(65536))
    assert fields["K3SNODED_EVENT"] == "vip-moved"
    assert fields["PRIORITY"] == "3"
    assert "bad name" not in fields and "_PID" not in fields
    with pytest.raises(ValueError):
        journal.encode({"lower": "x"})
    h.close()


def test_a_message_too_big_for_a_datagram_goes_in_a_sealed_memfd(
    sink: socket.socket, tmp_path: Path
) -> None:
    h = journal.JournalHandler("k3snoded", path=tmp_path / "socket")
    big = "x" * (4 * 1024 * 1024)
    h.emit(record("%s", big))
    fds = array.array("i")
    _, ancdata, _, _ = sink.recvmsg(16, socket.CMSG_SPACE(fds.itemsize))
    fds.frombytes(ancdata[0][2][: fds.itemsize])
    fd = fds[0]
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # the sender wrote through the same open file
        with os.fdopen(os.dup(fd), "rb") as f:
            fields = parse(f.read())
        assert fields["MESSAGE"] == big
        with pytest.raises(OSError):  # sealed: journald can trust it will not change
            os.write(fd, b"y")
    finally:
        os.close(fd)
    h.close()


def test_priorities() -> None:
    assert journal.priority(logging.DEBUG) == 7
    assert journal.priority(logging.INFO) == 6
    assert journal.priority(logging.INFO + 5) == 6
    assert journal.priority(logging.CRITICAL) == 2


def test_stream_fd_sends_the_stdout_stream_header(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "stdout"))
    server.listen(1)
    fd = journal.stream_fd("k3s", path=tmp_path / "stdout")
    assert fd is not None
    conn, _ = server.accept()
    os.write(fd, b"level=info msg=hello\n")
    os.close(fd)
    data = b""
    conn.settimeout(5)
    while chunk := conn.recv(4096):
        data += chunk
    assert data == b"k3s\n\n6\n0\n0\n0\n0\nlevel=info msg=hello\n"
    assert journal.stream_fd("k3s", path=tmp_path / "absent") is None
