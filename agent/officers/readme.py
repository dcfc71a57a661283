"""The officers and cases steps of a bundle's README.txt: checked by hand, public tools only.

Appended to the README written by agent/verify/readme.py and run in the same
bash session (the ``J`` helper, ``$W`` and the manifest payload of step 3 are
reused).  Same conventions: ``$ `` commands, heredocs up to ``EOF``, ``=> ``
expected output; the project's tests run them on a real bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

_CREDENTIAL = """\

8. The officer's credential is signed by the platform's credential key
---------------------------------------------------------------------
The manifest of clip
  {clip_id}
names credential
  {credential_id}
of officer {officer_id} (officer.credential_id, officer.status).  The credential
key the station trusted is officers/credential-key.pem; compare its key id
with the platform's record:
$ K=officers/credential-key.pem
$ openssl pkey -pubin -in "$K" -outform DER | sha256sum
=> {credential_keyid}  -
$ CR='{credential_path}'
$ python3 -c "$J" "$CR" payload | openssl base64 -d -A > "$W/credential.json"
$ python3 -c "$J" "$CR" signatures 0 sig | openssl base64 -d -A > "$W/credential.sig"
$ RT=$(python3 -c "$J" "$CR" payloadType)
$ {{ printf 'DSSEv1 %d %s %d ' "${{#RT}}" "$RT" "$(wc -c < "$W/credential.json")"; cat "$W/credential.json"; }} > "$W/credential.pae"
$ openssl pkeyutl -verify -pubin -inkey "$K" -rawin -in "$W/credential.pae" -sigfile "$W/credential.sig"
=> Signature Verified Successfully
The credential must be valid when the clip was recorded (recorded.start in the
clip's manifest, the camera's time corrected by its clock offset; check the
manifest's signature as in step 3 if it is not the clip of step 3):
$ python3 -c "$J" 'data/manifests/{clip_id}.dsse.json' payload | openssl base64 -d -A > "$W/officer-manifest.json"
$ python3 -c "$J" "$W/officer-manifest.json" officer status
=> valid
$ python3 - "$W/credential.json" "$W/officer-manifest.json" <<'EOF'
import json, sys
from datetime import datetime
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
cred, manifest = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
at = manifest["recorded"]["start"] or manifest["ingest"]["docked_at"]
inside = t(cred["not_before"]) <= t(at) <= t(cred["not_after"])
print("officer", cred["officer_id"], cred["name"], "credential", cred["credential_id"])
print("valid from", cred["not_before"], "to", cred["not_after"], "; recorded", at)
print("recorded within the credential's validity:", "yes" if inside else "NO")
sys.exit(0 if inside else 1)
EOF
=> recorded within the credential's validity: yes

9. The roster the station held lists the credential, unrevoked
--------------------------------------------------------------
officers/rosters.jsonl holds signed roster messages (snapshots and updates)
by version; the station sealed the clip holding roster version {roster_version}.
Line {roster_line} is the message that lists the credential; check its
signature as in step 8:
$ sed -n '{roster_line}p' officers/rosters.jsonl > "$W/roster-line.json"
$ python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["message"]["envelope"], open(sys.argv[2], "w"))' "$W/roster-line.json" "$W/roster.dsse.json"
$ python3 -c "$J" "$W/roster.dsse.json" payload | openssl base64 -d -A > "$W/roster.json"
$ python3 -c "$J" "$W/roster.dsse.json" signatures 0 sig | openssl base64 -d -A > "$W/roster.sig"
$ RT=$(python3 -c "$J" "$W/roster.dsse.json" payloadType)
$ {{ printf 'DSSEv1 %d %s %d ' "${{#RT}}" "$RT" "$(wc -c < "$W/roster.json")"; cat "$W/roster.json"; }} > "$W/roster.pae"
$ openssl pkeyutl -verify -pubin -inkey "$K" -rawin -in "$W/roster.pae" -sigfile "$W/roster.sig"
=> Signature Verified Successfully
It lists the credential by the SHA-256 of its payload.  Revocations come in
the same message or in later ones up to version {roster_version} (check the
signature of each line you rely on, as above):
$ python3 - "$W/roster.json" "$W/credential.json" {roster_version} <<'EOF'
import base64, hashlib, json, sys
roster, raw, upto = json.load(open(sys.argv[1])), open(sys.argv[2], "rb").read(), int(sys.argv[3])
cid, digest = json.loads(raw)["credential_id"], hashlib.sha256(raw).hexdigest()
listed = roster.get("credentials", []) + roster.get("add", [])
ok = any(c["credential_id"] == cid and c["sha256"] == digest for c in listed)
print("roster version", roster["version"], "lists credential", cid, "with its SHA-256:", "yes" if ok else "NO")
revoked = []
for line in open("officers/rosters.jsonl", encoding="utf-8"):
    item = json.loads(line)
    if item["version"] <= upto:
        body = json.loads(base64.b64decode(item["message"]["envelope"]["payload"]))
        revoked += [r for r in body.get("revoked", []) + body.get("revoke", []) if r["credential_id"] == cid]
