//! The password file: `user:PHC-string` lines with argon2id hashes (format
//! in the crate docs), checked with [`Passwords::verify`] and written with
//! [`set_password`], [`delete_user`] and [`passwd`].

use std::fmt;
use std::io::{self, BufRead, IsTerminal};
use std::path::Path;
use std::sync::OnceLock;

use ahash::AHashMap;
use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

use crate::error::{PasswordLineError, UserNameError};
use crate::{file, AuthError};

/// Argon2id memory cost in KiB (OWASP: m=19456, t=2, p=1).
const M_COST: u32 = 19_456;
/// Argon2id passes.
const T_COST: u32 = 2;
/// Argon2id lanes.
const P_COST: u32 = 1;

/// The parameters of every hash this crate writes.
const PARAMS: Params = match Params::new(M_COST, T_COST, P_COST, None) {
    Ok(p) => p,
    Err(_) => panic!("invalid argon2 parameters"),
};

/// The longest user name or password: an MQTT string or binary field has a
/// 16-bit length.
const MAX_LEN: usize = 65_535;

/// A hash with [`PARAMS`] (of a password no client would send, with the
/// salt `vmqtt-auth-dummy`), verified for unknown users so that they cost
/// what a known user costs.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$dm1xdHQtYXV0aC1kdW1teQ$\
                          xbnZtJq4oOEEzdmmNL/784YjUUzokDAPjniiVu94Qns";

/// The users of a password file and their hashes.
///
/// Immutable once loaded: the broker builds a new one on SIGHUP and swaps
/// it in. `Send + Sync`; verification is slow by design, so the broker calls
/// [`verify`](Self::verify) on a blocking thread, never on a shard's executor.
pub struct Passwords {
    users: AHashMap<Box<str>, PasswordHash>,
}

impl fmt::Debug for Passwords {
    /// Lists the user names only: hashes are not for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(|u| &**u).collect();
        users.sort_unstable();
        f.debug_struct("Passwords").field("users", &users).finish()
    }
}

impl Passwords {
    /// Reads and parses the password file at `path`.
    ///
    /// # Errors
    /// [`AuthError::Io`] if it cannot be read, [`AuthError::PasswordFile`]
    /// (with the file and line) if a line is invalid.
    pub fn load(path: impl AsRef<Path>) -> Result<Passwords, AuthError> {
        let path = path.as_ref();
        let bytes = file::read(path, "read password file")?;
        let origin = path.display().to_string();
        let text = file::utf8(&bytes).map_err(|line| AuthError::PasswordFile {
            origin: origin.clone(),
            line,
            kind: PasswordLineError::NotUtf8,
        })?;
        Passwords::parse(text, &origin)
    }

    /// Parses the text of a password file; `origin` (the file name) is
    /// quoted in errors.
    ///
    /// # Errors
    /// [`AuthError::PasswordFile`] for the first invalid line: no `:`, an
    /// empty or invalid user name, a duplicate user, a hash that is not an
    /// Argon2 PHC string with salt and output.
    pub fn parse(text: &str, origin: &str) -> Result<Passwords, AuthError> {
        let mut users = AHashMap::new();
        let mut first_line = AHashMap::new();
        for (line_no, line) in file::lines(text) {
            if file::is_blank_or_comment(line) {
                continue;
            }
            let err = |kind| AuthError::PasswordFile {
                origin: origin.to_owned(),
                line: line_no,
                kind,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err(PasswordLineError::NoColon))?;
            validate_username(user).map_err(|e| err(PasswordLineError::User(e)))?;
            if let Some(&first) = first_line.get(user) {
                return Err(err(PasswordLineError::Duplicate {
                    user: user.to_owned(),
                    first,
                }));
            }
            let hash = parse_hash(hash).map_err(err)?;
            first_line.insert(user, line_no);
            users.insert(Box::from(user), hash);
        }
        Ok(Passwords { users })
    }

