"""The README.txt of an export bundle: how to verify it by hand, with public tools only.

The commands are written for this bundle (real clip id, file and log entry),
so an auditor can paste them.  Convention, relied on by the tests that run
them: a line starting with ``$ `` is a command, run from the bundle directory
in one bash session; a command ending in ``<<'EOF'`` continues up to the line
``EOF``; a line starting with ``=> `` is the output to expect.
"""

from __future__ import annotations

from agent.verify.layout import BUNDLE_FORMAT, STATION_CERT

_TEMPLATE = """\
bwc-agent evidence bundle ({fmt})
========================================

Station {station_id} exported {clips} clip(s) with their signed manifests,
their custody log entries, proofs that those entries are in the station's
signed log, and the station certificate.  The easiest check is

    bwc-agent verify .

which reports every failure (docs/AUDIT.md explains each one).  Everything
below checks the same by hand, with sha256sum, openssl (3.0 or later) and
python3.  Run the commands from this directory, in one bash session; they
write only into a temporary directory ($W), never into the bundle.  The
worked example uses clip {clip_id}.
Lines starting with "=>" show the expected output.

Layout
------
data/clips/<clip id>/<file>        the clip's bytes (name made safe for file
                                   systems; the manifest keeps the true name)
data/manifests/<clip id>.dsse.json the signed manifest (DSSE envelope)
custody/entries.jsonl              the clips' custody log entries, one per
                                   line, each in RFC 8785 canonical JSON
custody/proofs.json                inclusion proof of each entry
custody/checkpoint.dsse.json       the signed checkpoint (log size and root)
custody/checkpoints.jsonl          earlier checkpoints + consistency proofs
certs/station.pem                  the station certificate
FORMATS.md                         every format, precisely (for writing
                                   your own verifier)

1. Every file is intact (BagIt manifests)
-----------------------------------------
$ sha256sum -c manifest-sha256.txt
$ sha256sum -c tagmanifest-sha256.txt
=> every line ends in ": OK"

2. The station certificate and its key id
-----------------------------------------
$ W=$(mktemp -d)
$ openssl x509 -in certs/station.pem -noout -subject -issuer -dates -fingerprint -sha256
$ openssl x509 -in certs/station.pem -pubkey -noout > "$W/station.pub"
$ openssl pkey -pubin -in "$W/station.pub" -outform DER | sha256sum
=> {keyid}  -
That is the key id every signature in this bundle must name.  Compare the
fingerprint with the platform's record of station {station_id}; if the
platform CA issued the certificate, also run
    openssl verify -CAfile <platform CA file> certs/station.pem

3. The clip's manifest is signed by the station
-----------------------------------------------
DSSE signs PAE = "DSSEv1 <len(type)> <type> <len(payload)> <payload>".
J reads one field of a JSON file (python3 -c "$J" FILE KEY...); for a
.jsonl file the first KEY is a line number, from 1:
$ J='import json,sys; a=sys.argv[1:]; f=open(a.pop(0)); v=json.loads(f.readlines()[int(a.pop(0))-1]) if f.name.endswith(".jsonl") else json.load(f); [v := v[int(k) if k.isdigit() else k] for k in a]; print(v)'
$ M=data/manifests/{clip_id}.dsse.json
$ python3 -c "$J" "$M" payload | openssl base64 -d -A > "$W/payload.json"
$ python3 -c "$J" "$M" signatures 0 sig | openssl base64 -d -A > "$W/sig.bin"
$ python3 -c "$J" "$M" signatures 0 keyid
=> {signer_keyid}
$ TYPE=$(python3 -c "$J" "$M" payloadType)
$ {{ printf 'DSSEv1 %d %s %d ' "${{#TYPE}}" "$TYPE" "$(wc -c < "$W/payload.json")"; cat "$W/payload.json"; }} > "$W/pae.bin"
$ openssl x509 -in {signer_cert} -pubkey -noout > "$W/signer.pub"
$ openssl pkeyutl -verify -pubin -inkey "$W/signer.pub" -rawin -in "$W/pae.bin" -sigfile "$W/sig.bin"
=> Signature Verified Successfully
$ cat "$W/payload.json"; echo
=> the manifest: clip id, true file name, size, SHA-256, device, officer, case
$ sha256sum < "$W/payload.json"
=> the manifest's own SHA-256, which the clip.sealed log entry records (step 6)

4. The clip's bytes are the ones the manifest names
---------------------------------------------------
$ sha256sum '{clip_path}'
$ python3 -c "$J" "$W/payload.json" file digests sha256
$ test "$(sha256sum < '{clip_path}' | cut -c1-64)" = "$(python3 -c "$J" "$W/payload.json" file digests sha256)" && echo "clip matches its signed manifest"
=> clip matches its signed manifest

5. The checkpoint is signed by the station
------------------------------------------
$ C=custody/checkpoint.dsse.json
$ python3 -c "$J" "$C" payload | openssl base64 -d -A > "$W/checkpoint.json"
$ python3 -c "$J" "$C" signatures 0 sig | openssl base64 -d -A > "$W/checkpoint.sig"
$ CTYPE=$(python3 -c "$J" "$C" payloadType)
$ {{ printf 'DSSEv1 %d %s %d ' "${{#CTYPE}}" "$CTYPE" "$(wc -c < "$W/checkpoint.json")"; cat "$W/checkpoint.json"; }} > "$W/checkpoint.pae"
$ openssl pkeyutl -verify -pubin -inkey "$W/station.pub" -rawin -in "$W/checkpoint.pae" -sigfile "$W/checkpoint.sig"
=> Signature Verified Successfully
$ cat "$W/checkpoint.json"; echo
=> {{"at":...,"root":"<hex>","size":<entries in the log>,"station_id":"{station_id}"}}

6. A log entry is in the signed log (leaf hash and inclusion proof)
-------------------------------------------------------------------
Line {entry_line} of custody/entries.jsonl is log entry {entry_seq} ({entry_kind}) of
clip {clip_id}.  Its leaf hash is SHA-256 of a 0x00 byte followed by the line
(without its newline), and it must equal leaf_hash in custody/proofs.json:
$ sed -n '{entry_line}p' custody/entries.jsonl | tr -d '\\n' > "$W/entry.json"
$ {{ printf '\\000'; cat "$W/entry.json"; }} | sha256sum
=> {leaf_hash}  -
$ cat "$W/entry.json"; echo
=> {{"at":...,"body":{{...,"manifest_sha256":"<as in step 3>",...}},"clip_id":"{clip_id}","kind":"{entry_kind}","seq":{entry_seq}}}
Walk its inclusion proof up to the checkpoint root (RFC 9162 section
2.1.3.2; interior nodes are SHA-256 of 0x01 || left || right):
$ python3 - "$W/entry.json" <<'EOF'
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
print("computed root  ", r.hex())
print("checkpoint root", head["root"])
print("entry", seq, "is in the signed log" if ok else "is NOT proven to be in the signed log")
sys.exit(0 if ok else 1)
EOF
=> entry {entry_seq} is in the signed log
Repeat with any other line.  Each entry's leaf_index must be its seq - 1.

7. Earlier checkpoints are prefixes of this one (the log was only appended)
--------------------------------------------------------------------------
Each line of custody/checkpoints.jsonl is an earlier signed checkpoint with a
consistency proof (RFC 9162 section 2.1.4.2).  Check their signatures as in
step 5, with the "envelope" member of each line{earlier_signature}
Then check that each is a prefix of the newest:
$ python3 - <<'EOF'
import base64, hashlib, json, sys
node = lambda left, right: hashlib.sha256(b"\\x01" + left + right).digest()
payload = lambda env: json.loads(base64.b64decode(env["payload"]))
head = payload(json.load(open("custody/checkpoint.dsse.json")))
n, second, ok = head["size"], bytes.fromhex(head["root"]), True
for line in open("custody/checkpoints.jsonl"):
    item = json.loads(line)
    old = payload(item["envelope"])
    m, first = old["size"], bytes.fromhex(old["root"])
    proof = [bytes.fromhex(h) for h in item["consistency_proof"]]
    if m & (m - 1) == 0:
        proof = [first] + proof
    fn, sn, good = m - 1, n - 1, 0 < m < n and len(proof) > 0
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0] if proof else b""
    for c in proof[1:]:
        if sn == 0:
            good = False
            break
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    good = good and sn == 0 and fr == first and sr == second
    ok = ok and good
    print("checkpoint of size", m, "signed", old["at"], "is a prefix of size", n, ":", good)
sys.exit(0 if ok else 1)
EOF
=> one line per earlier checkpoint, each ending in ": True"
"""  # noqa: E501 (commands are kept whole, to be pasted)


