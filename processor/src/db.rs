//! PostgreSQL: the pool, database creation, embedded migrations, and which errors are
//! worth retrying.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Connects (creating the database if it does not exist) and applies the migrations.
pub async fn connect_and_migrate(url: &str, pool_size: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a PostgreSQL URL")?
        // Prepared statements are cached per connection; a generic plan chosen while the
        // tables were empty (sequential scans) would be kept as they grow. Plan each
        // execution for the tables as they are.
        .options([("plan_cache_mode", "force_custom_plan")]);
    wait_for_server(&options).await;
    ensure_database(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("cannot apply migrations")?;
    Ok(pool)
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
