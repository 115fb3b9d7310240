//! The test harness: a controller and agents as real processes on loopback,
//! each in its own temp dir. [`Fleet`] owns every process it starts and kills
//! them in `Drop`, also when a test panics.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where cargo put the workspace's binaries (next to this test binary's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with 'cargo build --workspace --bins' \
         (the README's test command does)",
        path.display()
    );
    path
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr")
}

/// Polls `f` until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    wait_until(timeout, what, || child.try_wait().expect("try_wait"))
}

/// Sends SIGTERM to a process.
pub fn sigterm(child: &Child) {
    // The shell's builtin kill: no dependency on procps being installed.
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .expect("sh")
        .success();
    assert!(ok, "kill -TERM {} failed", child.id());
}

/// Starts `program SUBCOMMAND --config CONFIG`, appending its stderr to `log`.
fn spawn_logged(program: &str, subcommand: &str, config: &Path, log: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(bin(program))
        .args([subcommand, "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

/// The controller of a test fleet.
pub struct Controller {
    /// Its data dir.
    pub data_dir: PathBuf,
    /// controller.toml.
    pub config: PathBuf,
    /// gRPC address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// `sha256:` fingerprint of its CA.
    pub ca_fingerprint: String,
    /// The fleetctl.toml init wrote (admin).
    pub fleetctl_config: PathBuf,
    /// Log file of the running process.
    pub log: PathBuf,
    /// The running process.
    pub child: Option<Child>,
    /// RUST_LOG of the process ("info" unless a test wants every level).
    pub rust_log: String,
}

impl Controller {
    /// `fleet-controller init` in `root/controller`, then tunes controller.toml
    /// for tests (1 s heartbeats, plus `extra` lines replacing keys).
    pub fn init(root: &Path, extra: &[(&str, &str)]) -> Controller {
        Controller::init_with(root, &[], extra)
    }

    /// [`Controller::init`] with more arguments for `init` (`--etcd URL`).
    pub fn init_with(root: &Path, init_args: &[&str], extra: &[(&str, &str)]) -> Controller {
        Controller::made_by(root, "controller", &["init"], init_args, extra)
    }

    /// `fleet-controller join` in `root/<name>`: a controller of this one's
    /// fleet (on etcd, `init_args` naming it), from a copy of its ca.pem,
    /// ca.key and mac.key, with this one's `extra` keys. Not started.
    pub fn join(&self, root: &Path, name: &str, init_args: &[&str], extra: &[(&str, &str)]) -> Controller {
        let from = root.join(format!("{name}-from"));
        std::fs::create_dir_all(&from).expect("mkdir");
        for file in ["ca.pem", "ca.key", "mac.key"] {
            std::fs::copy(self.data_dir.join(file), from.join(file)).expect("copy the fleet's keys");
        }
        let from = from.display().to_string();
        let mut c = Controller::made_by(root, name, &["join", "--from", &from], init_args, extra);
        c.fleetctl_config = self.fleetctl_config.clone();
        assert_eq!(c.ca_fingerprint, self.ca_fingerprint, "one CA for the fleet");
        c
    }

    /// `fleet-controller <command>` making `root/<name>`, tuned for tests.
    fn made_by(root: &Path, name: &str, command: &[&str], init_args: &[&str], extra: &[(&str, &str)]) -> Controller {
        let data_dir = root.join(name);
        let (addr, metrics) = (free_addr(), free_addr());
        let out = Command::new(bin("fleet-controller"))
            .args(command)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--san", "127.0.0.1", "--san", "localhost"])
            .args(["--listen", &addr.to_string(), "--metrics-listen", &metrics.to_string()])
            .args(init_args)
            .output()
            .expect("run fleet-controller init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ca_fingerprint = stdout
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .expect("init prints the CA fingerprint")
            .to_string();
        let config = data_dir.join("controller.toml");
        let mut text = std::fs::read_to_string(&config).expect("read controller.toml");
        let mut overrides = vec![("heartbeat_interval", "\"1s\"")];
        overrides.extend(extra.iter().copied());
        // Top-level keys go before the first table (`[store]`, which init
        // writes for --etcd).
        let (mut top, tables) = match text.find("\n[") {
            Some(at) => (text[..=at].to_string(), text[at + 1..].to_string()),
            None => (text.clone(), String::new()),
        };
        for (key, value) in overrides {
            top = top
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")))
                .chain(std::iter::once(format!("{key} = {value}").as_str()))
                .collect::<Vec<_>>()
                .join("\n");
            top.push('\n');
        }
        text = top + &tables;
        std::fs::write(&config, text).expect("write controller.toml");
        Controller {
            fleetctl_config: data_dir.join("fleetctl.toml"),
            log: root.join(format!("{name}.log")),
            data_dir,
            config,
            addr,
            metrics,
            ca_fingerprint,
            child: None,
            rust_log: "info".into(),
        }
    }

    /// A second controller of the same fleet in `root/<name>`: a copy of
    /// this one's data dir (its CA and keys; the store must be shared, on
    /// etcd) on ports of its own. Not started.
    pub fn copy(&self, root: &Path, name: &str) -> Controller {
        let data_dir = root.join(name);
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&self.data_dir)
            .arg(&data_dir)
            .status()
            .expect("cp");
        assert!(cp.success(), "copy the data dir");
        let _ = std::fs::remove_file(data_dir.join("serve.lock"));
        let (addr, metrics) = (free_addr(), free_addr());
        let text = std::fs::read_to_string(&self.config)
            .expect("controller.toml")
            .replace(&self.data_dir.display().to_string(), &data_dir.display().to_string())
            .replace(&self.addr.to_string(), &addr.to_string())
            .replace(&self.metrics.to_string(), &metrics.to_string());
        let config = data_dir.join("controller.toml");
        std::fs::write(&config, text).expect("write controller.toml");
        Controller {
            log: root.join(format!("{name}.log")),
            fleetctl_config: self.fleetctl_config.clone(),
            ca_fingerprint: self.ca_fingerprint.clone(),
            rust_log: self.rust_log.clone(),
            child: None,
            data_dir,
            config,
            addr,
            metrics,
        }
    }

    /// Starts `serve` without waiting for it to serve (a follower waits
    /// for the fleet's serving lock).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "controller already running");
        let env = [("RUST_LOG".to_string(), self.rust_log.clone())];
        self.child = Some(spawn_logged("fleet-controller", "serve", &self.config, &self.log, &env));
    }

    /// Starts `serve` and waits for /healthz.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "controller already running");
        let env = [("RUST_LOG".to_string(), self.rust_log.clone())];
        let child = spawn_logged("fleet-controller", "serve", &self.config, &self.log, &env);
        self.child = Some(child);
        self.wait_healthy();
    }

    /// Starts `serve` with its open-file limit (soft and hard) at `nofile`,
    /// through util-linux's `prlimit`, which execs the controller (so the
    /// child is the controller itself), and waits for /healthz.
    pub fn start_with_nofile(&mut self, nofile: u64) {
        assert!(self.child.is_none(), "controller already running");
        let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| panic!("prlimit is missing: install util-linux (tests/deps.sh does) to run this test"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(prlimit)
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(bin("fleet-controller"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prlimit + fleet-controller");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let metrics = self.metrics;
        // Generous: on CI's two cores a start can wait behind other tests'
        // enrollments (the fleet-sim test signs 300 certificates).
        wait_until(Duration::from_secs(60), "controller /healthz", || {
            http_get(metrics, "/healthz").filter(|b| b.contains("ok")).map(|_| ())
        });
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL controller");
            c.wait().expect("reap controller");
        }
    }

    /// GET /metrics.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").expect("GET /metrics")
    }

    /// The admin's operator token, from the fleetctl.toml init wrote.
    pub fn admin_token(&self) -> String {
        let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&self.fleetctl_config).expect("fleetctl.toml"))
            .expect("fleetctl.toml is TOML");
        cfg["token"].as_str().expect("token in fleetctl.toml").to_string()
    }

    /// The controller's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A minimal HTTP/1.1 GET, returning the body of a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http_get_status(addr, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// A minimal HTTP/1.1 GET, returning the status code and the body; None when
/// nothing answered within a few seconds.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// One agent process with its own state dir.
pub struct Agent {
    /// Hostname it reports.
    pub name: String,
    /// Its directory (config, state, log).
    pub dir: PathBuf,
    /// agent.toml.
    pub config: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// The running process.
    pub child: Option<Child>,
    /// Extra environment (e.g. the session bus of a systemd sandbox).
    pub env: Vec<(String, String)>,
    /// Run the agent in the mount namespace of this process (a systemd
    /// sandbox), so that it sees the mounts the sandbox has.
    pub mount_namespace_of: Option<u32>,
}

impl Agent {
    /// Writes agent.toml for `controller_addr` in `root/<name>`.
    pub fn new(
        root: &Path,
        name: &str,
        controller_addr: &str,
        ca_fingerprint: &str,
        token: &str,
        labels: &[(&str, &str)],
    ) -> Agent {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("agent dir");
        let config = dir.join("agent.toml");
        let mut text = format!(
            "controller = \"{controller_addr}\"\nca_fingerprint = \"{ca_fingerprint}\"\njoin_token = \"{token}\"\n\
             state_dir = \"{}\"\nhostname = \"{name}\"\n",
            dir.join("state").display()
        );
        if !labels.is_empty() {
            text.push_str("[labels]\n");
            for (k, v) in labels {
                text.push_str(&format!("{k} = \"{v}\"\n"));
            }
        }
        std::fs::write(&config, text).expect("write agent.toml");
        Agent {
            name: name.into(),
            log: dir.join("agent.log"),
            dir,
            config,
            child: None,
            env: Vec::new(),
            mount_namespace_of: None,
        }
    }

    /// Starts the agent.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "agent {} already running", self.name);
        let child = match self.mount_namespace_of {
            None => spawn_logged("fleet-agent", "run", &self.config, &self.log, &self.env),
            Some(pid) => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("log file");
                Command::new("nsenter")
                    .args(["-t", &pid.to_string(), "-m", "--"])
                    .arg(bin("fleet-agent"))
                    .args(["run", "--config"])
                    .arg(&self.config)
                    .env("RUST_LOG", "info")
                    .envs(self.env.iter().map(|(k, v)| (k, v)))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("spawn nsenter + fleet-agent")
            }
        };
        self.child = Some(child);
    }

    /// Waits for the agent to exit by itself; returns its code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("agent running");
        let status = wait_exit(&mut child, timeout, &format!("agent {} to exit", self.name));
        status.code()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The host id it stored after enrolling.
    pub fn host_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("state/host.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["host_id"].as_str().map(String::from)
    }
}

