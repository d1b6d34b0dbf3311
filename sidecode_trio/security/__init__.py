"""Identity, TLS, pairing and device credentials.

Trust model: the daemon has an Ed25519 identity key. A device learns its public key from the QR
code (out of band), pairs with a one-time secret that never crosses the wire (an HMAC proves it),
and from then on proves possession of its own Ed25519 key on every request with a short-lived
token bound to the daemon's TLS certificate. The daemon's certificate is self-signed; its SHA-256
hash is signed by the identity key, so a client that knows the key can verify it without any CA.
"""
