//! A nats-server from `nats.conf` per test, and clients that connect as its roles.

use async_nats::Client;
use orderhub::sim::natsserver::NatsServer;
use tempfile::TempDir;

/// A nats-server on a free port with its own store directory; killed and removed on drop.
pub struct TestNats {
    pub server: NatsServer,
    _dir: TempDir,
}

impl TestNats {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(None, &dir.path().join("js"))
            .await
            .expect("nats-server starts (run scripts/install-nats-server if it is missing)");
        Self { server, _dir: dir }
    }

    /// A server from another configuration text (same roles and `<user>-dev` passwords).
    pub async fn start_with_conf(conf: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, conf).expect("write nats.conf");
        let server = NatsServer::start_from(&path, None, &dir.path().join("js"))
            .await
            .expect("nats-server starts from the test's configuration");
        Self { server, _dir: dir }
    }

    pub fn url(&self, user: &str) -> String {
        format!("nats://{user}:{user}-dev@127.0.0.1:{}", self.server.port)
    }

    /// A client connected as `user` with that role's inbox prefix.
    pub async fn client(&self, user: &str) -> Client {
        orderhub::startup::connect_nats(&self.url(user), user)
            .await
            .expect("connect")
    }
}
