//! The configuration layers, key checks and printing.

use super::*;

fn load_with(flags: &Flags, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    load(flags, &|name| vars.get(name).cloned())
}

fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("postino.toml");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn flags_override_environment_which_overrides_the_file() {
    let (_dir, path) =
        file_with("[amqp]\nlisten = \"127.0.0.1:1\"\nframe_max = 8192\nheartbeat_s = 5\n");
    let flags = Flags {
        config: Some(path.clone()),
        amqp_listen: Some("127.0.0.1:3".to_owned()),
        ..Flags::default()
    };
    let loaded = load_with(
        &flags,
        &[
            ("POSTINO_AMQP_LISTEN", "127.0.0.1:2"),
            ("POSTINO_AMQP_FRAME_MAX", "16384"),
        ],
    )
    .expect("valid");
    assert_eq!(loaded.config.amqp.listen, "127.0.0.1:3");
    assert_eq!(loaded.config.amqp.frame_max, 16384);
    assert_eq!(loaded.config.amqp.heartbeat_s, 5);
    assert_eq!(
        loaded.config.amqp.channel_max,
        AmqpSection::default().channel_max
    );
    assert_eq!(loaded.source("amqp.listen"), Source::Flag("--amqp-listen"));
    assert_eq!(
        loaded.source("amqp.frame_max"),
        Source::Environment("POSTINO_AMQP_FRAME_MAX".to_owned())
    );
    assert_eq!(loaded.source("amqp.heartbeat_s"), Source::File(path));
    assert_eq!(loaded.source("amqp.channel_max"), Source::Default);
}

#[test]
fn the_config_file_may_come_from_the_environment() {
    let (_dir, path) = file_with("[server]\ndata_dir = \"/srv/postino\"\n");
    let loaded = load_with(
        &Flags::default(),
        &[("POSTINO_CONFIG", path.to_str().expect("utf-8"))],
    )
    .expect("valid");
    assert_eq!(loaded.config.server.data_dir, PathBuf::from("/srv/postino"));
}

#[test]
fn unknown_keys_and_sections_are_named() {
    let (_dir, path) = file_with("[amqp]\nframe_maximum = 1\n");
    let flags = Flags {
        config: Some(path),
        ..Flags::default()
    };
    let error = load_with(&flags, &[]).expect_err("unknown key");
    assert!(
        error.0.contains("unknown key amqp.frame_maximum"),
        "{error}"
    );
    assert!(
        error.0.contains("frame_max"),
        "the known keys are listed: {error}"
    );

    let (_dir, path) = file_with("[mqtt]\nlisten = \"off\"\n");
    let flags = Flags {
        config: Some(path),
        ..Flags::default()
    };
    let error = load_with(&flags, &[]).expect_err("unknown section");
    assert!(error.0.contains("unknown section [mqtt]"), "{error}");
}

#[test]
fn wrong_types_are_named_with_their_source() {
    let (_dir, path) = file_with("[amqp]\nframe_max = \"big\"\n");
    let flags = Flags {
        config: Some(path),
        ..Flags::default()
    };
    let error = load_with(&flags, &[]).expect_err("a string for an integer");
    assert!(
        error.0.contains("amqp.frame_max must be an integer"),
        "{error}"
    );

    let error = load_with(&Flags::default(), &[("POSTINO_AMQP_HEARTBEAT_S", "soon")])
        .expect_err("bad integer");
    assert!(error.0.contains("POSTINO_AMQP_HEARTBEAT_S"), "{error}");

    let error = load_with(&Flags::default(), &[("POSTINO_AMQP_CHANNEL_MAX", "70000")])
        .expect_err("out of u16");
    assert!(error.0.contains("channel_max"), "{error}");
}

#[test]
fn bad_values_are_named_with_their_source() {
    let cases = [
        ("POSTINO_AMQP_FRAME_MAX", "1024", "amqp.frame_max"),
        ("POSTINO_AMQP_LISTEN", "nowhere", "amqp.listen"),
        ("POSTINO_LOG_FORMAT", "xml", "log.format"),
        (
            "POSTINO_STORAGE_DURABILITY",
            "sometimes",
            "storage.durability",
        ),
        (
            "POSTINO_STORAGE_SEGMENT_BYTES_MAX",
            "10",
            "storage.segment_bytes_max",
        ),
        (
            "POSTINO_FLOW_MEMORY_HIGH_WATERMARK",
            "1.5",
            "flow.memory_high_watermark",
        ),
        (
            "POSTINO_SERVER_WORKER_THREADS",
            "100000",
            "server.worker_threads",
        ),
    ];
    for (name, value, key) in cases {
        let error = load_with(&Flags::default(), &[(name, value)]).expect_err(name);
        assert!(error.0.starts_with(key), "{name}: {error}");
        assert!(
            error.0.contains(name),
            "{name}: the source is named: {error}"
        );
    }
}

#[test]
fn printed_configuration_loads_back_to_the_same_values() {
    let loaded = load_with(
        &Flags::default(),
        &[
            ("POSTINO_STORAGE_DURABILITY", "interval(50ms)"),
            ("POSTINO_LOG", "debug"),
        ],
    )
    .expect("valid");
    let printed = loaded.to_toml();
    assert!(
        printed.contains("level = \"debug\"  # environment POSTINO_LOG"),
        "{printed}"
    );
    let (_dir, path) = file_with(&printed);
    let again = load_with(
        &Flags {
            config: Some(path),
            ..Flags::default()
        },
        &[],
    )
    .expect("valid");
    assert_eq!(again.config, loaded.config);
}

#[test]
fn settings_reach_the_components() {
    let loaded = load_with(
        &Flags::default(),
        &[
            ("POSTINO_STORAGE_DURABILITY", "none"),
            ("POSTINO_AMQP_HEARTBEAT_S", "0"),
            ("POSTINO_FLOW_CHECK_INTERVAL_MS", "250"),
        ],
    )
    .expect("valid");
    assert_eq!(
        loaded.log_config().expect("valid").durability,
        Durability::None
    );
    assert_eq!(loaded.amqp_limits().heartbeat_s, 0);
    assert_eq!(loaded.flow_limits().check_every, Duration::from_millis(250));
}

#[test]
fn worker_threads_default_to_one_fewer_than_the_cores() {
    let loaded = load_with(&Flags::default(), &[]).expect("valid");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert_eq!(
        loaded.config.server.workers(),
        cores.saturating_sub(1).max(1)
    );
    let loaded =
        load_with(&Flags::default(), &[("POSTINO_SERVER_WORKER_THREADS", "3")]).expect("valid");
    assert_eq!(loaded.config.server.workers(), 3);
}
