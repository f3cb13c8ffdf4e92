//! SASL PLAIN users (OASIS AMQP 1.0 Part 5 §5.3, RFC 4616): the user table built from the
//! `[[amqp.users]]` of the configuration file, checked against salted Argon2 hashes (PHC
//! strings, RustCrypto's `argon2`), and the [`SaslConfig`] the AMQP listener's connections use.
//!
//! Properties:
//!
//! * Nothing secret is stored: each user has only a PHC string (algorithm, cost, random salt and
//!   hash). `lior amqp-user hash` ([`hash_password`]) makes one from a password on stdin.
//! * Constant time: the hash comparison is the crate's constant-time one; the user is looked up
//!   by comparing the name with every configured name, without an early exit; an unknown user
//!   or an over-long name or password is verified against a decoy hash made with the first
//!   user's cost parameters, so it costs the same time as a wrong password for that user.
//! * Bounded: at most [`USERS_MAX`] users, names of [`USER_NAME_BYTES_MAX`] bytes, passwords of
//!   [`PASSWORD_BYTES_MAX`] bytes (RFC 4616's 255 octets; the SASL codec refuses longer fields
//!   first, answering sasl-outcome `auth` and `amqp:unauthorized-access`), hash costs up to
//!   [`ARGON2_M_COST_KIB_MAX`], [`ARGON2_T_COST_MAX`] and [`ARGON2_P_COST_MAX`].
//! * Cost on the shard: an Argon2 verification takes the calling shard thread for a few tens of
//!   milliseconds (default cost: 19 MiB, two passes). A connection gets one attempt (a failure
//!   closes it) and the engine's per-address connection limit bounds how many run at once; a
//!   user whose password verified once is recognised again by a keyed SHA-256 of the
//!   credentials (one entry per user, [`UserTable`]'s `verified`), so a client that reconnects
//!   does not pay Argon2 again.

use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use sha2::{Digest, Sha256};

use super::config::AmqpConfig;
use super::connection::SaslConfig;

/// Users one `[amqp]` section may list.
pub const USERS_MAX: usize = 1024;
/// Bytes of a PLAIN user name (RFC 4616 §2: 255 octets).
pub const USER_NAME_BYTES_MAX: usize = 255;
/// Bytes of a PLAIN password (RFC 4616 §2: 255 octets).
pub const PASSWORD_BYTES_MAX: usize = 255;
/// Largest Argon2 memory cost (KiB) a configured hash may ask for: each verification allocates
/// it on a shard thread.
pub const ARGON2_M_COST_KIB_MAX: u32 = 256 * 1024;
/// Largest Argon2 pass count a configured hash may ask for.
pub const ARGON2_T_COST_MAX: u32 = 16;
/// Largest Argon2 lane count a configured hash may ask for.
pub const ARGON2_P_COST_MAX: u32 = 16;

/// A password or hash that cannot be used, said plainly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthError {}

/// Checks that `phc` is an Argon2 PHC string lior can verify within its cost limits.
pub fn check_phc(phc: &str) -> Result<(), AuthError> {
    let hash = PasswordHash::new(phc).map_err(|e| {
        AuthError(format!(
            "not a PHC string ({e}): expected $argon2id$v=19$..."
        ))
    })?;
    if !matches!(hash.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(AuthError(format!(
            "algorithm {:?} is not Argon2 (argon2id, argon2i or argon2d)",
            hash.algorithm.as_str()
        )));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(AuthError("the PHC string has no salt or no hash".into()));
    }
    let params =
        Params::try_from(&hash).map_err(|e| AuthError(format!("bad Argon2 parameters ({e})")))?;
    if params.m_cost() > ARGON2_M_COST_KIB_MAX
        || params.t_cost() > ARGON2_T_COST_MAX
        || params.p_cost() > ARGON2_P_COST_MAX
    {
        return Err(AuthError(format!(
            "cost m={} t={} p={} is above ARGON2_M_COST_KIB_MAX ({ARGON2_M_COST_KIB_MAX}), \
             ARGON2_T_COST_MAX ({ARGON2_T_COST_MAX}) or ARGON2_P_COST_MAX ({ARGON2_P_COST_MAX})",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        )));
    }
    Ok(())
}

/// Fills `buf` from the kernel's random source.
fn os_random(buf: &mut [u8]) -> Result<(), AuthError> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| AuthError(format!("cannot read /dev/urandom for a salt: {e}")))
}

/// Hashes `password` with Argon2id, the crate's default cost (19 MiB, t=2, p=1) and a random
/// 16-byte salt; returns the PHC string for `[[amqp.users]] password_hash`.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    hash_with(password, Params::DEFAULT)
}

fn hash_with(password: &str, params: Params) -> Result<String, AuthError> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(AuthError(format!(
            "a password is 1..={PASSWORD_BYTES_MAX} bytes (RFC 4616), this one is {}",
            password.len()
        )));
    }
    let mut raw = [0u8; 16];
    os_random(&mut raw)?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| AuthError(format!("salt: {e}")))?;
    let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError(format!("hashing: {e}")))
}

