//! SASL PLAIN against the `[[amqp.users]]` Argon2 hashes (`lior::amqp::auth`), plugged into the
//! AMQP connection state machine the way the AMQP listener builds it
//! (`auth::sasl_config(&cfg.amqp, users)`): good and bad passwords, unknown users, ANONYMOUS
//! only where the rules allow it, over-long credentials, the `[amqp]` section's checks, and
//! `lior amqp-user hash`'s output verifying.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use lior::amqp::auth::{self, UserTable, PASSWORD_BYTES_MAX, USER_NAME_BYTES_MAX};
use lior::amqp::config::{AmqpConfig, AmqpUser};
use lior::amqp::connection::{Connection, ConnectionConfig, Event};
use lior::amqp::frame::{encode_sasl_frame, frame_len, parse_frame, FrameType, SASL_HEADER};
use lior::amqp::performatives::condition;
use lior::amqp::sasl::{code, SaslFrame, SaslInit};
use lior::config::Config;

const PASSWORD: &str = "correct horse battery staple";

/// One hash for the whole file: an Argon2 hash takes a noticeable time.
fn app_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| auth::hash_password(PASSWORD).expect("hash"))
}

fn amqp_cfg(listen: &str, mechanisms: &[&str]) -> AmqpConfig {
    AmqpConfig {
        enabled: true,
        listen: listen.parse().expect("address"),
        sasl_mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
        users: vec![AmqpUser {
            name: "orders-app".into(),
            password_hash: app_hash().to_string(),
        }],
        ..AmqpConfig::default()
    }
}

/// What the server said to one sasl-init.
#[derive(Debug)]
struct Answer {
    mechanisms: Vec<String>,
    outcome: Option<u8>,
    /// The connection's close condition, if it closed.
    closed: Option<&'static str>,
    user: Option<String>,
}

fn login(cfg: &AmqpConfig, mechanism: &str, response: &[u8]) -> Answer {
    let users = Arc::new(UserTable::from_config(cfg).expect("users"));
    let sasl = auth::sasl_config(cfg, users).expect("mechanisms");
    let mut c = Connection::new(
        ConnectionConfig {
            sasl: Some(sasl),
            ..ConnectionConfig::default()
        },
        0,
    );
    let mut input = SASL_HEADER.to_vec();
    encode_sasl_frame(
        &mut input,
        &SaslFrame::Init(SaslInit {
            mechanism,
            initial_response: Some(response),
            hostname: None,
        }),
    )
    .expect("encode sasl-init");
    let result = c.handle_bytes(0, &input);
    let mut out = Vec::new();
    c.poll_transmit(&mut out);
    assert_eq!(
        &out[..8],
        &SASL_HEADER,
        "the server answers the SASL header"
    );
    let mut rest = &out[8..];
    let mut answer = Answer {
        mechanisms: Vec::new(),
        outcome: None,
        closed: result.err().map(|e| e.condition),
        user: None,
    };
    while let Ok(Some(n)) = frame_len(rest, u32::MAX) {
        let f = parse_frame(&rest[..n], u32::MAX).expect("frame");
        if f.header.frame_type == FrameType::Sasl {
            match f.sasl().expect("sasl frame") {
                SaslFrame::Mechanisms(m) => {
                    m.for_each(|s| answer.mechanisms.push(s.to_string()))
                        .expect("symbols");
                }
                SaslFrame::Outcome(o) => answer.outcome = Some(o.code),
                other => panic!("server sent {other:?}"),
            }
        }
        rest = &rest[n..];
    }
    while let Some(e) = c.poll_event() {
        if let Event::Closed { error: Some(e), .. } = e {
            assert!(answer.closed.is_some(), "closed without an error: {e:?}");
        }
    }
    answer.user = c.user().map(str::to_string);
    answer
}

fn plain(name: &str, password: &str) -> Vec<u8> {
    let mut r = vec![0];
    r.extend_from_slice(name.as_bytes());
    r.push(0);
    r.extend_from_slice(password.as_bytes());
    r
}

fn assert_refused(a: &Answer) {
    assert_eq!(a.outcome, Some(code::AUTH), "{a:?}");
    assert_eq!(a.closed, Some(condition::UNAUTHORIZED_ACCESS), "{a:?}");
    assert_eq!(a.user, None);
}

#[test]
fn plain_accepts_the_right_password_and_refuses_a_wrong_one() {
    let cfg = amqp_cfg("0.0.0.0:5672", &[]);
    let good = login(&cfg, "PLAIN", &plain("orders-app", PASSWORD));
    // Not on loopback and not listed: only PLAIN is offered.
    assert_eq!(good.mechanisms, ["PLAIN"]);
    assert_eq!(good.outcome, Some(code::OK), "{good:?}");
    assert_eq!(good.closed, None);
    assert_eq!(good.user.as_deref(), Some("orders-app"));
    // A second login with the same credentials (recognised without Argon2) still succeeds.
    let again = login(&cfg, "PLAIN", &plain("orders-app", PASSWORD));
    assert_eq!(again.outcome, Some(code::OK), "{again:?}");

    assert_refused(&login(
        &cfg,
        "PLAIN",
        &plain("orders-app", "correct horse battery"),
    ));
    assert_refused(&login(
        &cfg,
        "PLAIN",
        &plain("orders-app", &format!("{PASSWORD}!")),
    ));
    assert_refused(&login(&cfg, "PLAIN", &plain("Orders-app", PASSWORD)));
}

