//! A real three-node RabbitMQ cluster on this machine, for the tests that break nodes:
//! three [`PrivateBroker`]s (own node names, ports and data directories) joined with
//! `rabbitmqctl join_cluster`, so quorum queues declared afterwards have three members.
//! Removed (every node stopped, data deleted) on drop.

use crate::private_broker::PrivateBroker;
use anyhow::{bail, Context};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub nodes: Vec<PrivateBroker>,
}

impl Cluster {
    /// Starts `n` nodes side by side and joins the others to the first.
    pub fn start(n: usize) -> anyhow::Result<Self> {
        let started: Vec<anyhow::Result<PrivateBroker>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n).map(|_| s.spawn(PrivateBroker::start)).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("start thread"))
                .collect()
        });
        let nodes = started.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let first = nodes[0].node.clone();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"])?;
            node.ctl(&["join_cluster", &first])
                .with_context(|| format!("{} joining {first}", node.node))?;
            node.ctl(&["start_app"])?;
        }
        let cluster = Self { nodes };
        cluster.await_running(n)?;
        Ok(cluster)
    }

    /// `AMQP_URL` naming every node, comma-separated, with a 5 s AMQP heartbeat so that
    /// a client of a frozen node notices within seconds.
    pub fn amqp_url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}?heartbeat=5", n.amqp_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A node that is up, to ask questions through.
    fn any_up(&self) -> anyhow::Result<&PrivateBroker> {
        self.nodes
            .iter()
            .find(|n| n.ctl(&["await_startup", "-t", "1"]).is_ok())
            .context("no node up")
    }

    /// Waits until `n` nodes run the broker application.
    pub fn await_running(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let up = self
                .nodes
                .iter()
                .filter(|b| b.ctl(&["await_startup", "-t", "1"]).is_ok())
                .count();
            if up >= n {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("{n} nodes not running within a minute")
    }

    /// The index of the node leading quorum queue `queue` (default vhost).
    pub fn leader_of(&self, queue: &str) -> anyhow::Result<usize> {
        let out = self.any_up()?.ctl(&[
            "list_queues",
            "name",
            "leader",
            "--quiet",
            "--no-table-headers",
        ])?;
        let leader = out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == queue).then(|| f.next().map(str::to_owned))?
            })
            .next()
            .with_context(|| format!("no leader listed for {queue}: {out}"))?;
        self.nodes
            .iter()
            .position(|n| n.node == leader)
            .with_context(|| format!("leader {leader} is not one of ours"))
    }

    /// Members of quorum queue `queue` that are online.
    pub fn online_members(&self, queue: &str) -> anyhow::Result<usize> {
        let out = self.any_up()?.ctl(&[
            "list_queues",
            "name",
            "online",
            "--quiet",
            "--no-table-headers",
        ])?;
        Ok(out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))
            .map(|l| l.matches('@').count())
            .unwrap_or(0))
    }

    /// Quorum queue `queue` as `rabbitmqctl list_queues` shows it (name, leader, online
    /// members, members, messages), or why that could not be asked: for a failure's
    /// message.
    pub fn queue_state(&self, queue: &str) -> String {
        let listed = self.any_up().and_then(|n| {
            n.ctl(&[
                "list_queues",
                "name",
                "leader",
                "online",
                "members",
                "messages",
                "--quiet",
                "--no-table-headers",
            ])
        });
        match listed {
            Ok(out) => out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(queue))
                .unwrap_or("not listed")
                .to_owned(),
            Err(e) => format!("not asked: {e:#}"),
        }
    }

    /// Stops the broker application of node `i` (the Erlang VM stays: it can rejoin).
    pub fn stop(&self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].ctl(&["stop_app"]).map(drop)
    }

    /// Starts node `i`'s application again and waits until it runs.
    pub fn restart(&self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].ctl(&["start_app"])?;
        self.nodes[i].ctl(&["await_startup", "-t", "60"]).map(drop)
    }

    /// Freezes node `i` (SIGSTOP): to the others and to clients it is cut off, as in a
    /// network partition, until [`Cluster::resume`].
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        signal(self.nodes[i].pid()?, "-STOP")
    }

    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        signal(self.nodes[i].pid()?, "-CONT")
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}