/// A controller and its agents, all on loopback.
pub struct Fleet {
    /// Root temp dir; kept on failure by printing its path.
    pub root: tempfile::TempDir,
    /// The controller.
    pub controller: Controller,
    /// The agents.
    pub agents: Vec<Agent>,
    /// The `controller` agents added from now on are given (several
    /// controllers of one fleet); None: the controller's address.
    pub agent_controllers: Option<String>,
    /// Set by a test that printed the logs itself before failing, so that
    /// its panic message ends the output (CI shows the output's tail).
    pub logs_shown: bool,
}

impl Fleet {
    /// A running controller with no agents yet.
    pub fn controller_only(extra: &[(&str, &str)]) -> Fleet {
        Fleet::controller_only_logging(extra, "info")
    }

    /// A running controller logging at `rust_log`, with no agents yet.
    pub fn controller_only_logging(extra: &[(&str, &str)], rust_log: &str) -> Fleet {
        Fleet::controller_only_with(&[], extra, rust_log)
    }

    /// [`Fleet::controller_only_logging`] with more arguments for `init`.
    pub fn controller_only_with(init_args: &[&str], extra: &[(&str, &str)], rust_log: &str) -> Fleet {
        let root = tempfile::Builder::new().prefix("fleet-it-").tempdir().expect("tempdir");
        let mut controller = Controller::init_with(root.path(), init_args, extra);
        controller.rust_log = rust_log.into();
        controller.start();
        Fleet {
            root,
            controller,
            agents: Vec::new(),
            agent_controllers: None,
            logs_shown: false,
        }
    }