    /// Whether `password` is `user`'s password.
    ///
    /// Slow by design (one Argon2 computation, tens of milliseconds and
    /// 19 MiB): call it on a blocking thread. An unknown user costs the
    /// same as a known one (a dummy hash with the same parameters is
    /// verified), so the time taken does not tell which users exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => verify_hash(password, hash),
            None => {
                if let Some(dummy) = dummy_hash() {
                    let _ = verify_hash(password, dummy);
                }
                false
            }
        }
    }

    /// Whether `user` has the same hash in `self` and in `other` (both
    /// files have the user, with the same line): what was verified against
    /// one still holds for the other. The broker keeps a user's cached
    /// credentials across a reload only then.
    pub fn same_hash(&self, other: &Passwords, user: &str) -> bool {
        match (self.users.get(user), other.users.get(user)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    /// Whether the file has this user.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn verify_hash(password: &[u8], hash: &PasswordHash) -> bool {
    Argon2::default().verify_password(password, hash).is_ok()
}

fn dummy_hash() -> Option<&'static PasswordHash> {
    static DUMMY: OnceLock<Option<PasswordHash>> = OnceLock::new();
    DUMMY
        .get_or_init(|| PasswordHash::new(DUMMY_HASH).ok())
        .as_ref()
}

/// Checks that `s` is an Argon2 PHC string that can be verified against.
fn parse_hash(s: &str) -> Result<PasswordHash, PasswordLineError> {
    if s.is_empty() {
        return Err(PasswordLineError::EmptyHash);
    }
    let hash = PasswordHash::new(s).map_err(|e| PasswordLineError::NotPhc(e.to_string()))?;
    let algorithm = hash.algorithm.as_str();
    if Algorithm::try_from(algorithm).is_err() {
        return Err(PasswordLineError::Algorithm(algorithm.to_owned()));
    }
    if let Some(v) = hash.version {
        if Version::try_from(v).is_err() {
            return Err(PasswordLineError::Argon2(format!(
                "unsupported version {v}"
            )));
        }
    }
    if hash.salt.is_none() {
        return Err(PasswordLineError::Argon2("no salt".to_owned()));
    }
    if hash.hash.is_none() {
        return Err(PasswordLineError::Argon2("no hash output".to_owned()));
    }
    Params::try_from(&hash).map_err(|e| PasswordLineError::Argon2(e.to_string()))?;
    Ok(hash)
}

/// Checks that `user` can be stored in a password file: non-empty, at most
/// 65535 bytes, no `:` or control characters, no white space at either
/// end, no `#` at the start.
///
/// # Errors
/// The first rule broken.
pub fn validate_username(user: &str) -> Result<(), UserNameError> {
    if user.is_empty() {
        Err(UserNameError::Empty)
    } else if user.len() > MAX_LEN {
        Err(UserNameError::TooLong)
    } else if user.contains(':') {
        Err(UserNameError::Colon)
    } else if user.chars().any(char::is_control) {
        Err(UserNameError::ControlChar)
    } else if user.starts_with(char::is_whitespace) || user.ends_with(char::is_whitespace) {
        Err(UserNameError::Whitespace)
    } else if user.starts_with('#') {
        Err(UserNameError::Hash)
    } else {
        Ok(())
    }
}

/// Hashes `password` with argon2id (m=19456 KiB, t=2, p=1) and a random
/// 16-byte salt; returns the PHC string. Slow by design.
///
/// # Panics
/// If the OS random number generator fails, or the password is longer
/// than 4 GiB.
pub fn hash_password(password: &[u8]) -> String {
    match try_hash_password(password) {
        Ok(hash) => hash,
        Err(e) => panic!("{e}"),
    }
}

fn try_hash_password(password: &[u8]) -> Result<String, AuthError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(AuthError::Hash)
}

