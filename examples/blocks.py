"""Building blocks for snippet-jail: an example to copy (docs/blocks.md).

    JAIL_BLOCKS=examples.blocks:BLOCKS JAIL_EXAMPLE_DB=/var/lib/jail/kv.sqlite make serve

A request names the blocks it may call and carries the tenant in its context:

    {"code": "kv_set('visits', (kv_get('visits') or 0) + 1)\\nreturn kv_get('visits')",
     "blocks": ["kv_get", "kv_set"], "context": {"tenant": "acme"}}

- kv_get, kv_set, kv_delete, kv_keys: a key-value store per tenant, in a SQLite
  database (standard library) in the file the operator names (JAIL_EXAMPLE_DB).
  Every row is keyed by the tenant of the request's context, which the snippet
  never sees nor chooses, so one tenant never reads or writes another's rows.
  Values are any typed value (dates, big integers, bytes, decimals ...),
  stored as jail's typed JSON, up to 64 KiB each.
- now: the current time, UTC.
- country, country_codes: a lookup over a small read-only dataset shipped
  beside this file (data/countries.json).

Each block is an ordinary Python function; an exception it raises reaches the
snippet by name and message only (PermissionError, ValueError, KeyError ...).
Sync blocks run on the host's threads, so each call opens its own connection.
"""

import datetime
import json
import os
import pathlib
import sqlite3

from jail import CallContext, _codec

DB_SETTING = "JAIL_EXAMPLE_DB"
MAX_KEY = 256  # characters of a key
MAX_VALUE = 64 * 1024  # bytes of a value's typed JSON
MAX_KEYS_LISTED = 1000
COUNTRIES = json.loads((pathlib.Path(__file__).parent / "data" / "countries.json").read_text("utf-8"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,   -- {"value": ..., "types": {...}}: jail's typed JSON
    updated TEXT NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID
"""


class Store:
    """The key-value store in one SQLite file; every method takes the tenant first."""

    def __init__(self, path):
        self.path = os.fspath(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
            db.execute(SCHEMA)

    def _connect(self):
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        return _Closing(db)

    def get(self, tenant, key):
        with self._connect() as db:
            row = db.execute("SELECT value FROM kv WHERE tenant = ? AND key = ?", (tenant, key)).fetchone()
        if row is None:
            return None
        stored = json.loads(row[0])
        return _codec.decode(stored["value"], stored["types"])

    def set(self, tenant, key, value):
        encoded, types = _codec.encode(value)  # ValueError for a value with no typed form
        text = json.dumps({"value": encoded, "types": types}, allow_nan=False)
        if len(text.encode()) > MAX_VALUE:
            raise ValueError(f"the value of {key!r} is over {MAX_VALUE} bytes")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        with self._connect() as db:
            db.execute("INSERT INTO kv (tenant, key, value, updated) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                       (tenant, key, text, now))

    def delete(self, tenant, key) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM kv WHERE tenant = ? AND key = ?", (tenant, key)).rowcount > 0

    def keys(self, tenant, prefix=""):
        with self._connect() as db:
            rows = db.execute("SELECT key FROM kv WHERE tenant = ? AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
                              (tenant, len(prefix), prefix, MAX_KEYS_LISTED)).fetchall()
        return [row[0] for row in rows]


class _Closing:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        return self.db

    def __exit__(self, *exc):
        self.db.close()


def _tenant(context: CallContext) -> str:
    tenant = context.context.get("tenant") if isinstance(context.context, dict) else None
    if not isinstance(tenant, str) or not tenant:
        raise PermissionError("this block needs a tenant: send \"context\": {\"tenant\": ...} with the request")
    return tenant


def _key(key) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
        raise ValueError(f"a key is a string of 1 to {MAX_KEY} characters")
    return key


def make_blocks(path) -> dict:
    """The blocks, their store in the SQLite file at path (made if missing)."""
    store = Store(path)

    def kv_get(key: str, *, context):
        """The value stored under key for this tenant, or None."""
        return store.get(_tenant(context), _key(key))

    def kv_set(key: str, value, *, context) -> None:
        """Stores value (any typed value, up to 64 KiB) under key for this tenant."""
        store.set(_tenant(context), _key(key), value)

    def kv_delete(key: str, *, context) -> bool:
        """Deletes key for this tenant; whether it was there."""
        return store.delete(_tenant(context), _key(key))

    def kv_keys(prefix: str = "", *, context) -> list[str]:
        """This tenant's keys that start with prefix, sorted (at most 1000)."""
        if not isinstance(prefix, str):
            raise ValueError("prefix is a string")
        return store.keys(_tenant(context), prefix)

    return {"kv_get": kv_get, "kv_set": kv_set, "kv_delete": kv_delete, "kv_keys": kv_keys,
            "now": now, "country": country, "country_codes": country_codes}


def now() -> datetime.datetime:
    """The current time, UTC."""
    return datetime.datetime.now(datetime.timezone.utc)


def country(code: str) -> dict | None:
    """A country by its ISO 3166 alpha-2 code ("FR"): name, capital, currency, population; None if unknown."""
    if not isinstance(code, str):
        raise ValueError("code is a two-letter string such as 'FR'")
    entry = COUNTRIES.get(code.upper())
    return dict(entry, code=code.upper()) if entry else None


def country_codes() -> list[str]:
    """The codes country() knows."""
    return sorted(COUNTRIES)


def __getattr__(name):
    """BLOCKS, made on first use from the file JAIL_EXAMPLE_DB names."""
    if name != "BLOCKS":
        raise AttributeError(name)
    path = os.environ.get(DB_SETTING)
    if not path:
        raise RuntimeError(f"set {DB_SETTING} to the SQLite file the key-value blocks keep their rows in")
    blocks = globals()["BLOCKS"] = make_blocks(path)
    return blocks
