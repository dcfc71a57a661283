"""The camera password file (devices.gat947.password_file): read once, refused by name when
it is unsafe or unusable, and its first line only is the password (docs/GAT947.md §3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import ConfigError
from drivers.gat947_wire import PASSWORD_MAX, Password, read_password

WHERE = "devices.gat947.password_file"


def _file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "camera-password"
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(("data", "password"), [
    (b"s3cret\n", b"s3cret"),
    (b"s3cret\r\n", b"s3cret"),       # written on Windows
    (b"s3cret", b"s3cret"),           # no newline at the end
    (b"pass word  \n", b"pass word  "),  # spaces are part of it
    (b"XPASSX\r\n", b"XPASSX"),
    (b"first\nsecond\nthird\n", b"first"),
    (b"x" * PASSWORD_MAX + b"\n", b"x" * PASSWORD_MAX),
])
def test_the_password_is_the_first_line_exactly(tmp_path: Path, data: bytes,
                                                password: bytes) -> None:
    """Rule: the password is the file's first line, without its line ending, byte for byte."""
    assert read_password(_file(tmp_path, data)).reveal() == password


def test_no_password_file_means_a_camera_without_a_password() -> None:
    """Rule: leaving password_file unset logs in with the empty password."""
    assert read_password(None).reveal() == b""


def test_an_unsafe_or_unusable_password_file_is_refused_by_name(tmp_path: Path) -> None:
    """Rule: a password file others may read, that is not a regular file, is missing, empty
    or too long is a configuration error naming the key, the file and the fix."""
    path = _file(tmp_path, b"s3cret\n", 0o640)
    with pytest.raises(ConfigError) as err:
        read_password(path)
    assert str(err.value) == (f"{WHERE}: the camera password file {path} is accessible by "
                              f"group or others (mode 0640); run: chmod 600 {path}")
    with pytest.raises(ConfigError) as err:
        read_password(tmp_path)
    assert str(err.value) == f"{WHERE}: {tmp_path} is not a regular file"
    with pytest.raises(ConfigError) as err:
        read_password(tmp_path / "missing")
    assert str(err.value) == (f"{WHERE}: cannot read the camera password file "
                              f"{tmp_path / 'missing'}: No such file or directory")
    path = _file(tmp_path, b"\nsecond line\n")
    with pytest.raises(ConfigError) as err:
        read_password(path)
    assert str(err.value) == (f"{WHERE}: the camera password file {path} is empty (leave "
                              "password_file unset for cameras without a password)")
    path = _file(tmp_path, b"x" * (PASSWORD_MAX + 1) + b"\n")
    with pytest.raises(ConfigError) as err:
        read_password(path)
    assert str(err.value) == f"{WHERE}: the password in {path} is longer than 32 bytes"


def test_the_password_file_is_opened_without_leaking_to_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: the password file's descriptor is never inherited by a child process, and
    opening it never makes a terminal the station's controlling terminal."""
    seen: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, *args: object, **kwargs: object) -> int:
        seen.append(flags)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    read_password(_file(tmp_path, b"s3cret\n"))
    assert seen and all(f & os.O_CLOEXEC and f & os.O_NOCTTY for f in seen)


def test_a_password_longer_than_the_protocol_allows_is_refused() -> None:
    """Rule: InitDevice carries at most 32 password bytes; a longer one is refused."""
    with pytest.raises(ValueError) as err:
        Password(b"x" * (PASSWORD_MAX + 1))
    assert str(err.value) == "the password is longer than 32 bytes"
    assert Password(b"x" * PASSWORD_MAX).reveal() == b"x" * PASSWORD_MAX