/// Sets `user`'s password in the file at `path`: creates the file (mode
/// 0600), or replaces the user's line, or appends one, keeping every other
/// line and comment as it was. The file is replaced atomically (a new file
/// in the same directory, synced, renamed over it).
///
/// # Errors
/// An invalid user name, a file that cannot be read or written, or a file
/// with an invalid line (it is left as it is).
pub fn set_password(path: impl AsRef<Path>, user: &str, password: &[u8]) -> Result<(), AuthError> {
    set_password_inner(path.as_ref(), user, password).map(|_added| ())
}

/// [`set_password`]; true if the user was added, false if updated.
fn set_password_inner(path: &Path, user: &str, password: &[u8]) -> Result<bool, AuthError> {
    validate_username(user).map_err(AuthError::InvalidUser)?;
    let path = file::resolve(path);
    let old = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(AuthError::Io {
                action: "read password file",
                path,
                source,
            })
        }
    };
    let origin = path.display().to_string();
    let old = file::utf8(&old).map_err(|line| AuthError::PasswordFile {
        origin: origin.clone(),
        line,
        kind: PasswordLineError::NotUtf8,
    })?;
    // Refuse a broken file before the slow part.
    let (checked, _) = edit(old, user, None);
    Passwords::parse(&checked, &origin)?;
    let line = format!("{user}:{}", try_hash_password(password)?);
    let (new, found) = edit(old, user, Some(&line));
    Passwords::parse(&new, &origin)?;
    file::replace(&path, new.as_bytes())?;
    Ok(!found)
}

/// Removes `user` from the password file at `path`, keeping every other
/// line; false (and the file untouched) if the user is not there.
///
/// # Errors
/// A file that cannot be read or written (including a missing file), or a
/// file with an invalid line.
pub fn delete_user(path: impl AsRef<Path>, user: &str) -> Result<bool, AuthError> {
    let path = file::resolve(path.as_ref());
    let bytes = file::read(&path, "read password file")?;
    let origin = path.display().to_string();
    let old = file::utf8(&bytes).map_err(|line| AuthError::PasswordFile {
        origin: origin.clone(),
        line,
        kind: PasswordLineError::NotUtf8,
    })?;
    let (new, found) = edit(old, user, None);
    if !found {
        return Ok(false);
    }
    Passwords::parse(&new, &origin)?;
    file::replace(&path, new.as_bytes())?;
    Ok(true)
}

/// `text` with `user`'s line replaced by `line` (or removed for `None`),
/// and whether it was there. A user's later lines (duplicates) are removed;
/// a missing user is appended. Every other line is kept byte for byte.
fn edit(text: &str, user: &str, line: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + line.map_or(0, |l| l.len() + 2));
    let mut found = false;
    for piece in text.split_inclusive('\n') {
        let content = piece.trim_end();
        let is_user = !file::is_blank_or_comment(content)
            && content.split_once(':').map(|(u, _)| u) == Some(user);
        if !is_user {
            out.push_str(piece);
            continue;
        }
        if let (false, Some(line)) = (found, line) {
            out.push_str(line);
            out.push('\n');
        }
        found = true;
    }
    if let (false, Some(line)) = (found, line) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, found)
}

/// Where [`passwd`] gets the password.
pub enum PasswordInput {
    /// Standard input. When it is a terminal, the password is asked twice
    /// on the terminal without echo; otherwise one line is read (its line
    /// end stripped), so that scripts can pipe it in.
    Stdin,
    /// This password (for callers that got it some other way, and tests).
    Given(Vec<u8>),
}

impl fmt::Debug for PasswordInput {
    /// Never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordInput::Stdin => f.write_str("Stdin"),
            PasswordInput::Given(_) => f.write_str("Given(..)"),
        }
    }
}

