"""Generated wire contract of Liaison (package liaison.v1)."""
