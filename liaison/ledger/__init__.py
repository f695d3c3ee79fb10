"""The tamper-evident audit ledger: an RFC 9162 Merkle log with signed checkpoints.

merkle      tree hashing, inclusion and consistency proofs (RFC 9162 2.1)
checkpoint  signed tree heads in the C2SP signed-note checkpoint format
entries     versioned, self-describing entry records (canonical JSON)
store       durable storage through SQLAlchemy (SQLite by default, PostgreSQL)
log         the writer: group commit, proofs for fresh entries, periodic checkpoints
"""