/// `vmqtt-shard passwd FILE USER [--delete]`: sets `user`'s password in
/// the password file at `path` (creating the file, mode 0600), or deletes
/// the user. Returns a one-line message for the operator.
///
/// # Errors
/// A user name that cannot be stored (see [`validate_username`]), an
/// empty password or one longer than 65535 bytes, two different entries
/// at the terminal, a user to delete that is not there, and the errors of
/// [`set_password`] and [`delete_user`].
pub fn passwd(
    path: &Path,
    user: &str,
    delete: bool,
    input: PasswordInput,
) -> Result<String, AuthError> {
    validate_username(user).map_err(AuthError::InvalidUser)?;
    if delete {
        return if delete_user(path, user)? {
            Ok(format!("deleted user {user:?} from {}", path.display()))
        } else {
            Err(AuthError::NoSuchUser {
                path: path.to_owned(),
                user: user.to_owned(),
            })
        };
    }
    let password = match input {
        PasswordInput::Given(password) => password,
        PasswordInput::Stdin if io::stdin().is_terminal() => prompt_twice()?,
        PasswordInput::Stdin => {
            read_line(&mut io::stdin().lock()).map_err(AuthError::ReadPassword)?
        }
    };
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    if password.len() > MAX_LEN {
        return Err(AuthError::PasswordTooLong);
    }
    Ok(if set_password_inner(path, user, &password)? {
        format!("added user {user:?} to {}", path.display())
    } else {
        format!("changed the password of {user:?} in {}", path.display())
    })
}

/// Asks for the password twice on the terminal, without echo.
fn prompt_twice() -> Result<Vec<u8>, AuthError> {
    let first = rpassword::prompt_password("Password: ").map_err(AuthError::ReadPassword)?;
    if first.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let again = rpassword::prompt_password("Again: ").map_err(AuthError::ReadPassword)?;
    if first != again {
        return Err(AuthError::PasswordMismatch);
    }
    Ok(first.into_bytes())
}

