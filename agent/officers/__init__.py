"""Officers and cases (DESIGN.md section 6): who recorded a clip, and for which case.

The platform issues each officer a credential (a DSSE envelope signed by its
credential key) and keeps a signed roster of the credentials in force and
those revoked; the station keeps every roster message it accepted.  At each
seal the station binds the clip to its officer's credential, offline, and
records the outcome in the manifest; cases come from platform commands,
platform case windows and people at the station, each a custody log entry.

Pure parts (``credentials``, ``roster``, ``times``) are shared by the station
and the offline verifier; the others work on the store.
"""
