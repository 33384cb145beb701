//! Who may use the console and how a login is kept: the users file
//! (argon2 password hashes, roles `viewer` and `operator`), sessions held in
//! memory behind an HttpOnly, SameSite=Strict cookie, a CSRF token per
//! session, and login attempts throttled per user name and per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the group, the dead letters (plates masked), the ledger, the
    /// control topic and the audit; changes nothing.
    Viewer,
    /// A viewer who may also redrive, edit, resolve, pause and tune.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    role: Role,
    password_hash: String,
}

/// Why the users file cannot be used. Never holds a hash or a password.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read console.users_file {path}: {error}")]
    Read {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("console.users_file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The console's users.
pub struct Users {
    by_name: HashMap<String, (Role, String)>,
}

/// Verified against when the user name is unknown, so a wrong name takes
/// as long as a wrong password.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Jm2Q0YdJ8b7d0m7Y2mXyQf0cQk9bmx4u8o8wB6o2H7E";

impl Users {
    /// Reads the users file; every hash must parse.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| UsersError::Read {
            path: shown.clone(),
            error,
        })?;
        let file: UsersFile = toml::from_str(&text).map_err(|error| UsersError::Invalid {
            path: shown.clone(),
            reason: error.message().to_owned(),
        })?;
        let mut by_name = HashMap::new();
        for entry in file.user {
            if PasswordHash::new(&entry.password_hash).is_err() {
                return Err(UsersError::Invalid {
                    path: shown,
                    reason: format!(
                        "user {:?}: password_hash is not a PHC string (make one with `paysync console --hash-password`)",
                        entry.name
                    ),
                });
            }
            if by_name
                .insert(entry.name.clone(), (entry.role, entry.password_hash))
                .is_some()
            {
                return Err(UsersError::Invalid {
                    path: shown,
                    reason: format!("user {:?} is listed twice", entry.name),
                });
            }
        }
        if by_name.is_empty() {
            return Err(UsersError::Invalid {
                path: shown,
                reason: "lists no [[user]]".to_owned(),
            });
        }
        Ok(Users { by_name })
    }

    /// The user's role when the password is right. Slow by design (argon2):
    /// call it on a blocking thread.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let (role, hash) = match self.by_name.get(name) {
            Some((role, hash)) => (Some(*role), hash.as_str()),
            None => (None, DECOY),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        role.filter(|_| matches)
    }
}

/// An argon2id hash of `password` for the users file.
pub fn hash_password(password: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&bytes).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password with default parameters")
        .to_string()
}

/// A random token: 32 bytes, URL-safe base64.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Every form carries it; a POST without it is refused.
    pub csrf: String,
    expires: Instant,
}

/// The sessions of this console process.
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            by_token: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Starts a session; returns its cookie token.
    pub fn start(&self, user: &str, role: Role) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut sessions = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, session| session.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                user: user.to_owned(),
                role,
                csrf: random_token(),
                expires: now + self.ttl,
            },
        );
        token
    }

    /// The live session of `token`.
    pub fn get(&self, token: &str) -> Option<Session> {
        let sessions = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(token)
            .filter(|session| session.expires > Instant::now())
            .cloned()
    }

    pub fn end(&self, token: &str) {
        self.by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Login attempts allowed per user name, and four times as many per client
/// address (people behind one proxy share it; a guesser spraying names is
/// still stopped).
pub struct LoginThrottle {
    by_user: DefaultKeyedRateLimiter<String>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
}

impl LoginThrottle {
    pub fn new(per_minute: u32) -> LoginThrottle {
        let per_user = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
        let per_address = per_user.saturating_mul(NonZeroU32::new(4).expect("4 > 0"));
        LoginThrottle {
            by_user: RateLimiter::keyed(Quota::per_minute(per_user)),
            by_address: RateLimiter::keyed(Quota::per_minute(per_address)),
        }
    }

    /// Whether one more attempt is allowed now (it counts).
    pub fn allow(&self, user: &str, address: IpAddr) -> bool {
        let user_ok = self.by_user.check_key(&user.to_owned()).is_ok();
        let address_ok = self.by_address.check_key(&address).is_ok();
        user_ok && address_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let hash = hash_password("correct horse");
        std::fs::write(
            &path,
            format!("[[user]]\nname = \"ana\"\nrole = \"operator\"\npassword_hash = \"{hash}\"\n"),
        )
        .unwrap();
        let users = Users::load(&path).unwrap();
        assert_eq!(users.verify("ana", "correct horse"), Some(Role::Operator));
        assert_eq!(users.verify("ana", "wrong"), None);
        assert_eq!(users.verify("bob", "correct horse"), None);
    }

    #[test]
    fn a_bad_users_file_names_the_user_and_never_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            "[[user]]\nname = \"ana\"\nrole = \"operator\"\npassword_hash = \"hunter2\"\n",
        )
        .unwrap();
        let error = Users::load(&path).err().unwrap().to_string();
        assert!(error.contains("\"ana\""), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn the_throttle_stops_a_name_after_its_attempts() {
        let throttle = LoginThrottle::new(3);
        let here: IpAddr = "127.0.0.1".parse().unwrap();
        let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.allow("ana", here));
        }
        assert!(!throttle.allow("ana", elsewhere), "the name is throttled");
        assert!(throttle.allow("bob", elsewhere));
        for name in ["c", "d", "e", "f", "g", "h", "i", "j", "k"] {
            throttle.allow(name, here);
        }
        assert!(!throttle.allow("l", here), "the address is throttled");
    }

    #[test]
    fn sessions_expire() {
        let sessions = Sessions::new(Duration::ZERO);
        let token = sessions.start("ana", Role::Viewer);
        assert!(sessions.get(&token).is_none());
        let sessions = Sessions::new(Duration::from_secs(60));
        let token = sessions.start("ana", Role::Viewer);
        assert_eq!(sessions.get(&token).unwrap().user, "ana");
        sessions.end(&token);
        assert!(sessions.get(&token).is_none());
    }
}
