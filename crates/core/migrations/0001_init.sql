-- Machines the app and CLI manage. Provider-specific details live in `spec` (JSON).
CREATE TABLE machines (
    name        TEXT PRIMARY KEY NOT NULL,
    provider    TEXT NOT NULL,
    status      TEXT NOT NULL,
    agent_url   TEXT,
    token_path  TEXT NOT NULL,
    pid         INTEGER,
    spec        TEXT NOT NULL DEFAULT '{}',
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Sessions seen on machines; `state` is running | ended | interrupted.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    machine     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,
    last_seq    INTEGER NOT NULL DEFAULT 0,
    synced_at   INTEGER
);

CREATE TABLE events (
    session_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    t_ms        INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE INDEX events_by_time ON events (session_id, t_ms);

-- One row per video part; `bytes` is how much of it is stored locally.
CREATE TABLE recordings (
    session_id  TEXT NOT NULL,
    part        INTEGER NOT NULL,
    path        TEXT NOT NULL,
    bytes       INTEGER NOT NULL DEFAULT 0,
    complete    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, part)
) WITHOUT ROWID;

CREATE TABLE thumbnails (
    session_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    which       TEXT NOT NULL,
    path        TEXT NOT NULL,
    PRIMARY KEY (session_id, seq, which)
) WITHOUT ROWID;

CREATE TABLE snapshots (
    name        TEXT PRIMARY KEY NOT NULL,
    machine     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    path        TEXT NOT NULL,
    spec        TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);

-- Secrets, encrypted (see vault.rs); `scope` is '' for global or an environment name.
CREATE TABLE secrets (
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL DEFAULT '',
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (name, scope)
) WITHOUT ROWID;

CREATE TABLE runs (
    id          TEXT PRIMARY KEY NOT NULL,
    repo        TEXT NOT NULL,
    base        TEXT NOT NULL,
    branch      TEXT NOT NULL,
    task        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    machine     TEXT NOT NULL,
    worktree    TEXT,
    status      TEXT NOT NULL,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
