"""The key-rotation part of a bundle's README.txt: each rotation statement checked by hand.

Appended to the README (agent/verify/readme.py) when the bundle carries
``key.rotated`` entries.  Same conventions: ``$ `` lines are commands run
from the bundle directory in the README's bash session (``$W`` and ``$J``
are set by its steps 2 and 3), ``=> `` lines the output to expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.verify.layout import CERTS_DIR, STATION_CERT

__all__ = ["RotationExample", "keys_cert_path", "rotation_readme"]

_HEAD = """
Key rotations
-------------
The station replaced its signing key {count} time(s) (bwc-agent keys rotate).
Each replacement is a custody log entry of kind key.rotated holding a
rotation statement signed by BOTH keys: the old key vouches for the new one,
the new key proves it is held.  The statement's log_size is the number of
log entries before it: entries and checkpoints up to log_size belong to the
old key, from the statement's own entry on to the new one.  The
certificate of each earlier key is certs/keys/<keyid>.pem; the last new key
is the one of certs/station.pem.  Check each statement like this (it is also
an ordinary log entry: its inclusion proof is checked as in step 6).
"""

_ONE = """
Line {line} of custody/entries.jsonl is the rotation at seq {seq}:
$ sed -n '{line}p' custody/entries.jsonl > "$W/rotation{n}.json"
$ python3 -c "$J" "$W/rotation{n}.json" body statement payload | openssl base64 -d -A > "$W/rotation{n}-payload.json"
$ cat "$W/rotation{n}-payload.json"; echo
=> {{...,"log_size":{log_size},"new_keyid":"{new}","old_keyid":"{old}",...}}
$ RTYPE=$(python3 -c "$J" "$W/rotation{n}.json" body statement payloadType)
$ {{ printf 'DSSEv1 %d %s %d ' "${{#RTYPE}}" "$RTYPE" "$(wc -c < "$W/rotation{n}-payload.json")"; cat "$W/rotation{n}-payload.json"; }} > "$W/rotation{n}.pae"
The old key's certificate, its key id, and its signature (signature 0):
$ openssl x509 -in {old_cert} -noout -subject -issuer -dates
$ openssl x509 -in {old_cert} -pubkey -noout > "$W/rotation{n}-old.pub"
$ openssl pkey -pubin -in "$W/rotation{n}-old.pub" -outform DER | sha256sum
=> {old}  -
$ python3 -c "$J" "$W/rotation{n}.json" body statement signatures 0 keyid
=> {old}
$ python3 -c "$J" "$W/rotation{n}.json" body statement signatures 0 sig | openssl base64 -d -A > "$W/rotation{n}-old.sig"
$ openssl pkeyutl -verify -pubin -inkey "$W/rotation{n}-old.pub" -rawin -in "$W/rotation{n}.pae" -sigfile "$W/rotation{n}-old.sig"
=> Signature Verified Successfully
The new key's (signature 1):
$ openssl x509 -in {new_cert} -pubkey -noout > "$W/rotation{n}-new.pub"
$ openssl pkey -pubin -in "$W/rotation{n}-new.pub" -outform DER | sha256sum
=> {new}  -
$ python3 -c "$J" "$W/rotation{n}.json" body statement signatures 1 keyid
=> {new}
$ python3 -c "$J" "$W/rotation{n}.json" body statement signatures 1 sig | openssl base64 -d -A > "$W/rotation{n}-new.sig"
$ openssl pkeyutl -verify -pubin -inkey "$W/rotation{n}-new.pub" -rawin -in "$W/rotation{n}.pae" -sigfile "$W/rotation{n}-new.sig"
=> Signature Verified Successfully
"""  # noqa: E501 (commands are kept whole, to be pasted)


@dataclass(frozen=True)
class RotationExample:
    line: int  # in custody/entries.jsonl, from 1
    seq: int
    old_keyid: str
    new_keyid: str


def keys_cert_path(keyid: str, current_keyid: str) -> str:
    """Where a bundle holds the certificate of ``keyid``."""
    return STATION_CERT if keyid == current_keyid else f"{CERTS_DIR}/keys/{keyid}.pem"


def rotation_readme(rotations: Sequence[RotationExample], current_keyid: str) -> str:
    """The README section for ``rotations`` (empty text when there are none)."""
    if not rotations:
        return ""
    parts = [_HEAD.format(count=len(rotations))]
    for n, rotation in enumerate(rotations, 1):
        parts.append(_ONE.format(
            n=n, line=rotation.line, seq=rotation.seq, log_size=rotation.seq - 1,
            old=rotation.old_keyid, new=rotation.new_keyid,
            old_cert=keys_cert_path(rotation.old_keyid, current_keyid),
            new_cert=keys_cert_path(rotation.new_keyid, current_keyid)))
    return "".join(parts)
