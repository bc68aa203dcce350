//! Every console sign-in and operator action, in `console_audit` (migration 0008):
//! who, with which role, what, on what, when. Shown on the console's Audit page.

use super::auth::Staff;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One line of the audit.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Records that `actor` (with `role`) did `action` on `target`. An action that changes
/// something is recorded before it is done, so a crash in between leaves a trace; the
/// error is the caller's to answer (no unaudited action).
pub async fn record(
    pool: &PgPool,
    actor: &str,
    role: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO console_audit (actor, role, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(role)
    .bind(action)
    .bind(target)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// [`record`] for a signed-in user.
pub async fn by(
    pool: &PgPool,
    staff: &Staff,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    record(
        pool,
        &staff.name,
        staff.role.as_str(),
        action,
        target,
        detail,
    )
    .await
}

/// The latest `limit` entries, newest first.
pub async fn latest(pool: &PgPool, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT at, actor, role, action, target, detail FROM console_audit ORDER BY at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