    /// A controller and `n` enrolled, connected agents (web-1 … web-n) enrolled
    /// with one token labelled env=test.
    pub fn start(n: usize) -> Fleet {
        let mut fleet = Fleet::controller_only(&[]);
        let token = fleet.token(&["--label", "env=test", "--allow-label", "az", "--uses", &n.to_string()]);
        for i in 1..=n {
            fleet.add_agent(&format!("web-{i}"), &token, &[("az", "zone-a")]);
        }
        fleet.wait_connected(n, Duration::from_secs(30));
        fleet
    }

    /// Adds and starts an agent.
    pub fn add_agent(&mut self, name: &str, token: &str, labels: &[(&str, &str)]) -> usize {
        self.add_agent_with(name, token, labels, None, &[])
    }

    /// Adds and starts an agent whose units run in `systemd` (a sandbox).
    pub fn add_agent_with(
        &mut self,
        name: &str,
        token: &str,
        labels: &[(&str, &str)],
        systemd: Option<&crate::sandbox::Sandbox>,
        env: &[(&str, String)],
    ) -> usize {
        let addr = self
            .agent_controllers
            .clone()
            .unwrap_or_else(|| self.controller.addr.to_string());
        let mut agent = Agent::new(
            self.root.path(),
            name,
            &addr,
            &self.controller.ca_fingerprint,
            token,
            labels,
        );
        if let Some(sd) = systemd {
            let mut text = std::fs::read_to_string(&agent.config).expect("agent.toml");
            // The table must come after the top-level keys and [labels].
            text.push_str("[systemd]\nbus = \"session\"\n");
            std::fs::write(&agent.config, text).expect("agent.toml");
            agent.env = sd.env();
        }
        agent.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        agent.start();
        self.agents.push(agent);
        self.agents.len() - 1
    }

