//! Running a scenario: as one process (executors + hub), as a worker of a
//! `--processes` parent (executors + a relay speaking a line protocol on
//! stdin/stdout), or as that parent (worker processes + hub).
//!
//! Worker → parent, one line each on stdout:
//! `B <n> <connected>` (barrier reached), `T <tick json>` (a second),
//! `D` (done; the result is in the `--worker-json` file).
//! Parent → worker on stdin: `R <n> <value>` (barrier released), `A` (abort).
//! A worker whose stdin closes aborts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Proc, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};

use crate::addr::parse_cpu_list;
use crate::cli::{parse_share, Common};
use crate::hub::{Hub, Releaser};
use crate::plan::{RunConfig, Scenario};
use crate::report::{self, Report};
use crate::runner::{run_core, Control, CoreSpec};
use crate::tick::{MemberEvent, Part, TickData};

/// Where each executor runs.
fn placements(c: &Common) -> anyhow::Result<Vec<Placement>> {
    let allowed = vmqtt_os::allowed_cpus().context("reading the CPU affinity mask")?;
    if c.no_pin {
        return Ok((0..c.cores.max(1)).map(|_| Placement::Unbound).collect());
    }
    let cpus = match &c.cpus {
        Some(list) => {
            let cpus = parse_cpu_list(list).map_err(anyhow::Error::msg)?;
            if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
                bail!("--cpus: CPU {bad} is not in this process's affinity mask {allowed:?}");
            }
            cpus
        }
        None => {
            if c.cores == 0 || c.cores > allowed.len() {
                bail!(
                    "--cores {} but this process may run on {} CPU(s) {:?}",
                    c.cores,
                    allowed.len(),
                    allowed
                );
            }
            allowed[..c.cores].to_vec()
        }
    };
    Ok(cpus.into_iter().map(Placement::Fixed).collect())
}

/// Number of executors per process.
pub fn executor_count(c: &Common) -> anyhow::Result<usize> {
    Ok(placements(c)?.len())
}

/// Warns when the open-file limit is below what this process needs.
fn check_files(cfg: &RunConfig) {
    match vmqtt_os::raise_nofile_limit() {
        Ok((soft, hard)) => {
            let mine = cfg.total_connections().div_ceil(cfg.share.1 as u64) + 64;
            if mine > soft {
                eprintln!(
                    "warning: this process needs ~{mine} descriptors but may open {soft} \
                     (hard limit {hard}); use --processes to spread the connections"
                );
            }
        }
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
}

/// Starts the executors of this process.
fn start_executors(
    cfg: &Arc<RunConfig>,
    common: &Common,
    control: &Arc<Control>,
    tx: &mpsc::Sender<MemberEvent>,
) -> anyhow::Result<Vec<glommio::ExecutorJoinHandle<()>>> {
    let mut io_memory = common.io_memory.max(64 * 1024);
    if let Ok(Some(memlock)) = vmqtt_os::memlock_limit() {
        let fit = (memlock / 4 / cfg.cores.max(1) as u64) as usize;
        io_memory = io_memory.min(fit.max(64 * 1024));
    }
    let mut handles = Vec::new();
    for (core, placement) in placements(common)?.into_iter().enumerate() {
        let spec = CoreSpec {
            core,
            cfg: cfg.clone(),
            control: control.clone(),
            events: tx.clone(),
        };
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("loadtest-{core}"))
            .io_memory(io_memory)
            .preempt_timer(Duration::from_micros(common.preempt_us.max(50)))
            .spawn(move || run_core(spec))
            .map_err(|e| anyhow::anyhow!("starting executor {core}: {e}"))?;
        handles.push(h);
    }
    Ok(handles)
}

/// The longest a run may take.
fn max_run(cfg: &RunConfig, common: &Common) -> Duration {
    if let Some(s) = common.max_time {
        return Duration::from_secs_f64(s.max(1.0));
    }
    let conns = cfg.total_connections() as f64;
    let connect = 30.0 + conns / 500.0 + 2.0 * cfg.connect_timeout.as_secs_f64();
    let run = match &cfg.scenario {
        Scenario::Conn(c) => {
            cfg.duration + c.steps.len() as f64 * (c.settle_ms as f64 / 1000.0 + 5.0)
        }
        Scenario::PubSub(p) => {
            let body = if p.count.is_some() {
                600.0
            } else {
                cfg.duration
            };
            p.warmup + body + p.drain + 10.0
        }
    };
    Duration::from_secs_f64(connect + run + 30.0)
}

