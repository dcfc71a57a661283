"""Schema migrations.  Each entry brings the database from version i to i+1.

Never edit a released migration; append a new one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: devices, docks, clips, custody log, checkpoints, outbox.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE devices (
        serial        TEXT PRIMARY KEY,
        driver        TEXT NOT NULL,
        vendor        TEXT NOT NULL DEFAULT '',
        model         TEXT NOT NULL DEFAULT '',
        firmware      TEXT NOT NULL DEFAULT '',
        officer_id    TEXT NOT NULL DEFAULT '',
        officer_name  TEXT NOT NULL DEFAULT '',
        unit_code     TEXT NOT NULL DEFAULT '',
        unit_name     TEXT NOT NULL DEFAULT '',
        usb_id        TEXT NOT NULL DEFAULT '',
        clock_offset_s REAL,
        first_seen    TEXT NOT NULL,
        last_seen     TEXT NOT NULL,
        docked_handle TEXT
    );
    CREATE TABLE docks (
        id            INTEGER PRIMARY KEY,
        device_serial TEXT NOT NULL,
        handle        TEXT NOT NULL,
        docked_at     TEXT NOT NULL,
        undocked_at   TEXT,
        report        TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE clips (
        clip_id        TEXT PRIMARY KEY,
        device_serial  TEXT NOT NULL,
        path           TEXT NOT NULL,
        name           TEXT NOT NULL,
        size           INTEGER NOT NULL,
        mtime_ms       INTEGER NOT NULL,
        state          TEXT NOT NULL,
        reason         TEXT,
        sha256         TEXT,
        flags          TEXT NOT NULL DEFAULT '[]',
        media          TEXT,
        recorded_start TEXT,
        recorded_end   TEXT,
        important      INTEGER NOT NULL DEFAULT 0,
        officer_id     TEXT NOT NULL DEFAULT '',
        case_id        TEXT,
        dock_id        INTEGER,
        docked_at      TEXT,
        discovered_at  TEXT NOT NULL,
        copied_at      TEXT,
        verified       INTEGER NOT NULL DEFAULT 0,
        copy_attempts  INTEGER NOT NULL DEFAULT 0,
        manifest       TEXT,
        sealed_at      TEXT,
        upload_url     TEXT,
        upload_offset  INTEGER NOT NULL DEFAULT 0,
        upload_attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        uploaded_at    TEXT,
        ack            TEXT,
        acknowledged_at TEXT,
        released_at    TEXT,
        purged_at      TEXT,
        updated_at     TEXT NOT NULL
    );
    CREATE UNIQUE INDEX clips_identity ON clips (device_serial, path, size, mtime_ms);
    CREATE INDEX clips_state ON clips (state);
    CREATE INDEX clips_sha256 ON clips (sha256);
    CREATE INDEX clips_case ON clips (case_id);
    CREATE TABLE custody_log (
        seq     INTEGER PRIMARY KEY,
        at      TEXT NOT NULL,
        kind    TEXT NOT NULL,
        clip_id TEXT,
        body    TEXT NOT NULL,
        leaf    BLOB NOT NULL
    );
    CREATE INDEX custody_log_clip ON custody_log (clip_id);
    CREATE TABLE checkpoints (
        size     INTEGER PRIMARY KEY,
        root     TEXT NOT NULL,
        at       TEXT NOT NULL,
        envelope TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY,
        topic        TEXT NOT NULL,
        payload      BLOB NOT NULL,
        qos          INTEGER NOT NULL,
        retain       INTEGER NOT NULL DEFAULT 0,
        created_at   TEXT NOT NULL,
        delivered_at TEXT
    );
    CREATE INDEX outbox_pending ON outbox (delivered_at, id);
    CREATE TABLE seen_commands (
        id          TEXT PRIMARY KEY,
        received_at TEXT NOT NULL,
        expires_at  TEXT NOT NULL
    );
    """,
    # 2: the device and officer identity as it was when the clip was discovered, so a
    #    manifest never mixes a later docking's identity into an older clip.
    """
    ALTER TABLE clips ADD COLUMN officer_name TEXT NOT NULL DEFAULT '';
    ALTER TABLE clips ADD COLUMN unit_code TEXT NOT NULL DEFAULT '';
    ALTER TABLE clips ADD COLUMN unit_name TEXT NOT NULL DEFAULT '';
    ALTER TABLE clips ADD COLUMN device_vendor TEXT NOT NULL DEFAULT '';
    ALTER TABLE clips ADD COLUMN device_model TEXT NOT NULL DEFAULT '';
    ALTER TABLE clips ADD COLUMN device_firmware TEXT NOT NULL DEFAULT '';
    ALTER TABLE clips ADD COLUMN clock_offset_s REAL;
    UPDATE clips SET
        officer_name = COALESCE((SELECT officer_name FROM devices
                                 WHERE serial = device_serial), ''),
        unit_code = COALESCE((SELECT unit_code FROM devices WHERE serial = device_serial), ''),
        unit_name = COALESCE((SELECT unit_name FROM devices WHERE serial = device_serial), ''),
        device_vendor = COALESCE((SELECT vendor FROM devices WHERE serial = device_serial), ''),
        device_model = COALESCE((SELECT model FROM devices WHERE serial = device_serial), ''),
        device_firmware = COALESCE((SELECT firmware FROM devices
                                    WHERE serial = device_serial), ''),
        clock_offset_s = (SELECT clock_offset_s FROM devices WHERE serial = device_serial)
    """,
    # 3: the response each accepted command got, re-sent when the broker delivers the
    #    command again (a connection lost before it was settled) instead of running it twice.
    """
    ALTER TABLE seen_commands ADD COLUMN response TEXT;
    """,
    # 4: officers and cases.  Officer credentials and every signed roster message the
    #    station accepted (kept, so what it believed at a dock can be shown later); the
    #    roster it holds now; case windows from the platform; the cases each clip is in
    #    (derived from its clip.tagged entries); each clip's officer binding and its
    #    recording times corrected by the camera's clock offset.
    """
    CREATE TABLE officer_credentials (
        credential_id  TEXT PRIMARY KEY,
        officer_id     TEXT NOT NULL,
        card_id        TEXT,
        payload_sha256 TEXT NOT NULL,
        envelope       TEXT NOT NULL,
        received_at    TEXT NOT NULL
    );
    CREATE INDEX officer_credentials_card ON officer_credentials (card_id);
    CREATE TABLE credential_cameras (
        serial        TEXT NOT NULL,
        credential_id TEXT NOT NULL,
        PRIMARY KEY (serial, credential_id)
    );
    CREATE TABLE roster_messages (
        kind         TEXT NOT NULL,
        version      INTEGER NOT NULL,
        base_version INTEGER,
        issued_at    TEXT NOT NULL,
        message      TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        PRIMARY KEY (kind, version)
    );
    CREATE TABLE roster_entries (
        credential_id  TEXT PRIMARY KEY,
        officer_id     TEXT NOT NULL,
        payload_sha256 TEXT,
        revoked_at     TEXT,
        revoke_reason  TEXT
    );
    CREATE INDEX roster_entries_officer ON roster_entries (officer_id);
    CREATE TABLE case_windows (
        window_id   TEXT NOT NULL,
        revision    INTEGER NOT NULL,
        officer_id  TEXT NOT NULL,
        start_at    TEXT NOT NULL,
        end_at      TEXT NOT NULL,
        case_id     TEXT NOT NULL,
        reference   TEXT,
        withdrawn   INTEGER NOT NULL DEFAULT 0,
        envelope    TEXT NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (window_id, revision)
    );
    CREATE INDEX case_windows_officer ON case_windows (officer_id);
    CREATE TABLE clip_cases (
        clip_id   TEXT NOT NULL,
        case_id   TEXT NOT NULL,
        tag_seq   INTEGER NOT NULL,
        source    TEXT NOT NULL,
        window_id TEXT,
        PRIMARY KEY (clip_id, case_id)
    );
    CREATE INDEX clip_cases_case ON clip_cases (case_id);
    CREATE INDEX clip_cases_window ON clip_cases (window_id);
    ALTER TABLE clips ADD COLUMN credential_id TEXT;
    ALTER TABLE clips ADD COLUMN roster_version INTEGER;
    ALTER TABLE clips ADD COLUMN officer_status TEXT;
    ALTER TABLE clips ADD COLUMN start_at TEXT;
    ALTER TABLE clips ADD COLUMN end_at TEXT;
    INSERT INTO clip_cases (clip_id, case_id, tag_seq, source)
        SELECT clip_id, case_id,
               COALESCE((SELECT MAX(seq) FROM custody_log
                         WHERE custody_log.clip_id = clips.clip_id
                           AND custody_log.kind = 'clip.tagged'), 0),
               COALESCE((SELECT json_extract(body, '$.source') FROM custody_log
                         WHERE custody_log.clip_id = clips.clip_id
                           AND custody_log.kind = 'clip.tagged'
                         ORDER BY seq DESC LIMIT 1), 'unknown')
        FROM clips WHERE case_id IS NOT NULL
    """,
    # 5: the digest of what each camera held that was not ingested at its last dock, so
    #    an unchanged camera is not reported again at every dock; failed releases from a
    #    camera (how many in a row, why, when to try again), shown by status and clips;
    #    the clip a duplicate duplicates, so the duplicate is released once that one is
    #    acknowledged (taken from the clip.duplicate log entries for existing duplicates).
    """
    ALTER TABLE devices ADD COLUMN skipped_sha256 TEXT;
    ALTER TABLE clips ADD COLUMN release_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE clips ADD COLUMN release_error TEXT;
    ALTER TABLE clips ADD COLUMN release_retry_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE clips ADD COLUMN duplicate_of TEXT;
    UPDATE clips SET duplicate_of = (
        SELECT json_extract(body, '$.duplicate_of') FROM custody_log
        WHERE custody_log.clip_id = clips.clip_id AND kind = 'clip.duplicate'
        ORDER BY seq DESC LIMIT 1)
    WHERE state = 'duplicate'
    """,
    # 6: the latest battery, charging and resolution reading of each device (JSON,
    #    overwritten by each reading, so readings never grow the store).
    """
    ALTER TABLE devices ADD COLUMN health TEXT;
    """,
    # 7: alerts by code (how often, first and last time, the last message), kept up to date
    #    with every alert event, so the status can say which alerts are active without reading
    #    the outbox (filled from the alert events already in it); outbox items IT staff dropped
    #    (when, who, why) and those the broker refused (how often, the last reason), so a stuck
    #    item can be seen and retried.
    """
    CREATE TABLE alerts (
        code     TEXT PRIMARY KEY,
        count    INTEGER NOT NULL,
        first_at TEXT NOT NULL,
        last_at  TEXT NOT NULL,
        message  TEXT NOT NULL DEFAULT '',
        serial   TEXT,
        clip_id  TEXT
    );
    INSERT INTO alerts (code, count, first_at, last_at)
        SELECT substr(json_extract(p, '$.data.code'), 1, 64), COUNT(*),
               MIN(json_extract(p, '$.at')), MAX(json_extract(p, '$.at'))
        FROM (SELECT CAST(payload AS TEXT) AS p FROM outbox
              WHERE json_valid(CAST(payload AS TEXT)))
        WHERE json_extract(p, '$.type') = 'alert'
          AND json_type(p, '$.data.code') = 'text' AND json_type(p, '$.at') = 'text'
        GROUP BY 1;
    UPDATE alerts SET message = COALESCE((
        SELECT substr(COALESCE(json_extract(CAST(payload AS TEXT), '$.data.message'), ''), 1, 500)
        FROM outbox WHERE json_valid(CAST(payload AS TEXT))
          AND json_extract(CAST(payload AS TEXT), '$.type') = 'alert'
          AND json_extract(CAST(payload AS TEXT), '$.data.code') = alerts.code
        ORDER BY id DESC LIMIT 1), '');
    ALTER TABLE outbox ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN last_error TEXT;
    ALTER TABLE outbox ADD COLUMN dropped_at TEXT;
    ALTER TABLE outbox ADD COLUMN dropped_by TEXT;
    ALTER TABLE outbox ADD COLUMN drop_reason TEXT
    """,
]
