//! A private, throwaway RabbitMQ node of one's own (own node name, AMQP and
//! distribution ports, data and log directories, no plugins), for tests that break a
//! whole node (a resource alarm, a stop) without touching the machine's shared broker
//! and every other test on it. One node per value; several are the makings of a
//! cluster kit (each would `join_cluster` the first through [`PrivateBroker::ctl`]).

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private node, stopped and its data removed on drop.
pub struct PrivateBroker {
    /// Erlang node name, `name@localhost`.
    pub node: String,
    /// AMQP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    server: Option<Child>,
}

fn spare_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PrivateBroker {
    /// Starts a node and waits (up to a minute) until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let node = format!("test-{}@localhost", &id[..12]);
        let (port, dist) = (spare_port()?, spare_port()?);
        let dir = std::env::temp_dir().join(format!("rabbit-{}", &id[..12]));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("enabled_plugins"), "")?;
        // The packaged server drops to the `rabbitmq` user: let it write here.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let path = |name: &str| dir.join(name).into_os_string();
        let server = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("rabbitmq-server not found")?;
        let broker = Self {
            node,
            port,
            dir,
            server: Some(server),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if broker.ctl(&["await_startup", "-t", "1"]).is_ok() {
                return Ok(broker);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("private RabbitMQ node {} did not start", broker.node)
    }

    /// `rabbitmqctl -n <this node> <args>`; its stdout.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.node])
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
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node's operating-system process (the Erlang VM), for SIGSTOP/SIGCONT.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("pid")).context("no pid file")?;
        text.trim().parse().context("pid file")
    }

    /// The default vhost, as guest (allowed from localhost).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Raises (a memory high watermark of 0) or clears this node's memory alarm:
    /// RabbitMQ then blocks, or unblocks, every publishing connection.
    pub fn memory_alarm(&self, raised: bool) -> anyhow::Result<()> {
        let watermark = if raised { "0" } else { "0.4" };
        self.ctl(&["set_vm_memory_high_watermark", watermark])
            .map(drop)
    }

    /// Raises (a free-disk limit of 1 PB, beyond any disk here) or clears (RabbitMQ's
    /// default, 50 MB) this node's disk alarm: RabbitMQ then blocks, or unblocks, every
    /// publishing connection.
    pub fn disk_alarm(&self, raised: bool) -> anyhow::Result<()> {
        let limit = if raised {
            "1000000000000000"
        } else {
            "50000000"
        };
        self.ctl(&["set_disk_free_limit", limit]).map(drop)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
