"""Chain-of-custody primitives and formats (DESIGN.md section 5).

``jcs`` (RFC 8785 canonical JSON), ``dsse`` (signature envelopes), ``merkle``
(RFC 6962 trees and proofs) and ``keys`` (the station identity) are pure
building blocks; manifests, the custody log and sealing are built on them.
"""