#[test]
fn an_unknown_user_is_refused_like_a_wrong_password() {
    let cfg = amqp_cfg("0.0.0.0:5672", &[]);
    assert_refused(&login(&cfg, "PLAIN", &plain("nobody", PASSWORD)));
    assert_refused(&login(&cfg, "PLAIN", &plain("orders-ap", PASSWORD)));
    let users = UserTable::from_config(&cfg).expect("users");
    assert!(!users.verify("nobody", PASSWORD));
    assert!(!users.verify("", PASSWORD));
    assert!(users.verify("orders-app", PASSWORD));
}

#[test]
fn over_long_credentials_are_refused_with_unauthorized_access() {
    let cfg = amqp_cfg("0.0.0.0:5672", &[]);
    let long_password = "p".repeat(PASSWORD_BYTES_MAX + 1);
    assert_refused(&login(&cfg, "PLAIN", &plain("orders-app", &long_password)));
    let long_name = "n".repeat(USER_NAME_BYTES_MAX + 1);
    assert_refused(&login(&cfg, "PLAIN", &plain(&long_name, PASSWORD)));
    // The table refuses them by itself too, whatever the codec lets through.
    let users = UserTable::from_config(&cfg).expect("users");
    assert!(!users.verify("orders-app", &long_password));
    assert!(!users.verify(&long_name, PASSWORD));
}

#[test]
fn anonymous_is_refused_unless_on_loopback_or_listed() {
    // Automatic mechanisms on a non-loopback address: no ANONYMOUS.
    let remote = amqp_cfg("0.0.0.0:5672", &[]);
    let a = login(&remote, "ANONYMOUS", b"");
    assert!(!a.mechanisms.contains(&"ANONYMOUS".to_string()), "{a:?}");
    assert_refused(&a);
    // Listed without ANONYMOUS, even on loopback: refused.
    let listed = amqp_cfg("127.0.0.1:5672", &["PLAIN"]);
    assert_refused(&login(&listed, "ANONYMOUS", b""));
    // Automatic on loopback: offered and accepted.
    let local = amqp_cfg("127.0.0.1:5672", &[]);
    let a = login(&local, "ANONYMOUS", b"");
    assert_eq!(a.mechanisms, ["PLAIN", "ANONYMOUS"]);
    assert_eq!(a.outcome, Some(code::OK), "{a:?}");
    // Listed explicitly: offered on any address.
    let explicit = amqp_cfg("0.0.0.0:5672", &["ANONYMOUS"]);
    let a = login(&explicit, "ANONYMOUS", b"");
    assert_eq!(a.mechanisms, ["ANONYMOUS"]);
    assert_eq!(a.outcome, Some(code::OK), "{a:?}");
    // ...and then PLAIN is not offered.
    assert_refused(&login(&explicit, "PLAIN", &plain("orders-app", PASSWORD)));
}

#[test]
fn the_amqp_section_is_checked_with_the_key_named() {
    let c = Config::from_toml("").expect("defaults");
    assert!(!c.amqp.enabled);
    assert_eq!(c.amqp.listen.to_string(), "127.0.0.1:5672");

    let user = format!(
        "[amqp]\nenabled = true\nlisten = \"0.0.0.0:5672\"\n[[amqp.users]]\nname = \"app\"\npassword_hash = \"{}\"\n",
        app_hash()
    );
    let c = Config::from_toml(&user).expect("a user");
    assert_eq!(c.amqp.users.len(), 1);
    assert_eq!(Config::from_toml(&c.to_toml()).expect("round trip"), c);

    for (text, needle) in [
        // Nobody could connect: not loopback, no user, ANONYMOUS not listed.
        (
            "[amqp]\nenabled = true\nlisten = \"0.0.0.0:5672\"\n",
            "no SASL mechanism",
        ),
        (
            "[amqp]\nsasl_mechanisms = [\"PLAIN\"]\n",
            "no [[amqp.users]]",
        ),
        ("[amqp]\nsasl_mechanisms = [\"CRAM-MD5\"]\n", "CRAM-MD5"),
        ("[amqp]\nlisten = \"127.0.0.1:5672\"\nport = 1\n", "port"),
        (
            "[[amqp.users]]\nname = \"app\"\npassword_hash = \"secret\"\n",
            "amqp.users[0]",
        ),
        (
            "[[amqp.users]]\nname = \"\"\npassword_hash = \"x\"\n",
            "amqp.users[0].name",
        ),
    ] {
        let e = Config::from_toml(text).expect_err(text);
        assert!(e.0.contains(needle), "{text}: {e}");
    }
    let twice = format!(
        "{user}[[amqp.users]]\nname = \"app\"\npassword_hash = \"{}\"\n",
        app_hash()
    );
    let e = Config::from_toml(&twice).expect_err("a name twice");
    assert!(e.0.contains("twice"), "{e}");
}

#[test]
fn the_hash_subcommand_prints_a_hash_that_verifies() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lior"))
        .args(["amqp-user", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lior amqp-user hash");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret words\n")
        .expect("write the password");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = String::from_utf8(out.stdout).expect("utf-8");
    let phc = phc.trim_end();
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    assert!(!phc.contains("s3cret"));
    let cfg = AmqpConfig {
        enabled: true,
        users: vec![AmqpUser {
            name: "cli".into(),
            password_hash: phc.to_string(),
        }],
        ..AmqpConfig::default()
    };
    cfg.validate()
        .expect("the printed hash is a valid password_hash");
    let users = UserTable::from_config(&cfg).expect("users");
    // The trailing newline was not part of the password.
    assert!(users.verify("cli", "s3cret words"));
    assert!(!users.verify("cli", "s3cret words\n"));
    assert!(!users.verify("cli", "s3cret word"));

    // An empty password is refused, saying so.
    let out = Command::new(env!("CARGO_BIN_EXE_lior"))
        .args(["amqp-user", "hash"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
