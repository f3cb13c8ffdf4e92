//! The `[amqp]` section of the configuration file: the AMQP 1.0 door (its listen address), the
//! SASL mechanisms it offers and the users PLAIN checks (`[[amqp.users]]`, salted Argon2 hashes
//! as PHC strings, made by `lior amqp-user hash`).
//!
//! ```toml
//! [amqp]
//! enabled = true                  # off by default (see AmqpConfig::enabled)
//! listen = "127.0.0.1:5672"
//! sasl_mechanisms = []            # [] = automatic: PLAIN when users exist, ANONYMOUS on loopback
//!
//! [[amqp.users]]
//! name = "orders-app"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$...$..."
//! ```
//!
//! ANONYMOUS rule: an empty `sasl_mechanisms` (the default) offers ANONYMOUS only when `listen`
//! is a loopback address (only local processes reach it, as for the HTTP API); on any other
//! address ANONYMOUS is offered only when listed explicitly. PLAIN is offered when at least one
//! user is configured; listing PLAIN with no user is refused (nobody could log in).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::auth::{self, USERS_MAX, USER_NAME_BYTES_MAX};
use super::sasl::{ANONYMOUS, PLAIN};

/// The `[amqp]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Serve AMQP 1.0 on `listen`. Default false: until the AMQP application is wired to the
    /// broker (issue 11) a connection there is refused at once, and a fixed default port would
    /// collide with RabbitMQ or a second `lior serve`. `lior serve --amqp-listen ADDR` turns it
    /// on with that address.
    pub enabled: bool,
    /// The AMQP listener, served by the same shards as MS-MQQB. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// SASL mechanisms to offer, from `PLAIN` and `ANONYMOUS`; empty means automatic (PLAIN
    /// when `users` is not empty, ANONYMOUS when `listen` is a loopback address).
    pub sasl_mechanisms: Vec<String>,
    /// The users SASL PLAIN accepts.
    pub users: Vec<AmqpUser>,
    /// AMQPS (AMQP over TLS, IANA port 5671) on the same shards, served while `enabled`;
    /// needs `tls_cert` and `tls_key`. Its SASL mechanisms follow the rule above for this
    /// address (ANONYMOUS automatic only on loopback). Port 0 picks a free port.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) of the AMQPS listener.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
}

/// One `[[amqp.users]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpUser {
    /// The PLAIN authentication identity (authcid), 1..=255 bytes.
    pub name: String,
    /// An Argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), as printed by
    /// `lior amqp-user hash`.
    pub password_hash: String,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            enabled: false,
            listen: "127.0.0.1:5672".parse().expect("literal address"),
            sasl_mechanisms: Vec::new(),
            users: Vec::new(),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The mechanisms a listener offers once the rules above are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mechanisms {
    pub plain: bool,
    pub anonymous: bool,
}

impl AmqpConfig {
    /// The mechanisms offered on `listen`, or why the section is wrong (naming the key).
    pub fn mechanisms(&self) -> Result<Mechanisms, String> {
        self.mechanisms_on(self.listen)
    }

    /// The mechanisms offered on the listener at `addr` (`listen` or `tls_listen`).
    pub fn mechanisms_on(&self, addr: SocketAddr) -> Result<Mechanisms, String> {
        if self.sasl_mechanisms.is_empty() {
            let m = Mechanisms {
                plain: !self.users.is_empty(),
                anonymous: addr.ip().is_loopback(),
            };
            if self.enabled && !m.plain && !m.anonymous {
                return Err(format!(
                    "amqp: no SASL mechanism for {addr}: ANONYMOUS is automatic only on a \
                     loopback address; add [[amqp.users]] (PLAIN, hashes from `lior amqp-user \
                     hash`) or list \"ANONYMOUS\" in amqp.sasl_mechanisms"
                ));
            }
            return Ok(m);
        }
        let mut m = Mechanisms {
            plain: false,
            anonymous: false,
        };
        for name in &self.sasl_mechanisms {
            match name.as_str() {
                PLAIN => m.plain = true,
                ANONYMOUS => m.anonymous = true,
                other => {
                    return Err(format!(
                        "amqp.sasl_mechanisms: {other:?} is not offered by lior; use \"PLAIN\" \
                         and/or \"ANONYMOUS\" (or [] for automatic)"
                    ))
                }
            }
        }
        if m.plain && self.users.is_empty() {
            return Err(
                "amqp.sasl_mechanisms lists PLAIN but no [[amqp.users]] is configured: nobody \
                 could log in; add a user (hash from `lior amqp-user hash`) or remove PLAIN"
                    .into(),
            );
        }
        Ok(m)
    }

    /// Checks the section: mechanisms, user count, names, duplicate names and every hash.
    pub fn validate(&self) -> Result<(), String> {
        self.mechanisms()?;
        if let Some(a) = self.tls_listen {
            self.mechanisms_on(a)?;
            if self.tls_cert.is_none() || self.tls_key.is_none() {
                return Err(format!(
                    "amqp.tls_listen = {a} needs amqp.tls_cert and amqp.tls_key (a PEM \
                     certificate chain and its PEM private key)"
                ));
            }
        } else if self.tls_cert.is_some() || self.tls_key.is_some() {
            return Err(
                "amqp.tls_cert / amqp.tls_key are set but amqp.tls_listen is not: set the \
                 AMQPS address (e.g. \"0.0.0.0:5671\") or remove them"
                    .into(),
            );
        }
        if self.users.len() > USERS_MAX {
            return Err(format!(
                "amqp.users: {} users; at most USERS_MAX ({USERS_MAX})",
                self.users.len()
            ));
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() || u.name.len() > USER_NAME_BYTES_MAX || u.name.contains('\0') {
                return Err(format!(
                    "amqp.users[{i}].name {:?}: 1..={USER_NAME_BYTES_MAX} bytes without NUL",
                    u.name
                ));
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                return Err(format!("amqp.users: {:?} is listed twice", u.name));
            }
            auth::check_phc(&u.password_hash).map_err(|e| {
                format!(
                    "amqp.users[{i}] ({:?}).password_hash: {e}; make one with `lior amqp-user \
                     hash`",
                    u.name
                )
            })?;
        }
        Ok(())
    }
}
