//! Per-test slices of the machine's services: a RabbitMQ vhost, a PostgreSQL database,
//! a Redis key prefix. Each is removed when dropped, even when the test fails.

use anyhow::{bail, Context};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::process::Command;

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("rabbitmqctl not found")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A RabbitMQ vhost of one's own, guest allowed, deleted on drop.
pub struct TestVhost {
    pub name: String,
}

impl TestVhost {
    pub fn new() -> anyhow::Result<Self> {
        let name = unique("test-");
        rabbitmqctl(&["add_vhost", &name])?;
        let vhost = Self { name };
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ])?;
        Ok(vhost)
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// The broker goes away for this vhost only: open connections are closed and new
    /// ones refused until [`TestVhost::restore`].
    pub fn outage(&self) -> anyhow::Result<()> {
        rabbitmqctl(&[
            "set_vhost_limits",
            "-p",
            &self.name,
            r#"{"max-connections": 0}"#,
        ])?;
        rabbitmqctl(&["close_all_connections", "-p", &self.name, "test outage"])
    }

    pub fn restore(&self) -> anyhow::Result<()> {
        rabbitmqctl(&["clear_vhost_limits", "-p", &self.name])
    }

    /// Messages ready in `queue` (not counting those delivered and unacked).
    pub async fn ready_messages(&self, queue: &str) -> anyhow::Result<u32> {
        let conn = Connection::connect(&self.amqp_url(), ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(q.message_count())
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh PostgreSQL database, dropped (forcibly) on drop.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub async fn new() -> anyhow::Result<Self> {
        let name = unique("test_");
        let mut admin = PgConnection::connect(PG_ADMIN_URL).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        Ok(Self { name })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPool::connect(&self.url()).await?)
    }

    /// This database goes away for everyone: new connections are refused and existing
    /// ones terminated, until [`TestDatabase::restore`].
    pub async fn outage(&self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(PG_ADMIN_URL).await?;
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .execute(&mut admin)
            .await?;
        Ok(())
    }

    pub async fn restore(&self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(PG_ADMIN_URL).await?;
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// A private `redis-server` on a spare port, to be killed at will; killed on drop.
pub struct TestRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl TestRedis {
    pub fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("redis-server not found")?;
        let redis = Self {
            port,
            child: Some(child),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(redis);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        bail!("redis-server on port {port} did not start")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: gone at once, with everything it held.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything one test needs, isolated from every other test.
pub struct Services {
    pub vhost: TestVhost,
    pub db: TestDatabase,
    pub redis_prefix: String,
}

impl Services {
    pub async fn new() -> anyhow::Result<Self> {
        Ok(Self {
            vhost: TestVhost::new()?,
            db: TestDatabase::new().await?,
            redis_prefix: unique("test:") + ":",
        })
    }
}
