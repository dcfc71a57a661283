"""The gat947 frame parser's guarantees, each shown on one exact byte sequence (docs/GAT947.md §2).

The property tests (test_gat947_fuzz.py) try many inputs; these pin the cases a
camera's identity and officer data depend on: a good frame behind a fake header
is delivered at once, the work per byte stays bounded however the bytes arrive,
and the refusals and names say what they mean.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from drivers import gat947_wire
from drivers.gat947_wire import (
    HEADER,
    SOF,
    Command,
    Frame,
    FrameError,
    FrameParser,
    Password,
    ZfyInfo,
    command_name,
    decode,
    encode,
    zfy_refusal,
)

GOOD = Frame(Command.GET_ZFY_INFO | 0x80, seq=7, status=0, payload=b"officer 012345")
FAKE_HEAD = SOF + b"\x01\x83\x01\x00" + (1000).to_bytes(2, "big")  # claims 1000 bytes


def _drain(parser: FrameParser) -> list[Frame | str]:
    out: list[Frame | str] = []
    for _ in range(100):
        try:
            frame = parser.next()
        except FrameError as exc:
            out.append(f"error: {exc}")
            continue
        if frame is None:
            return out
        out.append(frame)
    raise AssertionError("the parser never asked for more bytes")


def test_a_good_frame_behind_a_fake_header_is_delivered_without_waiting() -> None:
    """Rule: a header that claims more bytes than were sent never hides a complete, good
    frame behind it, even with the start of another frame after that one."""
    parser = FrameParser()
    parser.feed(FAKE_HEAD + b"junk" + encode(GOOD) + SOF + b"\x01")
    out = _drain(parser)
    assert out[-1] == GOOD, out
    assert out[0] == ("error: a header claiming 1000 payload bytes was followed by a complete "
                      "frame 12 bytes later; dropped the header")
    assert parser.pending == 3  # the next frame's beginning, kept for its remaining bytes


def test_the_earliest_good_frame_behind_a_fake_header_comes_first() -> None:
    """Rule: frames come out in the order the camera sent them."""
    second = Frame(Command.GET_ID_CODE | 0x80, seq=8, payload=b"ABC1234")
    parser = FrameParser()
    parser.feed(FAKE_HEAD + encode(GOOD) + encode(second))
    assert [f for f in _drain(parser) if isinstance(f, Frame)] == [GOOD, second]


class _CountingHeader:
    """HEADER, counting how many headers the parser decodes."""

    def __init__(self) -> None:
        self.decoded = 0
        self.size = HEADER.size

    def unpack_from(self, buf: Any, offset: int = 0) -> tuple[Any, ...]:
        self.decoded += 1
        return HEADER.unpack_from(buf, offset)

    def pack(self, *args: Any) -> bytes:
        return HEADER.pack(*args)


@pytest.mark.parametrize("piece", [b"\x00" * 7, SOF + b"\x01\x03\x00\x00\x03\xe8",
                                   b"\x00\x00\x00" + SOF])
def test_bytes_fed_one_piece_at_a_time_cost_bounded_work(
        monkeypatch: pytest.MonkeyPatch, piece: bytes) -> None:
    """Rule: behind an incomplete frame, each later header is decoded once (not once per
    call): a camera or an attacker sending many small pieces cannot make the station's
    work grow with the square of what it sent."""
    counting = _CountingHeader()
    monkeypatch.setattr(gat947_wire, "HEADER", counting)
    parser = FrameParser()
    parser.feed(b"noise" + FAKE_HEAD)  # the noise is dropped first: a new head
    calls = 0
    for _ in range(120):
        parser.feed(piece)
        calls += 1
        assert parser.next() is None
    later_headers = piece.count(SOF) * 120
    # One decode of the head per call, plus each later header once.
    assert counting.decoded <= calls + later_headers, counting.decoded


def test_decode_refuses_what_is_not_exactly_one_frame_by_name() -> None:
    """Rule: decode() takes exactly one whole frame; anything else is refused, saying why."""
    with pytest.raises(FrameError) as err:
        decode(b"\x00" + encode(GOOD))
    assert str(err.value) == "does not start with the SOF bytes a5 5a"
    with pytest.raises(FrameError) as err:
        decode(encode(GOOD)[:-1])
    assert str(err.value) == f"incomplete frame ({len(encode(GOOD)) - 1} bytes)"
    with pytest.raises(FrameError) as err:
        decode(encode(GOOD) + b"\x00\x00")
    assert str(err.value) == "2 bytes after the frame"
    assert decode(encode(GOOD)) == GOOD


def test_commands_are_named_as_the_vendor_sdk_names_them() -> None:
    """Rule: a response frame is named after its request's SDK call (response bit ignored);
    an unknown code is named by its number."""
    assert command_name(Command.GET_ZFY_INFO) == "GetZFYInfo"
    assert command_name(Command.GET_ZFY_INFO | 0x80) == "GetZFYInfo"
    assert command_name(Command.SET_MSDC | 0x80) == "SetMSDC"
    assert command_name(0x7E) == "command 0x7e"
    assert command_name(0xFE) == "command 0xfe"


def test_the_password_never_shows_in_a_repr() -> None:
    """Rule: the camera password never reaches a log line or a traceback through repr()."""
    password = Password(b"s3cret")
    assert repr(password) == "Password(<hidden>)"
    assert "s3cret" not in f"{password!r} {[password]}"
    assert password.reveal() == b"s3cret"


def test_header_layout_is_big_endian_as_documented() -> None:
    """Rule: the header is SOF, version, command, seq, status, 16-bit big-endian length."""
    frame = encode(Frame(0x03, seq=9, status=2, payload=b"xy"))
    assert frame[:HEADER.size] == SOF + struct.pack(">BBBBH", 1, 3, 9, 2, 2)


def _zfy(**changes: str) -> bytes:
    fields = {"serial": "ABC1234", "officer_id": "012349", "officer_name": "张三",
              "unit_code": "110000000009", "unit_name": "北京市公安局"}
    fields.update(changes)
    return ZfyInfo(**fields).encode()


def test_a_camera_refuses_officer_data_it_cannot_hold_saying_which_field() -> None:
    """Rule: WriteZFYInfo data is refused (BAD_PAYLOAD) when an ID holds anything but the
    digits 0-9, a text is not GBK, or the serial is another camera's; an empty serial and
    every digit, 9 included, are accepted."""
    assert zfy_refusal(_zfy(), "ABC1234") is None
    assert zfy_refusal(_zfy(serial=""), "ABC1234") is None
    assert zfy_refusal(_zfy(officer_id="999999", unit_code="000000000000"), "ABC1234") is None
    assert zfy_refusal(_zfy(officer_id="01234a"), "ABC1234") == \
        "officer_id holds something other than ASCII digits"
    assert zfy_refusal(_zfy(unit_code="1100000000:0"), "ABC1234") == \
        "unit_code holds something other than ASCII digits"
    assert zfy_refusal(_zfy(serial="XYZ9999"), "ABC1234") == \
        "the device serial is not the camera's ID code"
    assert zfy_refusal(_zfy()[:-1], "ABC1234") == "ZFY_INFO is 89 bytes, got 88"
    broken = bytearray(_zfy())
    broken[13:15] = b"\x81\x20"  # officer_name: a lead byte without a valid trail byte
    broken[57:59] = b"\xff\xff"  # unit_name
    assert zfy_refusal(bytes(broken), "ABC1234") == "not valid GBK: officer_name, unit_name"


def test_bytes_that_cannot_start_a_frame_are_dropped_but_a_possible_sof_is_kept() -> None:
    """Rule: junk without an SOF is dropped at once (the buffer stays small), except a last
    byte a5 that may be the first half of an SOF: the frame it starts is not lost."""
    parser = FrameParser()
    parser.feed(b"junk without a frame")
    assert parser.next() is None and parser.pending == 0
    wire = encode(GOOD)
    parser.feed(b"junk" + wire[:1])
    assert parser.next() is None and parser.pending == 1
    parser.feed(wire[1:])
    assert parser.next() == GOOD and parser.pending == 0


def test_a_bad_header_is_refused_as_soon_as_it_is_complete() -> None:
    """Rule: a header with a wrong version or a length over 1024 is refused as soon as its
    8 bytes are in, without waiting for bytes it claims; a 1024-byte payload is allowed."""
    parser = FrameParser()
    parser.feed(SOF + b"\x02\x83\x01\x00\x00\x00")
    with pytest.raises(FrameError) as err:
        parser.next()
    assert str(err.value) == "unsupported protocol version 2"
    parser.clear()
    parser.feed(SOF + b"\x01\x83\x01\x00" + (1025).to_bytes(2, "big"))
    with pytest.raises(FrameError) as err:
        parser.next()
    assert str(err.value) == "payload length 1025 exceeds 1024"
    biggest = Frame(0x83, seq=1, payload=b"p" * 1024)
    assert decode(encode(biggest)) == biggest
    with pytest.raises(ValueError) as value_err:
        encode(Frame(0x83, seq=1, payload=b"p" * 1025))
    assert str(value_err.value) == "payload of 1025 bytes exceeds 1024"


def test_zfy_info_fields_keep_every_character_but_their_padding() -> None:
    """Rule: a ZFY_INFO field is read up to its NUL padding (or trailing spaces some firmware
    pads with) and keeps every other character, an X or a tab included; invalid GBK is
    shown as U+FFFD in GBK's reading and the field is named."""
    raw = bytearray(ZfyInfo("ABC123X", "012349", "张三\t", "110000000009", "公安局").encode())
    raw[57 + 9:57 + 32] = b" " * (32 - 9)  # unit_name padded with spaces, not NULs
    info, bad = ZfyInfo.decode(bytes(raw))
    assert (info.serial, info.officer_name, info.unit_name) == ("ABC123X", "张三\t", "公安局")
    assert bad == []
    broken = bytearray(_zfy())
    broken[13:15] = b"\x81\x20"
    info, bad = ZfyInfo.decode(bytes(broken))
    assert (info.officer_name, bad) == ("\ufffd 三", ["officer_name"])
    with pytest.raises(FrameError) as err:
        ZfyInfo.decode(bytes(88))
    assert str(err.value) == "ZFY_INFO is 89 bytes, got 88"
