//! PostgreSQL: the pool, database creation, embedded migrations, and which errors are
//! worth retrying.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Bounds on every wait of the processor's own database work. The POS reads and may
/// lock the same tables: a row it holds must cost a retry later, never a stalled
/// consumer (a timeout is a transient failure, see [`is_transient`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `lock_timeout`: the longest wait for any lock (row, advisory, table).
    pub lock: Duration,
    /// `statement_timeout`: the longest any statement may run, waits included.
    pub statement: Duration,
}

impl Default for Timeouts {
    /// Far above any healthy wait here (a batch commits in milliseconds), far below
    /// RabbitMQ's consumer timeout.
    fn default() -> Self {
        Self {
            lock: Duration::from_secs(2),
            statement: Duration::from_secs(15),
        }
    }
}

/// Connects (creating the database if it does not exist), applies the migrations (on a
/// connection without the timeouts: a migration may rightly take long), and returns a
/// pool whose every connection has `timeouts` set.
pub async fn connect_and_migrate(
    url: &str,
    pool_size: u32,
    timeouts: Timeouts,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a PostgreSQL URL")?
        // Prepared statements are cached per connection; a generic plan chosen while the
        // tables were empty (sequential scans) would be kept as they grow. Plan each
        // execution for the tables as they are. (The batch transaction, whose
        // statements are key lookups and inserts, opts out: `crate::apply`'s `BEGIN`.)
        .options([("plan_cache_mode", "force_custom_plan")]);
    wait_for_server(&options).await;
    ensure_database(&options).await?;
    let mut admin = options
        .connect()
        .await
        .context("cannot connect to PostgreSQL")?;
    sqlx::migrate!("./migrations")
        .run(&mut admin)
        .await
        .context("cannot apply migrations")?;
    let _ = admin.close().await;
    let bounded = options.options([
        ("lock_timeout", format!("{}ms", timeouts.lock.as_millis())),
        (
            "statement_timeout",
            format!("{}ms", timeouts.statement.as_millis()),
        ),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(bounded)
        .await
        .context("cannot connect to PostgreSQL")?;
    Ok(pool)
}

/// True for a lock wait or statement cut short by [`Timeouts`] (`55P03`
/// lock_not_available, `57014` query_canceled): a row someone else holds, worth trying
/// again later, alone, rather than at once with the rest of a batch.
pub fn is_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("55P03") | Some("57014")))
}

/// Waits (capped backoff, logged) while the server cannot be reached at all, so a
/// database that starts after the processor, or is restarting, does not turn into a
/// crash loop. Any other answer (even "no such database") ends the wait.
async fn wait_for_server(options: &PgConnectOptions) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match options.connect().await {
            Ok(conn) => {
                let _ = conn.close().await;
                return;
            }
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "PostgreSQL unreachable; waiting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(_) => return,
        }
    }
}

async fn ensure_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    match options.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e).context("cannot connect to PostgreSQL"),
    }
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("cannot connect to the `postgres` database to create ours")?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut admin)
        .await
    {
        Ok(_) => tracing::info!(database = %name, "created the database"),
        // Another instance created it first.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
        Err(e) => return Err(e).context("cannot create the database"),
    }
    Ok(())
}

/// True for failures that may go away by themselves (connection lost, server shutting
/// down, too many connections, serialization failures, timeouts); false for failures
/// the same message would meet again (bad data, constraint violations).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection, 40: transaction rollback (serialization, deadlock),
            // 53: insufficient resources, 55: object not in prerequisite state (a
            // database not accepting connections), 57: operator intervention (shutdown,
            // terminated backend), 58: system error, XX: internal error.
            ["08", "40", "53", "55", "57", "58", "XX"]
                .iter()
                .any(|class| code.starts_with(class))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// This database's random identity (see migration 0002), as text.
pub async fn identity(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT database_id::text FROM database_identity")
        .fetch_one(pool)
        .await
}

/// True if the database answers a trivial query within a second.
pub async fn ping(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query("SELECT 1").execute(pool)
        )
        .await,
        Ok(Ok(_))
    )
}