# Step 7's signature check of the first earlier checkpoint (when there is one).
_EARLIER_SIGNATURE = """; for line 1:
$ E=custody/checkpoints.jsonl
$ python3 -c "$J" "$E" 1 envelope payload | openssl base64 -d -A > "$W/earlier.json"
$ python3 -c "$J" "$E" 1 envelope signatures 0 sig | openssl base64 -d -A > "$W/earlier.sig"
$ python3 -c "$J" "$E" 1 envelope signatures 0 keyid
=> {keyid}
$ ETYPE=$(python3 -c "$J" "$E" 1 envelope payloadType)
$ {{ printf 'DSSEv1 %d %s %d ' "${{#ETYPE}}" "$ETYPE" "$(wc -c < "$W/earlier.json")"; cat "$W/earlier.json"; }} > "$W/earlier.pae"
$ openssl x509 -in {cert} -pubkey -noout > "$W/earlier.pub"
$ openssl pkeyutl -verify -pubin -inkey "$W/earlier.pub" -rawin -in "$W/earlier.pae" -sigfile "$W/earlier.sig"
=> Signature Verified Successfully
Repeat with the other lines ({earlier} in all)."""  # noqa: E501 (commands are kept whole)


def readme_text(*, station_id: str, keyid: str, clip_id: str, clip_path: str, entry_line: int,
                entry_seq: int, entry_kind: str, leaf_hash: str, clips: int,
                earlier: int = 0, signer_cert: str = STATION_CERT,
                signer_keyid: str | None = None, earlier_cert: str = STATION_CERT,
                earlier_keyid: str | None = None) -> str:
    """README.txt for a bundle; the worked example uses ``clip_id`` and log line ``entry_line``.

    ``clip_path`` is a safe name (layout.safe_name): it needs no shell quoting
    beyond the single quotes used here.  ``earlier``: how many lines
    custody/checkpoints.jsonl has (the first one's signature is checked).
    ``signer_cert`` / ``earlier_cert`` hold the keys that signed the example's
    manifest and the first earlier checkpoint (an earlier key's,
    certs/keys/<keyid>.pem, when the station rotated its key since).
    """
    signature = (_EARLIER_SIGNATURE.format(keyid=earlier_keyid or keyid, cert=earlier_cert,
                                           earlier=earlier) if earlier
                 else " (this bundle has none).")
    return _TEMPLATE.format(fmt=BUNDLE_FORMAT, station_id=station_id, keyid=keyid,
                            clip_id=clip_id, clip_path=clip_path, entry_line=entry_line,
                            entry_seq=entry_seq, entry_kind=entry_kind, leaf_hash=leaf_hash,
                            clips=clips, earlier_signature=signature,
                            signer_cert=signer_cert, signer_keyid=signer_keyid or keyid)
