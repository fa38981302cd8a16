//! Programs other than the broker under test: whether a client tool runs,
//! waiting for a child to exit, reading its output line by line, and the
//! paho-mqtt scripts in `shards/tests/python/`.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{ids_on_different_shards, skip_missing_external, Broker};

/// Whether `cmd` runs at all (`cmd --help` or similar exits, whatever its
/// status).
pub fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Waits for `child` to exit, up to `within`; kills it after and returns
/// `None`.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Waits for `child` to exit within `within`; kills it and fails otherwise.
pub fn wait_exit(child: &mut Child, what: &str, within: Duration) -> ExitStatus {
    exit_within(child, within).unwrap_or_else(|| panic!("{what} did not exit within {within:?}"))
}

/// Lines of a child's stdout, read on a thread.
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits up to `within` for a line containing `needle`: `false` if none
/// came.
pub fn line_within(lines: &mpsc::Receiver<String>, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// The lines printed so far by a `mosquitto_sub -d` that are not its `-d`
/// traces (`Client …`, `Subscribed …`): the messages.
pub fn sub_messages(lines: &mpsc::Receiver<String>) -> Vec<String> {
    lines
        .try_iter()
        .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"))
        .collect()
}

/// Whether `python3` can import paho-mqtt 2.x.
pub fn have_paho() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import sys, paho.mqtt; sys.exit(0 if paho.mqtt.__version__.startswith('2.') else 1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `shards/tests/python/<name>`.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
        .join(name)
}

/// Runs `python3 shards/tests/python/<script> --port P <option> <value>
/// --id-a A --id-b B --prefix <prefix>` against a new broker, A and B on
/// different shards; fails the test unless it exits 0 within 60 s. Skips
/// (or fails, in CI) without paho-mqtt 2.x.
pub fn run_paho(test: &str, script: &str, (option, value): (&str, &str), prefix: &str) {
    if skip_missing_external(test, "python3 with paho-mqtt 2.x", have_paho()) {
        return;
    }
    let b = Broker::start(test);
    let (a, c) = ids_on_different_shards(test);
    let path = python_script(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .args(["--port", &b.port().to_string(), option, value])
        .args(["--id-a", &a, "--id-b", &c, "--prefix", prefix])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn python3 {}: {e}", path.display()));
    let status = wait_exit(&mut child, script, Duration::from_secs(60));
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        status.success(),
        "{script} {option} {value} failed ({status}):\n{stdout}\n{stderr}"
    );
}

/// Publishes each of `payloads` as one QoS 1 MQTT 5 message to `topic`
/// with `mosquitto_pub -l` (one line each) as client `id`; asserts it
/// exited successfully within `within`.
pub fn mosquitto_pub_lines(
    port: u16,
    id: &str,
    topic: &str,
    payloads: &[String],
    within: Duration,
) {
    use std::io::Write as _;
    let mut publ = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-i", id, "-t", topic, "-q", "1", "-V", "mqttv5", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mosquitto_pub");
    {
        let mut stdin = publ.stdin.take().expect("mosquitto_pub's stdin");
        for p in payloads {
            writeln!(stdin, "{p}").expect("write to mosquitto_pub");
        }
    }
    let st = wait_exit(&mut publ, "mosquitto_pub", within);
    assert!(st.success(), "mosquitto_pub {id}: {st}");
}

/// `true` (after saying why, or failing when external clients are
/// required) if `mosquitto_pub`/`mosquitto_sub` are not installed: the
/// test is skipped.
pub fn skip_without_mosquitto_clients(test: &str) -> bool {
    let have = runs("mosquitto_pub", &["--help"]) && runs("mosquitto_sub", &["--help"]);
    skip_missing_external(
        test,
        "mosquitto_pub/mosquitto_sub (Debian: mosquitto-clients)",
        have,
    )
}