struct LocalRelease(Arc<Control>);

impl Releaser for LocalRelease {
    fn release(&mut self, n: u32, value: u64) {
        self.0.release(n, value);
    }
    fn abort(&mut self) {
        self.0.abort();
    }
}

/// Writes the outputs of a finished run.
pub fn output(r: &Report, json: Option<&Path>, plot: Option<&Path>) -> anyhow::Result<()> {
    print!("{}", report::summary(r));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(r)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("  {:<28} {}", "json", path.display());
    }
    if let Some(path) = plot {
        std::fs::write(path, crate::plot::svg(r))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  {:<28} {}", "plot", path.display());
    }
    Ok(())
}

/// Runs a scenario in this process (`share`: this process's part of the
/// connections).
pub fn run_standalone(
    make: &dyn Fn((usize, usize), usize) -> Result<RunConfig, String>,
    common: &Common,
    config_json: serde_json::Value,
) -> anyhow::Result<Report> {
    let share = match &common.share {
        Some(s) => parse_share(s).map_err(anyhow::Error::msg)?,
        None => (0, 1),
    };
    let cores = executor_count(common)?;
    let cfg = Arc::new(make(share, cores).map_err(anyhow::Error::msg)?);
    check_files(&cfg);
    let control = Arc::new(Control::default());
    let (tx, rx) = mpsc::channel();
    let handles = start_executors(&cfg, common, &control, &tx)?;
    drop(tx);
    let hub = Hub::new(
        cfg.clone(),
        handles.len(),
        common.broker_pid,
        common.quiet,
        max_run(&cfg, common),
    )
    .watch(control.clone());
    let mut rel = LocalRelease(control.clone());
    let report = hub.run(
        &rx,
        &mut rel,
        config_json,
        common.label.clone(),
        common.raw_tracking,
    );
    control.abort();
    for h in handles {
        let _ = h.join();
    }
    Ok(report)
}

/// Runs as worker `K/N` of a parent: executors plus the line protocol.
pub fn run_worker(
    make: &dyn Fn((usize, usize), usize) -> Result<RunConfig, String>,
    common: &Common,
    spec: &str,
) -> anyhow::Result<()> {
    let share = parse_share(spec).map_err(anyhow::Error::msg)?;
    let json = common
        .worker_json
        .clone()
        .context("--worker needs --worker-json")?;
    let cores = executor_count(common)?;
    let cfg = Arc::new(make(share, cores).map_err(anyhow::Error::msg)?);
    check_files(&cfg);
    let control = Arc::new(Control::default());
    {
        let control = control.clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                let mut f = line.split_whitespace();
                match (f.next(), f.next(), f.next()) {
                    (Some("R"), Some(n), Some(v)) => {
                        if let (Ok(n), Ok(v)) = (n.parse(), v.parse()) {
                            control.release(n, v);
                        }
                    }
                    (Some("A"), _, _) => control.abort(),
                    _ => {}
                }
            }
            // The parent is gone: stop.
            control.abort();
        });
    }
    let (tx, rx) = mpsc::channel();
    let handles = start_executors(&cfg, common, &control, &tx)?;
    drop(tx);
    let members = handles.len();
    let mut out = std::io::stdout();
    let mut barriers: BTreeMap<u32, (usize, u64)> = BTreeMap::new();
    let mut ticks: BTreeMap<u32, (usize, TickData)> = BTreeMap::new();
    let mut part = Part::default();
    let mut done = 0;
    while done < members {
        let Ok(ev) = rx.recv() else { break };
        match ev {
            MemberEvent::Barrier { n, connected, .. } => {
                let e = barriers.entry(n).or_insert((0, 0));
                e.0 += 1;
                e.1 += connected;
                if e.0 == members {
                    writeln!(out, "B {n} {}", e.1)?;
                    out.flush()?;
                }
            }
            MemberEvent::Tick { data, .. } => {
                let t = data.t;
                let e = ticks.entry(t).or_insert_with(|| {
                    (
                        0,
                        TickData {
                            t,
                            ..TickData::default()
                        },
                    )
                });
                e.0 += 1;
                e.1.add(&data);
                if e.0 == members {
                    if let Some((_, d)) = ticks.remove(&t) {
                        writeln!(out, "T {}", serde_json::to_string(&d)?)?;
                        out.flush()?;
                    }
                }
            }
            MemberEvent::Done { part: p, .. } => {
                part.add(&p);
                done += 1;
            }
            MemberEvent::Failed { .. } => {}
        }
    }
    for h in handles {
        let _ = h.join();
    }
    std::fs::write(&json, serde_json::to_string(&part)?)
        .with_context(|| format!("writing {}", json.display()))?;
    writeln!(out, "D")?;
    out.flush()?;
    Ok(())
}

