//! Schema migrations: an append-only list keyed on `PRAGMA user_version`, applied in one
//! exclusive transaction. Never edit a released migration; add a new one.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Error, Result};

/// Each entry moves the schema one version up. Index 0 takes version 0 to 1.
const MIGRATIONS: &[&str] = &[
    // 1: tickets, messages (with their raw bytes), referenced ids, attachments, cursors,
    // quarantine. Few indexes on purpose: every index is one more page written per message.
    r#"
    CREATE TABLE ticket (
        id            INTEGER PRIMARY KEY,
        subject       TEXT    NOT NULL DEFAULT '',
        status        TEXT    NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
        customer      TEXT    NOT NULL DEFAULT '',
        customer_name TEXT    NOT NULL DEFAULT '',
        mailbox       TEXT    NOT NULL DEFAULT '',
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    ) STRICT;

    -- raw is the last column: reading the others never touches its overflow pages.
    CREATE TABLE message (
        id            INTEGER PRIMARY KEY,
        ticket_id     INTEGER NOT NULL REFERENCES ticket (id),
        direction     TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
        message_id    TEXT    NOT NULL,
        fingerprint   BLOB    NOT NULL,
        in_reply_to   TEXT    NOT NULL DEFAULT '[]',
        refs          TEXT    NOT NULL DEFAULT '[]',
        from_addr     TEXT    NOT NULL DEFAULT '',
        from_name     TEXT    NOT NULL DEFAULT '',
        reply_to      TEXT    NOT NULL DEFAULT '',
        to_addrs      TEXT    NOT NULL DEFAULT '[]',
        cc_addrs      TEXT    NOT NULL DEFAULT '[]',
        subject       TEXT    NOT NULL DEFAULT '',
        date          INTEGER NOT NULL,
        received_at   INTEGER NOT NULL,
        kind          TEXT    NOT NULL DEFAULT 'normal',
        reasons       TEXT    NOT NULL DEFAULT '[]',
        body_text     TEXT    NOT NULL DEFAULT '',
        source        TEXT    NOT NULL DEFAULT '',
        size          INTEGER NOT NULL DEFAULT 0,
        codec         TEXT    NOT NULL DEFAULT 'none',
        raw           BLOB    NOT NULL,
        UNIQUE (message_id, fingerprint)
    ) STRICT;
    CREATE INDEX message_ticket ON message (ticket_id, date);

    -- Ids that messages point at (In-Reply-To, References): ticket lookup for replies whose
    -- parent we never saw, and for a parent that arrives after its reply.
    CREATE TABLE msgid_ref (
        msgid      TEXT    NOT NULL,
        ticket_id  INTEGER NOT NULL REFERENCES ticket (id),
        PRIMARY KEY (msgid, ticket_id)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE attachment (
        id           INTEGER PRIMARY KEY,
        message_id   INTEGER NOT NULL REFERENCES message (id),
        filename     TEXT    NOT NULL,
        content_type TEXT    NOT NULL,
        size         INTEGER NOT NULL,
        sha256       TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX attachment_message ON attachment (message_id);

    -- done_uid: every stored UID up to here has had its post-action confirmed.
    CREATE TABLE cursor (
        mailbox       TEXT    NOT NULL,
        folder        TEXT    NOT NULL,
        uidvalidity   INTEGER NOT NULL,
        last_uid      INTEGER NOT NULL DEFAULT 0,
        backlog_until INTEGER NOT NULL DEFAULT 0,
        done_uid      INTEGER NOT NULL DEFAULT 0,
        updated_at    INTEGER NOT NULL,
        PRIMARY KEY (mailbox, folder)
    ) STRICT;

    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY,
        source      TEXT    NOT NULL,
        uidvalidity INTEGER NOT NULL DEFAULT 0,
        uid         INTEGER NOT NULL DEFAULT 0,
        error       TEXT    NOT NULL,
        sha256      TEXT    NOT NULL UNIQUE,
        size        INTEGER NOT NULL,
        raw         BLOB    NOT NULL,
        received_at INTEGER NOT NULL
    ) STRICT;
    "#,
    // 2: the key of our keyed outbound Message-IDs (made here, once, by SQLite's CSPRNG);
    // addresses that bounced, until when; and an index on the sender for the loop-rate rule
    // and subject matching.
    r#"
    CREATE TABLE store_key (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        key        BLOB    NOT NULL,
        created_at INTEGER NOT NULL DEFAULT (unixepoch())
    ) STRICT;
    INSERT INTO store_key (id, key) VALUES (1, randomblob(32));

    CREATE TABLE undeliverable (
        address    TEXT    PRIMARY KEY,
        expires_at INTEGER NOT NULL,
        status     TEXT    NOT NULL DEFAULT '',
        diagnostic TEXT    NOT NULL DEFAULT '',
        ticket_id  INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL DEFAULT (unixepoch())
    ) STRICT, WITHOUT ROWID;

    CREATE INDEX message_sender ON message (from_addr, date);
    "#,
    // 3: the outbox. A row is one mail to send (or an acknowledgement we decided not to send:
    // status 'skipped', with the reason). message_row is the recorded outbound message.
    r#"
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY,
        ticket_id       INTEGER NOT NULL REFERENCES ticket (id),
        message_row     INTEGER REFERENCES message (id),
        kind            TEXT    NOT NULL CHECK (kind IN ('ack', 'reply')),
        status          TEXT    NOT NULL
                        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
        mail_from       TEXT    NOT NULL DEFAULT '',
        rcpt_to         TEXT    NOT NULL DEFAULT '',
        rcpt_all        TEXT    NOT NULL DEFAULT '[]',
        reason          TEXT    NOT NULL DEFAULT '',
        smtp_reply      TEXT    NOT NULL DEFAULT '',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
    CREATE INDEX outbox_rcpt ON outbox (rcpt_to, kind, created_at);
    "#,
    // 4: OAuth2 tokens, one row per account ("mailbox:NAME" or "smtp"). The refresh token is
    // the server's latest (it may rotate on every use); seed_fp is the SHA-256 of the config's
    // `refresh-token` it descends from (a new one in the config wins), dead_fp that of a
    // refresh token the server called invalid_grant.
    r#"
    CREATE TABLE oauth2_token (
        account         TEXT    PRIMARY KEY,
        refresh_token   TEXT,
        seed_fp         TEXT,
        access_token    TEXT,
        access_obtained INTEGER,
        access_expires  INTEGER,
        scope           TEXT,
        last_refresh    INTEGER,
        refreshes       INTEGER NOT NULL DEFAULT 0,
        dead_fp         TEXT,
        last_error      TEXT,
        updated_at      INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    "#,
    // 5 (outbox claims): who is sending an outbox row in 'sending' (`PID:START`, see
    // `lock::process_tag`) and until when that claim holds. A row whose claimer is gone or
    // whose claim ran out is stuck; one claimed by a live process is being sent right now.
    r#"
    ALTER TABLE outbox ADD COLUMN claimed_by    TEXT    NOT NULL DEFAULT '';
    ALTER TABLE outbox ADD COLUMN claimed_until INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6 (events): the append-only event log. id is the feed's cursor (commit order), uid the
    // event's stable id (`evt_` and 32 hex digits: the webhook-id on every attempt), data
    // the event's JSON `data`. ticket_id is 0 for an event of no ticket.
    r#"
    CREATE TABLE event (
        id          INTEGER PRIMARY KEY,
        uid         TEXT    NOT NULL UNIQUE,
        type        TEXT    NOT NULL,
        ticket_id   INTEGER NOT NULL DEFAULT 0,
        mailbox     TEXT    NOT NULL DEFAULT '',
        created_at  INTEGER NOT NULL,
        data        TEXT    NOT NULL DEFAULT '{}'
    ) STRICT;
    "#,
    // 7 (hook deliveries): one row per (event, hook), written with the event; the send
    // states of the outbox, claimed by `PID:START` until claimed_until. hook_state keeps a
    // hook that answered 410 Gone disabled until the operator enables it again.
    r#"
    CREATE TABLE hook_delivery (
        id              INTEGER PRIMARY KEY,
        event_id        INTEGER NOT NULL REFERENCES event (id),
        hook            TEXT    NOT NULL,
        ticket_id       INTEGER NOT NULL DEFAULT 0,
        status          TEXT    NOT NULL
                        CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        last_status     INTEGER NOT NULL DEFAULT 0,
        last_response   TEXT    NOT NULL DEFAULT '',
        claimed_by      TEXT    NOT NULL DEFAULT '',
        claimed_until   INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        UNIQUE (event_id, hook)
    ) STRICT;
    CREATE INDEX hook_delivery_due ON hook_delivery (status, next_attempt_at);
    CREATE INDEX hook_delivery_order ON hook_delivery (hook, ticket_id, status, event_id);

    CREATE TABLE hook_state (
        name        TEXT    PRIMARY KEY,
        disabled_at INTEGER NOT NULL DEFAULT 0,
        reason      TEXT    NOT NULL DEFAULT ''
    ) STRICT, WITHOUT ROWID;
    "#,
    // 8 (mailbox health): failed passes or sessions in a row per mailbox, and whether
    // `mailbox.failing` was announced (since when), so `mailbox.recovered` follows it once.
    r#"
    CREATE TABLE mailbox_health (
        mailbox    TEXT    PRIMARY KEY,
        failures   INTEGER NOT NULL DEFAULT 0,
        failing    INTEGER NOT NULL DEFAULT 0,
        since      INTEGER NOT NULL DEFAULT 0,
        last_error TEXT    NOT NULL DEFAULT ''
    ) STRICT, WITHOUT ROWID;
    "#,
    // 9 (where a message came from): the folder's UIDVALIDITY and the message's UID for mail
    // read over IMAP (0 for files, stdin, and messages stored before this version); `source`
    // names the mailbox and folder or the file.
    r#"
    ALTER TABLE message ADD COLUMN uidvalidity INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE message ADD COLUMN uid         INTEGER NOT NULL DEFAULT 0;
    "#,
    // 10 (outbox identity and dismissal): the mailbox whose identity a row goes out with, its
    // From and its SMTP settings (`[mailbox.smtp]` over `[smtp]`), '' for `[smtp]`'s as every
    // row before; and when an operator dismissed a failed or stuck row (`outbox dismiss`), 0
    // when not: a dismissed row is no longer reported.
    r#"
    ALTER TABLE outbox ADD COLUMN mailbox      TEXT    NOT NULL DEFAULT '';
    ALTER TABLE outbox ADD COLUMN dismissed_at INTEGER NOT NULL DEFAULT 0;
    "#,
    // 11 (Microsoft Graph): a Graph folder's cursor is the link its delta query goes on from
    // ('' = none yet: a full listing), plus the time of the first run (read mail received
    // before it is not taken); messages stored whose post-action is not yet confirmed.
    r#"
    CREATE TABLE graph_cursor (
        mailbox        TEXT    NOT NULL,
        folder         TEXT    NOT NULL,
        delta_link     TEXT    NOT NULL DEFAULT '',
        backlog_before INTEGER NOT NULL DEFAULT 0,
        updated_at     INTEGER NOT NULL,
        PRIMARY KEY (mailbox, folder)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE graph_pending (
        mailbox  TEXT NOT NULL,
        folder   TEXT NOT NULL,
        graph_id TEXT NOT NULL,
        PRIMARY KEY (mailbox, folder, graph_id)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 12 (inline attachments): 1 for a part shown inside the message (an embedded image, a
    // part with `Content-Disposition: inline`), 0 for a real attachment and for rows stored
    // before this version.
    r#"
    ALTER TABLE attachment ADD COLUMN inline INTEGER NOT NULL DEFAULT 0;
    "#,
    // 13 (large messages in parts): a message fetched through a spool file keeps its bytes as
    // one zstd stream cut into parts of about 1 MiB, in `seq` order; its row has codec
    // 'zstd-parts' and an empty `raw`.
    r#"
    CREATE TABLE raw_part (
        message INTEGER NOT NULL REFERENCES message (id),
        seq     INTEGER NOT NULL,
        raw     BLOB    NOT NULL,
        PRIMARY KEY (message, seq)
    ) STRICT;
    "#,
    // 14 (attachments kept decoded): no table changes. A message row may now have codec
    // 'zstd-b64' (see `store::codec::pack_message`), which an older mailticket cannot read:
    // the version tells it so before it tries.
    r#"
    -- codec 'zstd-b64'
    "#,
    // 15 (a message's text stored once): the event of a message (`ticket.created`,
    // `ticket.message_added`) names its message row in `text_of` and leaves its text out of
    // `data`; the feed and the hook deliveries put `message.body_text` back. Events that had
    // to be cut to their cap, and all events stored before this version, keep their text
    // inline (`text_of` NULL).
    r#"
    ALTER TABLE event ADD COLUMN text_of INTEGER REFERENCES message (id);
    "#,
    // 16 (spooled messages quarantined in parts): a message quarantined from its spool file
    // keeps its bytes in `quarantine_part` rows of about 1 MiB, in `seq` order, so that they
    // are never held whole; its `quarantine.raw` is empty.
    r#"
    CREATE TABLE quarantine_part (
        quarantine INTEGER NOT NULL REFERENCES quarantine (id),
        seq        INTEGER NOT NULL,
        raw        BLOB    NOT NULL,
        PRIMARY KEY (quarantine, seq)
    ) STRICT;
    "#,
    // 17 (the quarantine keeps the mailbox): the mailbox a quarantined message came in for
    // (`ingest --mailbox`, an IMAP or Graph mailbox), so that a retry files its ticket there
    // as the first attempt would have; empty for rows from before.
    r#"
    ALTER TABLE quarantine ADD COLUMN mailbox TEXT NOT NULL DEFAULT '';
    "#,
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`LATEST`]; a no-op when it is there already.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > LATEST {
        return Err(Error::Schema(format!(
            "the database has schema version {version}, newer than this mailticket knows \
             ({LATEST}): upgrade mailticket"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tracing::debug!(version = i + 1, "migrated store");
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        let schema = |c: &Connection| -> Vec<String> {
            let mut s = c
                .prepare("SELECT sql FROM sqlite_schema ORDER BY name")
                .unwrap();
            s.query_map([], |r| r.get::<_, Option<String>>(0))
                .unwrap()
                .map(|r| r.unwrap().unwrap_or_default())
                .collect()
        };
        let before = schema(&c);
        migrate(&mut c).unwrap();
        assert_eq!(schema(&c), before);
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, LATEST);
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", LATEST + 1).unwrap();
        assert!(migrate(&mut c).unwrap_err().to_string().contains("newer"));
    }
}