    /// Writes `bytes` to `<root>/<version>.tar.gz` (tests read it back
    /// from there, e.g. access.rs) and pushes it as release `version` of
    /// `app`; fleetctl's output.
    pub fn push_release(&self, app: &str, version: &str, bytes: &[u8]) -> Output {
        let path = self.root.path().join(format!("{version}.tar.gz"));
        std::fs::write(&path, bytes).expect("write release");
        let path = path.to_str().expect("utf-8");
        self.fleetctl(&["release", "push", app, path, "--release", version])
    }

    /// Runs fleetctl as the admin.
    pub fn fleetctl(&self, args: &[&str]) -> Output {
        self.fleetctl_command(args).output().expect("run fleetctl")
    }

    /// The fleetctl command of the admin, not started: only this fleet's
    /// config counts (no FLEET_* from the environment), no stdin, output
    /// piped.
    pub fn fleetctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("fleetctl"));
        c.args(args)
            .env("FLEET_CONFIG", &self.controller.fleetctl_config)
            .env_remove("FLEET_CONTROLLER")
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_CA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs fleetctl as the admin against the controller at `addr` only.
    pub fn fleetctl_with_controller(&self, addr: &str, args: &[&str]) -> Output {
        self.fleetctl_command(args)
            .env("FLEET_CONTROLLER", addr)
            .output()
            .expect("run fleetctl")
    }

    /// Runs fleetctl as the admin with a deadline: `Err` says it did not
    /// finish within `timeout` (the process is killed), so a test of a
    /// controller that may hang fails instead of hanging too.
    pub fn fleetctl_within(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let child = self.fleetctl_command(args).spawn().expect("run fleetctl");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        // wait_with_output drains both pipes, so a large answer cannot stall the child.
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => Ok(out.expect("wait for fleetctl")),
            Err(_) => {
                let _ = Command::new("sh").args(["-c", &format!("kill -KILL {pid}")]).status();
                Err(format!("fleetctl {args:?} did not finish within {timeout:?}"))
            }
        }
    }

    /// Runs fleetctl, asserts success, and parses its JSON output.
    pub fn fleetctl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.fleetctl(&all);
        assert!(
            out.status.success(),
            "fleetctl {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fleetctl {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `fleetctl token create ARGS`, returning the secret token string.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create"];
        all.extend(args);
        let v = self.fleetctl_json(&all);
        v["secret"].as_str().expect("token secret in JSON").to_string()
    }

    /// `fleetctl hosts ls --output json`.
    pub fn hosts(&self) -> Vec<Value> {
        self.fleetctl_json(&["hosts", "ls"])
            .as_array()
            .expect("hosts array")
            .clone()
    }

    /// Waits until exactly `n` hosts are connected and have sent a heartbeat.
    pub fn wait_connected(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_until(
            timeout,
            &format!("{n} connected hosts with heartbeats\n{}", self.logs()),
            || {
                let hosts = self.hosts();
                let ready = hosts
                    .iter()
                    .filter(|h| h["status"] == "connected" && h["memory_total_bytes"].as_u64().unwrap_or(0) > 0)
                    .count();
                (ready == n).then_some(hosts)
            },
        )
    }

    /// Every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- controller log ---\n{}", tail(&self.controller.log_text(), 30));
        for a in &self.agents {
            s.push_str(&format!("--- agent {} log ---\n{}", a.name, tail(&a.log_text(), 15)));
        }
        s
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill9();
        }
        self.controller.kill9();
        if std::thread::panicking() && !self.logs_shown {
            eprintln!("{}", self.logs());
        }
    }
}