struct ParentRelease {
    stdins: Vec<Option<ChildStdin>>,
}

impl ParentRelease {
    fn send(&mut self, line: &str) {
        for s in self.stdins.iter_mut() {
            if let Some(w) = s {
                if writeln!(w, "{line}").and_then(|_| w.flush()).is_err() {
                    *s = None;
                }
            }
        }
    }
}

impl Releaser for ParentRelease {
    fn release(&mut self, n: u32, value: u64) {
        self.send(&format!("R {n} {value}"));
    }
    fn abort(&mut self) {
        self.send("A");
    }
}

/// Runs as the parent of `--processes K` workers.
pub fn run_parent(
    make: &dyn Fn((usize, usize), usize) -> Result<RunConfig, String>,
    common: &Common,
    config_json: serde_json::Value,
) -> anyhow::Result<Report> {
    let k = common.processes;
    let cores = executor_count(common)?;
    let cfg = Arc::new(make((0, k), cores).map_err(anyhow::Error::msg)?);
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = std::env::temp_dir().join(format!("vmqtt-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let (tx, rx) = mpsc::channel();
    let mut children: Vec<Child> = Vec::new();
    let mut stdins = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for i in 0..k {
        let file = dir.join(format!("worker-{i}.json"));
        let mut cmd = Proc::new(&exe);
        cmd.args(&args)
            .arg("--worker")
            .arg(format!("{i}/{k}"))
            .arg("--worker-json")
            .arg(&file)
            .arg("--quiet")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if common.client_prefix.is_none() {
            cmd.arg("--client-prefix").arg(&cfg.client_prefix);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting worker {i}"))?;
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        let file2 = file.clone();
        std::thread::spawn(move || relay_worker(i, stdout, &file2, &tx));
        children.push(child);
        files.push(file);
    }
    drop(tx);
    let hub = Hub::new(
        cfg.clone(),
        k,
        common.broker_pid,
        common.quiet,
        max_run(&cfg, common),
    );
    let mut rel = ParentRelease { stdins };
    let report = hub.run(
        &rx,
        &mut rel,
        config_json,
        common.label.clone(),
        common.raw_tracking,
    );
    rel.abort();
    drop(rel);
    let deadline = Instant::now() + Duration::from_secs(20);
    for mut c in children {
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(report)
}

/// Reads one worker's stdout and turns its lines into hub events.
fn relay_worker(
    member: usize,
    stdout: std::process::ChildStdout,
    file: &Path,
    tx: &mpsc::Sender<MemberEvent>,
) {
    let mut finished = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let ev = match kind {
            "B" => {
                let mut f = rest.split_whitespace();
                match (
                    f.next().and_then(|n| n.parse().ok()),
                    f.next().and_then(|c| c.parse().ok()),
                ) {
                    (Some(n), Some(connected)) => MemberEvent::Barrier {
                        member,
                        n,
                        connected,
                    },
                    _ => continue,
                }
            }
            "T" => match serde_json::from_str::<TickData>(rest) {
                Ok(d) => MemberEvent::Tick {
                    member,
                    data: Box::new(d),
                },
                Err(e) => MemberEvent::Failed {
                    member,
                    error: format!("bad tick line: {e}"),
                },
            },
            "D" => {
                finished = true;
                match std::fs::read_to_string(file)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str::<Part>(&t).map_err(|e| e.to_string()))
                {
                    Ok(part) => MemberEvent::Done {
                        member,
                        part: Box::new(part),
                    },
                    Err(e) => MemberEvent::Failed {
                        member,
                        error: format!("reading its result {}: {e}", file.display()),
                    },
                }
            }
            _ => continue,
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
    if !finished {
        let _ = tx.send(MemberEvent::Failed {
            member,
            error: "exited without a result".into(),
        });
    }
}
