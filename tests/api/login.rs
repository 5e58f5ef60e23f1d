//! The hub logs in with an nkey instead of a password (production's replacement for the
//! development passwords), keeping its inbox prefix and rights.

use orderhub::App;
use orderhub::sim::natsserver::{NatsServer, nats_conf};

use crate::helpers::*;

#[tokio::test]
async fn hub_logs_in_with_an_nkey_seed() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().expect("seed");
    let conf = std::fs::read_to_string(nats_conf().expect("nats.conf")).expect("nats.conf");
    let with_nkey = conf.replacen(
        "user: hub\n        password: hub-dev",
        &format!("nkey: {}", key.public_key()),
        1,
    );
    assert_ne!(
        conf, with_nkey,
        "the hub's user block is where this test expects it"
    );
    let conf_path = dir.path().join("nats.conf");
    std::fs::write(&conf_path, with_nkey).unwrap();
    let seed_path = dir.path().join("hub.nk");
    std::fs::write(&seed_path, seed).unwrap();

    let server = NatsServer::start_from(&conf_path, None, &dir.path().join("js"))
        .await
        .expect("nats-server with the hub's nkey starts");
    let port = server.port;

    let mut settings = Settings::load(None).unwrap();
    settings.nats.url = format!("nats://127.0.0.1:{port}");
    settings.nats.nkey_seed_file = seed_path.display().to_string();
    settings.database.primary_url = format!("sqlite://{}/o.db?mode=rwc", dir.path().display());
    settings.database.aux_url = format!("sqlite://{}/a.db?mode=rwc", dir.path().display());
    let app = App::start(settings)
        .await
        .expect("hub starts with its nkey");

    let gateway = orderhub::startup::connect_nats(
        &format!("nats://gateway:gateway-dev@127.0.0.1:{port}"),
        "gw",
    )
    .await
    .unwrap();
    let id = submit(&gateway, "u-1", "k-1", "acme-air").await;
    let consumer = durable(&gateway, "gateway").await;
    let info = consumer.cached_info();
    assert_eq!(info.name, "gateway", "the hub created the consumers");
    assert!(!id.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn hub_logs_in_through_a_server_list_with_a_percent_encoded_password() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let password = "h@b:/d,v";
    let conf = std::fs::read_to_string(nats_conf().expect("nats.conf")).expect("read nats.conf");
    let with_password = conf.replacen(
        "user: hub\n        password: hub-dev",
        &format!("user: hub\n        password: \"{password}\""),
        1,
    );
    assert_ne!(
        conf, with_password,
        "the hub's user block is where this test expects it"
    );
    let conf_path = dir.path().join("nats.conf");
    std::fs::write(&conf_path, with_password).unwrap();
    let server = NatsServer::start_from(&conf_path, None, &dir.path().join("js"))
        .await
        .expect("nats-server");
    let port = server.port;

    // One server of the list is down; the client finds the other.
    let encoded = "h%40b%3A%2Fd%2Cv";
    let mut stopped = NatsServer::start_from(&conf_path, None, &dir.path().join("js-down"))
        .await
        .expect("nats-server");
    stopped.kill().await;
    let down = stopped.port;
    let list =
        format!("nats://hub:{encoded}@127.0.0.1:{down},nats://hub:{encoded}@127.0.0.1:{port}");
    let mut settings = Settings::load(None).unwrap();
    settings.nats.url = list.clone();
    settings.database.primary_url = format!("sqlite://{}/o.db?mode=rwc", dir.path().display());
    settings.database.aux_url = format!("sqlite://{}/a.db?mode=rwc", dir.path().display());
    let shown = format!("{:?}", settings.nats);
    assert!(
        !shown.contains(encoded) && !shown.contains(password),
        "{shown}"
    );
    let app = App::start(settings)
        .await
        .expect("hub starts with the decoded password");

    let gateway_list = orderhub::urls::NatsUrls::parse(&list)
        .unwrap()
        .with_login("gateway", "gateway-dev");
    let gateway = orderhub::startup::connect_nats(&gateway_list, "gw")
        .await
        .unwrap();
    let id = submit(&gateway, "u-1", "k-1", "acme-air").await;
    assert!(!id.is_empty());

    let mismatched =
        format!("nats://hub:{encoded}@127.0.0.1:{port},nats://hub:other@127.0.0.1:{down}");
    let err = orderhub::startup::connect_nats(&mismatched, "x")
        .await
        .expect_err("servers with different passwords are refused");
    let text = format!("{err:#}");
    assert!(text.contains("log in differently"), "{text}");
    assert!(!text.contains(encoded) && !text.contains("other"), "{text}");
    app.stop().await.unwrap();
}
