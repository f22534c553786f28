-- Sessions the host's retention deleted: a later sync must not fetch them again from a guest
-- that still holds them.
CREATE TABLE pruned (
    id          TEXT PRIMARY KEY NOT NULL,
    machine     TEXT NOT NULL,
    pruned_at   INTEGER NOT NULL
) WITHOUT ROWID;