print("revoked by version", upto, ":", "; ".join(r["revoked_at"] + " " + r["reason"] for r in revoked) or "no")
sys.exit(0 if ok and not revoked else 1)
EOF
=> roster version {listing_version} lists credential {credential_id} with its SHA-256: yes
"""  # noqa: E501 (commands are kept whole, to be pasted)

_TAG = """\

10. The case tag is in the signed log
-------------------------------------
Line {tag_line} of custody/entries.jsonl is log entry {tag_seq} (clip.tagged,
source {tag_source}): it puts clip
  {tag_clip_id}
in case
  {case_id}
Removals and corrections are later entries whose refers_to names the entry
they undo; cases/ lists, per case, the clips in it and their entries.
$ sed -n '{tag_line}p' custody/entries.jsonl | tr -d '\\n' > "$W/tag.json"
$ python3 -c "$J" "$W/tag.json" body case_id
=> {case_id}
$ {{ printf '\\000'; cat "$W/tag.json"; }} | sha256sum
=> {tag_leaf}  -
Walk its inclusion proof to the signed checkpoint, as in step 6:
$ python3 - "$W/tag.json" <<'EOF'
import base64, hashlib, json, sys
H = lambda data: hashlib.sha256(data).digest()
entry = open(sys.argv[1], "rb").read()
seq = json.loads(entry)["seq"]
proof = next(p for p in json.load(open("custody/proofs.json"))["entries"] if p["seq"] == seq)
head = json.loads(base64.b64decode(json.load(open("custody/checkpoint.dsse.json"))["payload"]))
r, fn, sn = H(b"\\x00" + entry), proof["leaf_index"], head["size"] - 1
for p in map(bytes.fromhex, proof["inclusion_proof"]):
    if fn % 2 == 1 or fn == sn:
        r = H(b"\\x01" + p + r)
        while fn % 2 == 0 and fn != 0:
            fn, sn = fn >> 1, sn >> 1
    else:
        r = H(b"\\x01" + r + p)
    fn, sn = fn >> 1, sn >> 1
ok = sn == 0 and r.hex() == head["root"] and proof["leaf_index"] == seq - 1
print("tag entry", seq, "is in the signed log" if ok else "is NOT proven to be in the signed log")
sys.exit(0 if ok else 1)
EOF
=> tag entry {tag_seq} is in the signed log
"""


@dataclass(frozen=True)
class CredentialExample:
    clip_id: str
    credential_id: str
    officer_id: str
    credential_path: str
    credential_keyid: str
    roster_version: int
    roster_line: int
    listing_version: int


@dataclass(frozen=True)
class TagExample:
    line: int
    seq: int
    clip_id: str
    case_id: str
    source: str
    leaf: str


def officers_readme(credential: CredentialExample | None, tag: TagExample | None) -> str:
    """The README steps for a credential and a case tag of this bundle ('' if it has none).

    Ids appear in single-quoted shell words only through safe paths; the case
    ID is shown, never run.
    """
    text = ""
    if credential is not None:
        text += _CREDENTIAL.format(**credential.__dict__)
    if tag is not None:
        text += _TAG.format(tag_line=tag.line, tag_seq=tag.seq, tag_clip_id=tag.clip_id,
                            case_id=tag.case_id, tag_source=tag.source, tag_leaf=tag.leaf)
    return text
