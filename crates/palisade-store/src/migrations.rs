//! Ordered schema migrations; each runs once, inside a transaction, recorded in `schema_version`.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: foundation.
    r#"
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
        must_change_password INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE proxies (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        upstream_key_sealed TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        group_name TEXT REFERENCES groups(name) ON DELETE RESTRICT,
        key_hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT 'api',
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target_type TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT,
        request_id TEXT
    );
    CREATE INDEX audit_log_ts ON audit_log (ts_ms);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        proxy TEXT NOT NULL,
        api TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT,
        stream INTEGER NOT NULL,
        status INTEGER NOT NULL,
        key_id TEXT,
        key_name TEXT,
        group_name TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cached_tokens INTEGER,
        total_tokens INTEGER,
        latency_us INTEGER NOT NULL,
        ttfb_us INTEGER,
        overhead_us INTEGER NOT NULL,
        error TEXT,
        client TEXT NOT NULL
    );
    CREATE INDEX requests_ts ON requests (ts_ms);
    CREATE INDEX requests_proxy_ts ON requests (proxy, ts_ms);
    "#,
    // 2: policy engine: decisions in the request log, alerts, custom policies.
    r#"
    ALTER TABLE requests ADD COLUMN decision TEXT;
    ALTER TABLE requests ADD COLUMN risk_score INTEGER;
    ALTER TABLE requests ADD COLUMN matched_rules TEXT;
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        policy_id TEXT,
        rule_id TEXT,
        title TEXT NOT NULL,
        category TEXT,
        severity TEXT NOT NULL,
        action TEXT,
        blocked INTEGER NOT NULL DEFAULT 0,
        target TEXT,
        proxy TEXT,
        group_name TEXT,
        key_name TEXT,
        request_id TEXT,
        excerpt TEXT,
        decoded TEXT,
        message TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'new'
            CHECK (status IN ('new', 'acknowledged', 'resolved', 'false_positive')),
        dedup_key TEXT UNIQUE,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX alerts_ts ON alerts (ts_ms);
    CREATE INDEX alerts_status_ts ON alerts (status, ts_ms);
    CREATE TABLE policies (
        id TEXT PRIMARY KEY,
        document TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 3: spend control: group budgets and limits, key restrictions, prices, request cost.
    r#"
    ALTER TABLE groups ADD COLUMN spec TEXT;
    ALTER TABLE groups ADD COLUMN budget_reset_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN allowed_proxies TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE api_keys ADD COLUMN allowed_models TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
    ALTER TABLE api_keys ADD COLUMN tpm INTEGER;
    ALTER TABLE requests ADD COLUMN cost_nano INTEGER;
    ALTER TABLE requests ADD COLUMN cost_unknown INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX requests_group_ts ON requests (group_name, ts_ms);
    CREATE TABLE prices (
        model TEXT PRIMARY KEY,
        input_per_mtok REAL NOT NULL,
        output_per_mtok REAL NOT NULL,
        cached_input_per_mtok REAL,
        source TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 4: governance prompts and redaction counts.
    r#"
    ALTER TABLE requests ADD COLUMN prompt TEXT;
    ALTER TABLE requests ADD COLUMN redactions INTEGER;
    CREATE TABLE prompts (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 5: MCP: tools with approval state and definition history, MCP fields in the request log.
    r#"
    ALTER TABLE requests ADD COLUMN session TEXT;
    ALTER TABLE requests ADD COLUMN tool TEXT;
    CREATE TABLE mcp_tools (
        proxy TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'quarantined', 'disabled')),
        fingerprint TEXT NOT NULL,
        approved_fingerprint TEXT,
        definition TEXT NOT NULL,
        findings TEXT NOT NULL DEFAULT '[]',
        present INTEGER NOT NULL DEFAULT 1,
        first_seen_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (proxy, name)
    );
    CREATE TABLE mcp_tool_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        proxy TEXT NOT NULL,
        name TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        definition TEXT NOT NULL,
        ts_ms INTEGER NOT NULL
    );
    CREATE INDEX mcp_tool_history_tool ON mcp_tool_history (proxy, name, id);
    "#,
    // The gateway's own settings: the master key's check value.
    r#"
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // Rows standing for several requests the writer's queue had no room for (their totals).
    r#"
    ALTER TABLE requests ADD COLUMN folded INTEGER;
    "#,
    // Prompt-cache writes have a price of their own (Anthropic: 1.25 × input).
    r#"
    ALTER TABLE prices ADD COLUMN cache_write_per_mtok REAL;
    "#,
    // Alert delivery: webhooks, each with its place (`cursor`: the last alert row it has) in
    // the alert log, so an alert raised while a receiver is down is delivered when it is back.
    // The URL is sealed (a chat webhook's path is its credential); `spec` holds a shown form.
    r#"
    CREATE TABLE webhooks (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        url_sealed TEXT NOT NULL,
        secret_sealed TEXT,
        cursor INTEGER NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        last_attempt_ms INTEGER,
        last_success_ms INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // MCP scans run through the API: who scanned what, the counts, and the whole report (the
    // newest 200 are kept).
    r#"
    CREATE TABLE scans (
        id TEXT PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        target TEXT NOT NULL,
        critical INTEGER NOT NULL,
        high INTEGER NOT NULL,
        medium INTEGER NOT NULL,
        low INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    CREATE INDEX scans_ts ON scans (ts_ms);
    "#,
    // OAuth 2.1: users who may only sign in to authorize clients (`member`), the clients that
    // registered (RFC 7591), and refresh tokens (hashed; one family per sign-in, rotated on
    // every use, the whole family revoked when a used one comes back).
    r#"
    CREATE TABLE users_v2 (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'viewer', 'member')),
        must_change_password INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    INSERT INTO users_v2 SELECT id, username, password_hash, role, must_change_password, created_at, updated_at FROM users;
    DROP TABLE users;
    ALTER TABLE users_v2 RENAME TO users;
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        redirect_uris TEXT NOT NULL,
        secret_hash BLOB,
        created_at INTEGER NOT NULL,
        created_from TEXT NOT NULL,
        last_used_at INTEGER
    );
    CREATE TABLE oauth_refresh (
        token_hash BLOB PRIMARY KEY,
        family TEXT NOT NULL,
        client_id TEXT NOT NULL,
        username TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_updated_at INTEGER NOT NULL,
        proxy TEXT NOT NULL,
        resource TEXT NOT NULL,
        scope TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX oauth_refresh_family ON oauth_refresh (family);
    CREATE INDEX oauth_refresh_user ON oauth_refresh (username);
    CREATE INDEX oauth_refresh_expiry ON oauth_refresh (expires_at);
    "#,
    // OpenID Connect providers users sign in through on the proxies' OAuth pages; the client
    // secret is sealed with the master key.
    r#"
    CREATE TABLE identity_providers (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        secret_sealed TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // Which provider account each user signing in through a provider is: an account is its
    // issuer's `sub` (a provider renamed, or re-created with another issuer, brings no account
    // of its old issuer along), linked to one user for good.
    r#"
    CREATE TABLE identity_links (
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        provider TEXT NOT NULL,
        user_id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (issuer, subject)
    );
    "#,
];

/// Brings the schema up to date; returns the number of migrations applied.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<usize> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
        tx.commit()?;
        applied += 1;
    }
    Ok(applied)
}