/// One line of `input`, without its `\n` or `\r\n`: at most a few bytes
/// more than the longest password are read.
fn read_line(input: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    io::Read::take(&mut *input, MAX_LEN as u64 + 3).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    /// `secret`, hashed with [`PARAMS`].
    const SECRET: &str = "$argon2id$v=19$m=19456,t=2,p=1$6jHfu9ftYhOmBWmUBx8XrQ$\
                          Ox0ufmAFdPxFxr1pBBbeP8tMgl4jiFAAMMUkZQKJCKs";

    /// A fresh directory under the system's temporary one, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "vmqtt-auth-{name}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn parse_err(text: &str) -> String {
        Passwords::parse(text, "pw")
            .expect_err("should not parse")
            .to_string()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn parses_users_comments_blank_lines_and_crlf() {
        let text =
            format!("# users\n\nalice:{SECRET}\r\n   # indented comment\n\tbob:{SECRET}   \n\n");
        // `\tbob` starts with a control character: not a user name.
        assert_eq!(
            Passwords::parse(&text, "pw").expect_err("tab").to_string(),
            "pw:5: user name contains a control character"
        );
        let text = format!("# users\n\nalice:{SECRET}\r\n   # indented\nbob:{SECRET}   \n");
        let p = Passwords::parse(&text, "pw").expect("parses");
        assert_eq!(p.len(), 2);
        assert!(p.contains("alice") && p.contains("bob") && !p.contains("carol"));
        assert!(Passwords::parse("", "pw").expect("empty").is_empty());
    }

    #[test]
    fn same_hash_compares_a_users_lines_across_files() {
        let other = hash_password(b"another");
        let old = Passwords::parse(&format!("alice:{SECRET}\nbob:{SECRET}\n"), "pw").expect("old");
        let new = Passwords::parse(&format!("# edited\nalice:{SECRET}\ncarol:{SECRET}\n"), "pw")
            .expect("new");
        let changed = Passwords::parse(&format!("alice:{other}\n"), "pw").expect("changed");
        assert!(old.same_hash(&new, "alice"), "the same line");
        assert!(!old.same_hash(&new, "bob"), "deleted");
        assert!(!old.same_hash(&new, "carol"), "added");
        assert!(!old.same_hash(&changed, "alice"), "a new password");
    }

    #[test]
    fn parse_errors_name_line_and_problem_without_the_hash() {
        let cases = [
            ("alice\n", "pw:1: expected 'user:hash', found no ':'"),
            (&*format!("# x\n\n:{SECRET}"), "pw:3: empty user name"),
            (
                &*format!(" alice:{SECRET}"),
                "pw:1: user name starts or ends with white space",
            ),
            (
                &*format!("al\u{7f}ice:{SECRET}"),
                "pw:1: user name contains a control character",
            ),
            (
                &*format!("alice:{SECRET}\nbob:{SECRET}\nalice:{SECRET}\n"),
                "pw:3: duplicate user \"alice\" (first on line 1)",
            ),
            ("alice:\n", "pw:1: missing password hash after ':'"),
            (
                "alice:hunter2\n",
                "pw:1: password hash is not a valid PHC string: password hash string missing field",
            ),
            (
                "alice:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n",
                "pw:1: unsupported password hash algorithm 'pbkdf2-sha256' (expected argon2id)",
            ),
            (
                "alice:$argon2id$v=19$m=19456,t=2,p=1\n",
                "pw:1: invalid argon2 password hash: no salt",
            ),
            (
                "alice:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ\n",
                "pw:1: invalid argon2 password hash: no hash output",
            ),
            (
                "alice:$argon2id$v=18$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n",
                "pw:1: invalid argon2 password hash: unsupported version 18",
            ),
            (
                "alice:$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n",
                "pw:1: invalid argon2 password hash: invalid parameter: \"m\"",
            ),
            (
                "alice:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFz!GhhaGhhc2hoYXNo\n",
                "pw:1: password hash is not a valid PHC string: invalid Base64 encoding",
            ),
        ];
        for (text, expected) in cases {
            let message = parse_err(text);
            assert_eq!(message, expected, "for {text:?}");
            assert!(!message.contains("hunter2") && !message.contains("aGFz"));
        }
    }

    #[test]
    fn load_reports_the_line_that_is_not_utf8_and_missing_files() {
        let dir = TempDir::new("utf8");
        let path = dir.path("passwd");
        let mut bytes = format!("alice:{SECRET}\n# \u{e9}\n").into_bytes();
        bytes.extend_from_slice(b"b\xffb:x\n");
        fs::write(&path, &bytes).expect("write");
        let e = Passwords::load(&path).expect_err("not utf8").to_string();
        assert_eq!(e, format!("{}:3: not valid UTF-8", path.display()));
        let e = Passwords::load(dir.path("none"))
            .expect_err("missing")
            .to_string();
        assert!(e.starts_with("cannot read password file "), "{e}");
    }

    #[test]
    fn verifies_right_and_wrong_passwords_and_unknown_users() {
        let p = Passwords::parse(&format!("alice:{SECRET}\n"), "pw").expect("parses");
        assert!(p.verify("alice", b"secret"));
        assert!(!p.verify("alice", b"Secret"));
        assert!(!p.verify("bob", b"secret"));
        // Loaded once, used from the broker's blocking threads.
        fn send_sync<T: Send + Sync>(_: &T) {}
        send_sync(&p);
    }

    #[test]
    fn the_dummy_hash_has_the_parameters_of_new_hashes() {
        let dummy = dummy_hash().expect("dummy parses");
        parse_hash(DUMMY_HASH).expect("dummy is a valid line");
        let params = Params::try_from(dummy).expect("params");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (M_COST, T_COST, P_COST)
        );
        assert_eq!(dummy.algorithm.as_str(), "argon2id");
        let secret = PasswordHash::new(SECRET).expect("secret parses");
        assert_eq!(secret.params, dummy.params);
    }

    #[test]
    fn debug_output_shows_no_hash_or_password() {
        let p = Passwords::parse(&format!("bob:{SECRET}\nalice:{SECRET}\n"), "pw").expect("ok");
        assert_eq!(format!("{p:?}"), r#"Passwords { users: ["alice", "bob"] }"#);
        let input = PasswordInput::Given(b"hunter2".to_vec());
        assert_eq!(format!("{input:?}"), "Given(..)");
    }

    #[test]
    fn validates_user_names() {
        assert_eq!(validate_username("alice"), Ok(()));
        assert_eq!(validate_username("a b.c@d-é"), Ok(()));
        assert_eq!(validate_username(""), Err(UserNameError::Empty));
        assert_eq!(validate_username("a:b"), Err(UserNameError::Colon));
        assert_eq!(validate_username("a\nb"), Err(UserNameError::ControlChar));
        assert_eq!(validate_username("a\u{0}"), Err(UserNameError::ControlChar));
        assert_eq!(validate_username("alice "), Err(UserNameError::Whitespace));
        assert_eq!(validate_username("#alice"), Err(UserNameError::Hash));
        assert_eq!(validate_username(&"a".repeat(65_535)), Ok(()));
        assert_eq!(
            validate_username(&"a".repeat(65_536)),
            Err(UserNameError::TooLong)
        );
    }

    #[test]
    fn edit_replaces_appends_and_removes_lines_keeping_the_rest() {
        let text = "# head\r\nalice:OLD\r\n\n  # bob:x\nbob:B\nalice:DUP\ncarol:C";
        let (out, found) = edit(text, "alice", Some("alice:NEW"));
        assert!(found);
        assert_eq!(out, "# head\r\nalice:NEW\n\n  # bob:x\nbob:B\ncarol:C");
        let (out, found) = edit(text, "dave", Some("dave:D"));
        assert!(!found);
        assert_eq!(out, format!("{text}\ndave:D\n"));
        let (out, found) = edit(text, "bob", None);
        assert!(found);
        assert_eq!(
            out,
            "# head\r\nalice:OLD\r\n\n  # bob:x\nalice:DUP\ncarol:C"
        );
        assert_eq!(edit(text, "nobody", None), (text.to_owned(), false));
        assert_eq!(edit("", "a", Some("a:X")), ("a:X\n".to_owned(), false));
        // A comment is never a user's line, whatever it says.
        assert_eq!(edit("#a:X\n", "#a", None), ("#a:X\n".to_owned(), false));
    }

    #[test]
    fn set_password_creates_updates_and_keeps_other_lines() {
        let dir = TempDir::new("set");
        let path = dir.path("passwd");
        set_password(&path, "carol", b"pw1").expect("create");
        assert_eq!(mode(&path), 0o600);
        let created = fs::read_to_string(&path).expect("read");
        assert!(created.starts_with("carol:$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(created.ends_with('\n') && created.lines().count() == 1);

        let head = format!("# the users\nalice:{SECRET}\n\n# bob is next\nbob:{SECRET}");
        fs::write(&path, format!("{head}\n{created}")).expect("write");
        set_password(&path, "alice", b"pw2").expect("update");
        let updated = fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = updated.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], "# the users");
        assert!(lines[1].starts_with("alice:$argon2id$") && lines[1] != format!("alice:{SECRET}"));
        assert_eq!(
            &lines[2..5],
            ["", "# bob is next", &*format!("bob:{SECRET}")]
        );
        assert_eq!(format!("{}\n", lines[5]), created);
        assert_eq!(mode(&path), 0o600);

        let p = Passwords::load(&path).expect("loads");
        assert!(p.verify("alice", b"pw2"));

        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir.0).expect("dir").collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn delete_user_keeps_other_lines_mode_and_symlinks() {
        let dir = TempDir::new("delete");
        let path = dir.path("passwd");
        let text = format!("# c\nalice:{SECRET}\nbob:{SECRET}\n# end\n");
        fs::write(&path, &text).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let link = dir.path("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");

        assert!(!delete_user(&link, "carol").expect("absent"));
        assert_eq!(fs::read_to_string(&path).expect("read"), text);

        assert!(delete_user(&link, "alice").expect("deleted"));
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("# c\nbob:{SECRET}\n# end\n")
        );
        assert!(fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink());
        assert_eq!(mode(&path), 0o640);

        let e = delete_user(dir.path("none"), "bob").expect_err("missing file");
        assert!(
            e.to_string().starts_with("cannot read password file "),
            "{e}"
        );
    }

    #[test]
    fn a_broken_file_is_not_rewritten() {
        let dir = TempDir::new("broken");
        let path = dir.path("passwd");
        let text = format!("alice:{SECRET}\nbob\n");
        fs::write(&path, &text).expect("write");
        let e = set_password(&path, "carol", b"pw").expect_err("broken");
        assert_eq!(
            e.to_string(),
            format!("{}:2: expected 'user:hash', found no ':'", path.display())
        );
        let e = delete_user(&path, "alice").expect_err("broken");
        assert!(
            e.to_string()
                .ends_with(":1: expected 'user:hash', found no ':'"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&path).expect("read"), text);
        // The broken line of the user being set is replaced, though.
        fs::write(&path, format!("alice:{SECRET}\nbob:oops\n")).expect("write");
        assert!(delete_user(&path, "bob").expect("fixed"));
    }

    #[test]
    fn passwd_adds_changes_deletes_and_refuses() {
        let dir = TempDir::new("passwd");
        let path = dir.path("passwd");
        let given = |pw: &[u8]| PasswordInput::Given(pw.to_vec());
        let msg = passwd(&path, "dave", false, given(b"pw")).expect("add");
        assert_eq!(msg, format!("added user \"dave\" to {}", path.display()));
        assert_eq!(mode(&path), 0o600);
        fs::write(
            &path,
            format!("{}eve:{SECRET}\n", fs::read_to_string(&path).expect("r")),
        )
        .expect("write");
        let msg = passwd(&path, "eve", false, given(b"pw2")).expect("change");
        assert_eq!(
            msg,
            format!("changed the password of \"eve\" in {}", path.display())
        );
        let msg = passwd(&path, "dave", true, PasswordInput::Stdin).expect("delete");
        assert_eq!(
            msg,
            format!("deleted user \"dave\" from {}", path.display())
        );
        assert_eq!(Passwords::load(&path).expect("loads").len(), 1);

        let err = |user: &str, delete, pw: &[u8]| {
            passwd(&path, user, delete, given(pw))
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(
            err("dave", true, b""),
            format!("no user \"dave\" in {}", path.display())
        );
        assert_eq!(err("frank", false, b""), "the password is empty");
        assert_eq!(
            err("frank", false, &[b'x'; 65_536]),
            "the password is longer than 65535 bytes"
        );
        assert_eq!(
            err("a:b", false, b"pw"),
            "invalid user name: user name contains ':'"
        );
        assert_eq!(
            err("a\tb", false, b"pw"),
            "invalid user name: user name contains a control character"
        );
        assert_eq!(
            err(&"a".repeat(65_536), false, b"pw"),
            "invalid user name: user name is longer than 65535 bytes"
        );
    }

    #[test]
    fn reads_one_line_without_its_line_end() {
        let read = |input: &[u8]| read_line(&mut &input[..]).expect("read");
        assert_eq!(read(b"pw\n"), b"pw");
        assert_eq!(read(b"pw\r\n"), b"pw");
        assert_eq!(read(b"pw"), b"pw");
        assert_eq!(read(b"p w\nmore\n"), b"p w");
        assert_eq!(read(b" pw \n"), b" pw ");
        assert_eq!(read(b"\n"), b"");
        assert_eq!(read(b""), b"");
        assert_eq!(read(&[b'x'; 100_000]).len(), 65_538);
    }
}
