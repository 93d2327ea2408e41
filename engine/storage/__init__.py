"""The store: URLs, the library's application and recorders for SQLite and PostgreSQL, the
case index and the command record, and the one adapter over the library's private API."""