/// Equal bytes, comparing every position up to [`USER_NAME_BYTES_MAX`] (or the longer input)
/// with no early exit on the first difference.
fn ct_eq_padded(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..USER_NAME_BYTES_MAX.max(a.len()).max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

struct User {
    name: String,
    phc: String,
}

/// The users SASL PLAIN accepts; shared by every shard (`Arc`).
pub struct UserTable {
    users: Vec<User>,
    /// A hash of a random password with the first user's cost, verified for unknown users.
    decoy: String,
    /// Per user, the keyed SHA-256 of the last credentials that verified (see the module doc).
    verified: Mutex<Vec<Option<[u8; 32]>>>,
    /// The random key of those digests, made at start-up, never stored.
    key: [u8; 32],
}

impl fmt::Debug for UserTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserTable")
            .field(
                "users",
                &self.users.iter().map(|u| &u.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl UserTable {
    /// Builds the table from `[[amqp.users]]` (checked as [`AmqpConfig::validate`] does).
    /// Makes one Argon2 hash (the decoy), so it takes as long as one login.
    pub fn from_config(cfg: &AmqpConfig) -> Result<UserTable, AuthError> {
        if cfg.users.len() > USERS_MAX {
            return Err(AuthError(format!(
                "{} users; at most USERS_MAX ({USERS_MAX})",
                cfg.users.len()
            )));
        }
        let mut users = Vec::with_capacity(cfg.users.len());
        for u in &cfg.users {
            if u.name.is_empty() || u.name.len() > USER_NAME_BYTES_MAX {
                return Err(AuthError(format!(
                    "user name {:?}: 1..={USER_NAME_BYTES_MAX} bytes",
                    u.name
                )));
            }
            check_phc(&u.password_hash)
                .map_err(|e| AuthError(format!("user {:?}: {e}", u.name)))?;
            users.push(User {
                name: u.name.clone(),
                phc: u.password_hash.clone(),
            });
        }
        let params = match users.first() {
            Some(u) => {
                let h = PasswordHash::new(&u.phc).map_err(|e| AuthError(e.to_string()))?;
                Params::try_from(&h).map_err(|e| AuthError(e.to_string()))?
            }
            None => Params::DEFAULT,
        };
        let mut random = [0u8; 48];
        os_random(&mut random)?;
        let decoy_password: String = random[..16]
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        let decoy = hash_with(&decoy_password, params)?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&random[16..]);
        Ok(UserTable {
            verified: Mutex::new(vec![None; users.len()]),
            users,
            decoy,
            key,
        })
    }

    /// How many users the table holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn digest(&self, name: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((name.len() as u32).to_be_bytes());
        h.update(name.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// True when `name` is a configured user and `password` matches its hash. Costs one Argon2
    /// verification whatever the outcome (unknown user, over-long input, wrong password), except
    /// for credentials that already verified once.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let in_bounds = !name.is_empty()
            && name.len() <= USER_NAME_BYTES_MAX
            && !password.is_empty()
            && password.len() <= PASSWORD_BYTES_MAX;
        // Every name is compared; the last match wins (names are unique).
        let mut found = None;
        for (i, u) in self.users.iter().enumerate() {
            if ct_eq_padded(u.name.as_bytes(), name.as_bytes()) {
                found = Some(i);
            }
        }
        let found = found.filter(|_| in_bounds);
        if let Some(i) = found {
            let digest = self.digest(name, password);
            let known = self
                .verified
                .lock()
                .map(|v| v[i].is_some_and(|d| ct_eq_padded(&d, &digest)))
                .unwrap_or(false);
            if known {
                return true;
            }
        }
        let phc = found.map_or(self.decoy.as_str(), |i| self.users[i].phc.as_str());
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        match found {
            Some(i) if ok => {
                let digest = self.digest(name, password);
                if let Ok(mut v) = self.verified.lock() {
                    v[i] = Some(digest);
                }
                true
            }
            _ => false,
        }
    }
}

/// The SASL layer of the AMQP listener's connections: the mechanisms [`AmqpConfig::mechanisms`]
/// allows, PLAIN checked against `users`.
pub fn sasl_config(cfg: &AmqpConfig, users: Arc<UserTable>) -> Result<SaslConfig, AuthError> {
    let m = cfg.mechanisms().map_err(AuthError)?;
    Ok(SaslConfig {
        anonymous: m.anonymous,
        plain: m.plain.then(|| {
            let check: super::connection::PlainCheck =
                Arc::new(move |name: &str, password: &str| users.verify(name, password));
            check
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_whole() {
        assert!(ct_eq_padded(b"app", b"app"));
        assert!(!ct_eq_padded(b"app", b"app2"));
        assert!(!ct_eq_padded(b"app", b"apq"));
        assert!(!ct_eq_padded(b"", b"a"));
    }

    #[test]
    fn phc_checks_name_the_problem() {
        assert!(check_phc("plain text").unwrap_err().0.contains("PHC"));
        let e = check_phc("$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").unwrap_err();
        assert!(e.0.contains("not Argon2"), "{e}");
        let e = check_phc(
            "$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo",
        )
        .unwrap_err();
        assert!(e.0.contains("ARGON2_M_COST_KIB_MAX"), "{e}");
    }
}
