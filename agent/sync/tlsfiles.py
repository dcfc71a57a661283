"""The station's TLS client context, built from the configured files, for MQTT and uploads.

Each file is read and checked on its own first, so that a problem names
the configuration key it comes from (``platform.ca_file``,
``platform.cert_file``, ``platform.key_file``) and what is wrong with the
file (missing, unreadable, not PEM, key not matching the certificate),
instead of OpenSSL's bare ``[Errno 13]`` or ``[SSL] PEM lib``.  Every such
problem is a ConfigError: the station cannot start until the file is fixed,
and the command line exits 2.

Invariants: certificate verification and host name checks are on (a context
from ``ssl.create_default_context`` with only the configured CA, never the
system store); TLS 1.2 or later.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from agent.errors import ConfigError

# A CA bundle or certificate chain is a few KiB; this bound only keeps a wrong path
# (a disk image, /dev/zero) from being read whole.
_MAX_PEM_BYTES = 4 * 1024 * 1024


def read_pem(path: os.PathLike[str] | str, key: str) -> bytes:
    """The bytes of a configured PEM file; ConfigError naming ``key`` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{key}: {path} cannot be read by this user (permission denied); "
                          "check its owner and mode") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise ConfigError(f"{key}: {path} is larger than {_MAX_PEM_BYTES // 2**20} MiB; "
                          "not a PEM file")
    return data


def _certificates(path: Path, key: str) -> list[x509.Certificate]:
    data = read_pem(path, key)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{key}: {path} holds no PEM certificate "
                          "(-----BEGIN CERTIFICATE-----)")
    return certs


def _check_private_key(path: Path, key: str) -> None:
    data = read_pem(path, key)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{key}: {path} is encrypted with a passphrase; the station needs "
                          "an unencrypted key (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{key}: {path} holds no PEM private key") from None


def client_context(ca_file: os.PathLike[str] | str, cert_file: os.PathLike[str] | str | None,
                   key_file: os.PathLike[str] | str | None, *,
                   ca_key: str = "platform.ca_file", cert_key: str = "platform.cert_file",
                   key_key: str = "platform.key_file") -> ssl.SSLContext:
    """A verifying TLS client context trusting ``ca_file``, with the client certificate if given.

    Raises ConfigError naming the key of the first file that is unusable.
    """
    ca = Path(ca_file)
    cert = Path(cert_file) if cert_file is not None else None
    key = Path(key_file) if key_file is not None else None
    if (cert is None) != (key is None):
        raise ConfigError(f"{cert_key} / {key_key}: give both or neither")
    _certificates(ca, ca_key)
    try:
        # cafile given: the system's CA store is not loaded, only the platform's CA.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{ca_key}: {ca} cannot be used as a CA bundle: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        _certificates(cert, cert_key)
        _check_private_key(key, key_key)
        try:
            context.load_cert_chain(str(cert), str(key))
        except ssl.SSLError as exc:
            raise ConfigError(f"{cert_key} / {key_key}: the key in {key} does not belong to "
                              f"the certificate in {cert} ({exc.reason or exc})") from None
        except OSError as exc:
            raise ConfigError(f"{cert_key} / {key_key}: cannot load {cert} and {key}: "
                              f"{exc.strerror or exc}") from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context
