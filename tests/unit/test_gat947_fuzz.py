"""Property-based fuzzing of the gat947 frame decoder (hypothesis, derandomized).

Whatever bytes a camera, a cable or an attacker sends, in whatever pieces:
the parser raises nothing but FrameError, ends every call (each call that
does not ask for more bytes consumes at least one), keeps less than one
frame once drained, and finds a good frame behind any damage.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.gat947_wire import (
    MAX_FRAME,
    MAX_PAYLOAD,
    SOF,
    ZFY_SIZE,
    Frame,
    FrameError,
    FrameParser,
    ZfyInfo,
    decode,
    encode,
)

FUZZ = settings(derandomize=True, max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# Bytes rich in what the parser reacts to: SOF bytes, version 01, big lengths.
interesting = st.lists(st.one_of(st.binary(max_size=64), st.just(SOF), st.just(SOF + b"\x01"),
                                 st.binary(min_size=1, max_size=1).map(lambda b: SOF + b"\x01\x83"
                                                                       + b + b"\x00\x03\xe8")),
                       max_size=40).map(b"".join)
frames = st.builds(Frame, command=st.integers(0, 255), seq=st.integers(0, 255),
                   status=st.integers(0, 255), payload=st.binary(max_size=MAX_PAYLOAD))


def drain(parser: FrameParser, budget: int) -> tuple[list[Frame], int]:
    """Every frame the parser gives now; the number of FrameErrors.  Never loops unbounded."""
    found: list[Frame] = []
    errors = 0
    for _ in range(budget + 1):
        try:
            frame = parser.next()
        except FrameError:
            errors += 1
            continue
        except Exception as exc:  # anything else is a defect
            raise AssertionError(f"parser raised {type(exc).__name__}: {exc}") from exc
        if frame is None:
            return found, errors
        found.append(frame)
    raise AssertionError("the parser kept returning results without consuming bytes")


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), interesting),
       cuts=st.lists(st.integers(0, 4096), max_size=8))
def test_arbitrary_bytes_in_arbitrary_pieces_never_hang_or_raise_another_error(
        data: bytes, cuts: list[int]) -> None:
    parser = FrameParser()
    edges = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(edges):
        parser.feed(data[start:end])
        pending = parser.pending
        # Each result other than "more bytes" consumes at least one byte.
        drain(parser, pending)
        assert parser.pending < MAX_FRAME


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), interesting))
def test_decode_of_arbitrary_bytes_is_a_frame_or_a_frame_error(data: bytes) -> None:
    try:
        frame = decode(data)
    except FrameError:
        return
    assert encode(frame) == data  # only exactly one well-formed frame decodes


@FUZZ
@given(garbage=st.one_of(st.binary(max_size=600), interesting), frame=frames,
       piece=st.integers(1, 64))
def test_a_good_frame_behind_any_damage_is_found(garbage: bytes, frame: Frame,
                                                  piece: int) -> None:
    wire = garbage + encode(frame)
    parser = FrameParser()
    found: list[Frame] = []
    for start in range(0, len(wire), piece):
        parser.feed(wire[start:start + piece])
        found += drain(parser, parser.pending)[0]
    assert found and found[-1] == frame
    assert parser.pending == 0


@FUZZ
@given(data=st.binary(min_size=ZFY_SIZE, max_size=ZFY_SIZE))
def test_zfy_info_of_arbitrary_bytes_decodes_with_its_bad_fields_named(data: bytes) -> None:
    info, bad = ZfyInfo.decode(data)
    assert all("\0" not in value for value in vars(info).values())
    if not bad:
        assert len(info.encode()) == ZFY_SIZE  # what was read can be written back
