//! Non-Rust clients: mosquitto_pub / mosquitto_sub (3.1.1 and 5) and
//! paho-mqtt 2.x for Python. Missing clients skip the test with a loud
//! message, unless `VMQTT_REQUIRE_EXTERNAL_CLIENTS` is set (CI), in which case
//! they fail it. `scripts/install-test-deps.sh` installs them.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::common::process::{
    line_within, lines_of, run_paho, skip_without_mosquitto_clients, sub_messages, wait_exit,
};
use crate::common::*;

/// mosquitto_sub and mosquitto_pub exchange QoS 1 messages across shards for
/// every pair of protocol versions (3.1.1 and 5), and a retained message.
#[test]
fn mosquitto_clients_exchange_across_shards() {
    let test = "mosquitto_clients_exchange_across_shards";
    if skip_without_mosquitto_clients(test) {
        return;
    }
    let b = Broker::start(test);
    let port = b.port().to_string();
    for (pv, sv) in [
        ("mqttv311", "mqttv311"),
        ("mqttv5", "mqttv5"),
        ("mqttv311", "mqttv5"),
        ("mqttv5", "mqttv311"),
    ] {
        let (pub_id, sub_id) = ids_on_different_shards(&format!("mosq-{pv}-{sv}"));
        let topic = format!("ext/{pv}/{sv}");
        let what = format!("mosquitto_sub -V {sv} <- mosquitto_pub -V {pv}");
        // stdbuf: line-buffered stdout, to see "received SUBACK" as it happens.
        let mut sub = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &port, "-i", &sub_id, "-t", &topic])
            .args(["-q", "1", "-C", "3", "-W", "10", "-V", sv, "-d"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto_sub");
        let lines = lines_of(&mut sub);
        // Wait until subscribed.
        if !line_within(&lines, "received SUBACK", WAIT) {
            panic!("{what}: mosquitto_sub got no SUBACK");
        }
        let mut publ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", &pub_id, "-t", &topic])
            .args(["-q", "1", "-V", pv, "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto_pub");
        {
            let mut stdin = publ.stdin.take().unwrap();
            stdin.write_all(b"msg-1\nmsg-2\nmsg-3\n").unwrap();
        }
        let st = wait_exit(&mut publ, "mosquitto_pub", WAIT * 2);
        assert!(st.success(), "{what}: mosquitto_pub exited with {st}");
        let st = wait_exit(&mut sub, "mosquitto_sub", WAIT * 2);
        let payloads = sub_messages(&lines);
        assert!(
            st.success(),
            "{what}: mosquitto_sub exited with {st}; payloads {payloads:?}"
        );
        assert_eq!(payloads, vec!["msg-1", "msg-2", "msg-3"], "{what}");
    }

    // Persistent session: subscribe and leave (-c, -E), messages published
    // meanwhile are fetched by the next connection with the same id.
    for v in ["mqttv311", "mqttv5"] {
        let (pub_id, sub_id) = ids_on_different_shards(&format!("mosq-offline-{v}"));
        let topic = format!("ext/offline/{v}");
        let session = ["-c", "-x", "60"];
        let session: &[&str] = if v == "mqttv5" {
            &session
        } else {
            &session[..1]
        };
        let st = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", &sub_id, "-t", &topic])
            .args(["-q", "1", "-E", "-V", v])
            .args(session)
            .status()
            .expect("mosquitto_sub -E");
        assert!(st.success(), "{v}: mosquitto_sub -E: {st}");
        for m in ["off-1", "off-2"] {
            let st = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-i", &pub_id, "-t", &topic])
                .args(["-q", "1", "-m", m, "-V", v])
                .status()
                .expect("mosquitto_pub");
            assert!(st.success());
        }
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", &sub_id, "-t", &topic])
            .args(["-q", "1", "-C", "2", "-W", "5", "-V", v])
            .args(session)
            .output()
            .expect("mosquitto_sub");
        assert!(
            out.status.success(),
            "{v}: queued messages not received: {out:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "off-1\noff-2\n",
            "{v}: queued messages"
        );
    }

    // Retained, with both versions.
    for v in ["mqttv311", "mqttv5"] {
        let topic = format!("ext/retained/{v}");
        let st = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                &topic,
                "-q",
                "1",
                "-r",
            ])
            .args(["-m", "kept", "-V", v])
            .status()
            .expect("mosquitto_pub");
        assert!(st.success());
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                &topic,
                "-C",
                "1",
                "-W",
                "5",
            ])
            .args(["-V", v, "-v"])
            .output()
            .expect("mosquitto_sub");
        assert!(out.status.success(), "{v}: retained not received: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{topic} kept")
        );
    }
}

/// paho-mqtt 2.x, MQTT 5: QoS 1/2, retained, will, properties.
#[test]
fn paho_python_v5() {
    run_paho(
        "paho_python_v5",
        "paho_e2e.py",
        ("--protocol", "v5"),
        "paho/v5",
    );
}

/// paho-mqtt 2.x, MQTT 3.1.1: QoS 1/2, retained, will.
#[test]
fn paho_python_v311() {
    run_paho(
        "paho_python_v311",
        "paho_e2e.py",
        ("--protocol", "v311"),
        "paho/v311",
    );
}
