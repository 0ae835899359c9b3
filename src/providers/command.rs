//! Command elevation provider: applies and revokes a grant by running a program with an argument
//! vector — never through a shell — for sites whose elevation tooling is a script or a CLI.
//!
//! Each argument is a minijinja template rendered on its own (strict: an unknown name is an
//! error, not an empty string), so a ticket field can never split into several arguments or
//! smuggle shell syntax. The program itself is a literal path, never a template, so ticket data
//! cannot choose what runs. The call's JSON document goes to the program's stdin; its environment
//! is cleared except `PATH` and three `JITBRIDGE_*` variables, so none of the daemon's secrets
//! reach the script. A run that outlives its timeout is killed.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStderr, Command};

use super::{ElevationProvider, ProviderAction, ProviderCall, ProviderError, call_for};
use crate::config::Problem;

/// Time a run may take unless the provider sets `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest `timeout` that may be configured: a grant waits on its provider, and a run that hangs
/// longer than this is not going to finish.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Most argv elements per command.
pub const MAX_ARGS: usize = 64;

/// Longest template per argv element, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 4096;

/// How much of stderr is kept (the end of it: that is where the reason usually is).
const STDERR_KEEP_BYTES: usize = 4096;

/// How many characters of stderr go into an error message.
const STDERR_TAIL_CHARS: usize = 300;

/// How long to keep reading stderr after the program exited; a background process it left
/// behind may hold the pipe open forever.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// The `[providers.<name>]` table of a `kind = "command"` provider (the `kind` tag itself is
/// consumed by the config loader).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandProviderConfig {
    /// argv that applies a grant: a literal program path, then argument templates.
    pub grant: Vec<String>,
    /// argv that revokes a grant, same form.
    pub revoke: Vec<String>,
    /// How long a run may take (`"30s"`); default 30 s.
    pub timeout: Option<String>,
}

/// One compiled command: where the program is and how to render its arguments.
#[derive(Debug)]
struct Argv {
    /// The program as written in the file, for messages.
    shown: String,
    /// The program, resolved against the base directory.
    program: PathBuf,
    /// Names of the argument templates in the provider's environment, in order.
    templates: Vec<String>,
}

/// Elevation through a local program. See the module docs for the guarantees it gives.
#[derive(Debug)]
pub struct CommandProvider {
    name: String,
    grant: Argv,
    revoke: Argv,
    timeout: Duration,
    base_dir: PathBuf,
    env: Environment<'static>,
}

impl CommandProvider {
    /// Compiles `cfg` for the provider `name`. Relative program paths (and the working directory
    /// of every run) resolve against `base_dir`, the directory of the config `file`. Bad
    /// templates, unknown names in them and bad timeouts are reported as [`Problem`]s at
    /// `providers.<name>.*`, all at once.
    pub fn from_config(
        name: &str,
        cfg: &CommandProviderConfig,
        base_dir: &Path,
        file: &Path,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let key = |k: &str| format!("providers.{name}.{k}");

        let timeout = match cfg.timeout.as_deref() {
            None => Some(DEFAULT_TIMEOUT),
            Some(text) => match crate::config::parse_duration(text) {
                Ok(d) => match Duration::try_from(d) {
                    Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Some(d),
                    _ => {
                        problems.push(Problem::new(
                            file,
                            key("timeout"),
                            format!("{text:?} must be more than 0s and at most 10m"),
                        ));
                        None
                    }
                },
                Err(why) => {
                    problems.push(Problem::new(file, key("timeout"), why));
                    None
                }
            },
        };

        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Arguments are not HTML: never escape.
        env.set_auto_escape_callback(|_| AutoEscape::None);

        let grant = compile(
            &mut env,
            "grant",
            &cfg.grant,
            base_dir,
            file,
            &key,
            &mut problems,
        );
        let revoke = compile(
            &mut env,
            "revoke",
            &cfg.revoke,
            base_dir,
            file,
            &key,
            &mut problems,
        );

        // Render every template once against an example call so unknown names (`grant.subjekt`)
        // are configuration errors now rather than failed grants later.
        let example = call_for(&example_grant(), ProviderAction::Apply);
        for argv in [&grant, &revoke].into_iter().flatten() {
            for template in &argv.templates {
                if let Err(e) = render(&env, template, &example) {
                    problems.push(Problem::new(file, key(template), e));
                }
            }
        }

        match (grant, revoke, timeout) {
            (Some(grant), Some(revoke), Some(timeout)) if problems.is_empty() => Ok(Self {
                name: name.to_owned(),
                grant,
                revoke,
                timeout,
                base_dir: base_dir.to_path_buf(),
                env,
            }),
            _ => Err(problems),
        }
    }

    /// Runs the command for `action` with `call`.
    async fn run(&self, action: ProviderAction, call: &ProviderCall) -> Result<(), ProviderError> {
        if call.action != action {
            return Err(ProviderError::Refused(format!(
                "{}: a {:?} call was passed to {:?}",
                self.name, call.action, action
            )));
        }
        let argv = match action {
            ProviderAction::Apply => &self.grant,
            ProviderAction::Revoke => &self.revoke,
        };
        let args = argv
            .templates
            .iter()
            .map(|t| {
                render(&self.env, t, call)
                    .map_err(|e| ProviderError::Refused(format!("{}: {t}: {e}", self.name)))
            })
            .collect::<Result<Vec<String>, _>>()?;
        let stdin_body = serde_json::to_vec(&call.body).map_err(|e| {
            ProviderError::Refused(format!("{}: cannot encode the call body: {e}", self.name))
        })?;
        let grant_id = call
            .body
            .pointer("/grant/id")
            .and_then(|v| v.as_str())
            .unwrap_or_default();

        let mut command = Command::new(&argv.program);
        command
            .args(&args)
            .env_clear()
            .env("JITBRIDGE_ACTION", action_name(action))
            .env("JITBRIDGE_GRANT_ID", grant_id)
            .env("JITBRIDGE_WEBHOOK_ID", &call.webhook_id)
            .current_dir(&self.base_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }

        let mut child = command.spawn().map_err(|e| {
            ProviderError::Unreachable(format!("{}: cannot start {}: {e}", self.name, argv.shown))
        })?;
        let stdin = child.stdin.take();
        let stderr = tokio::spawn(read_tail(child.stderr.take()));
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A program that does not read its input closes the pipe: not our failure.
                let _ = stdin.write_all(&stdin_body).await;
                let _ = stdin.shutdown().await;
            }
        };

        let waited = tokio::time::timeout(self.timeout, async {
            let ((), status) = tokio::join!(feed, child.wait());
            status
        })
        .await;

        let status = match waited {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                stderr.abort();
                return Err(ProviderError::Unreachable(format!(
                    "{}: waiting for {}: {e}",
                    self.name, argv.shown
                )));
            }
            Err(_) => {
                // Kill and reap; `kill_on_drop` covers the case where even this fails.
                let _ = child.kill().await;
                stderr.abort();
                return Err(ProviderError::Unreachable(format!(
                    "{}: {} did not finish within {}s and was killed",
                    self.name,
                    argv.shown,
                    self.timeout.as_secs_f64()
                )));
            }
        };

        if status.success() {
            stderr.abort();
            return Ok(());
        }
        let tail = match tokio::time::timeout(STDERR_GRACE, stderr).await {
            Ok(Ok(bytes)) => tail_text(&bytes),
            _ => String::new(),
        };
        Err(ProviderError::Refused(format!(
            "{}: {} {}{}",
            self.name,
            argv.shown,
            describe(status),
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        )))
    }
}

#[async_trait]
impl ElevationProvider for CommandProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, call: &ProviderCall) -> Result<(), ProviderError> {
        self.run(ProviderAction::Apply, call).await
    }

    async fn revoke(&self, call: &ProviderCall) -> Result<(), ProviderError> {
        self.run(ProviderAction::Revoke, call).await
    }
}

/// `apply` / `revoke`, for `JITBRIDGE_ACTION`.
fn action_name(action: ProviderAction) -> &'static str {
    match action {
        ProviderAction::Apply => "apply",
        ProviderAction::Revoke => "revoke",
    }
}

/// Checks and compiles one argv (`which` is `grant` or `revoke`) into `env`. `None` when it has
/// problems (pushed onto `problems`).
fn compile(
    env: &mut Environment<'static>,
    which: &str,
    argv: &[String],
    base_dir: &Path,
    file: &Path,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> Option<Argv> {
    let before = problems.len();
    let Some((program, args)) = argv.split_first() else {
        problems.push(Problem::new(
            file,
            key(which),
            "must name a program, e.g. [\"scripts/grant.sh\", \"{{ grant.subject }}\"]",
        ));
        return None;
    };
    if argv.len() > MAX_ARGS {
        problems.push(Problem::new(
            file,
            key(which),
            format!(
                "has {} elements; at most {MAX_ARGS} are accepted",
                argv.len()
            ),
        ));
    }
    let program = program.trim();
    if program.is_empty() {
        problems.push(Problem::new(
            file,
            key(&format!("{which}[0]")),
            "the program path is empty",
        ));
    } else if program.contains("{{") || program.contains("{%") || program.contains("{#") {
        problems.push(Problem::new(
            file,
            key(&format!("{which}[0]")),
            "the program must be a literal path, not a template (ticket data must not choose what runs)",
        ));
    }
    let mut templates = Vec::with_capacity(args.len());
    for (i, source) in args.iter().enumerate().take(MAX_ARGS) {
        let name = format!("{which}[{}]", i + 1);
        if source.len() > MAX_TEMPLATE_LEN {
            problems.push(Problem::new(
                file,
                key(&name),
                format!("is longer than {MAX_TEMPLATE_LEN} bytes"),
            ));
            continue;
        }
        if let Err(e) = env.add_template_owned(name.clone(), source.clone()) {
            problems.push(Problem::new(
                file,
                key(&name),
                format!("is not a valid template: {e}"),
            ));
            continue;
        }
        templates.push(name);
    }
    if problems.len() > before {
        return None;
    }
    let path = Path::new(program);
    let resolved = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    Some(Argv {
        shown: program.to_owned(),
        program: resolved,
        templates,
    })
}

/// Renders the argument template `name` with `grant` = the call's `grant` object.
fn render(env: &Environment<'static>, name: &str, call: &ProviderCall) -> Result<String, String> {
    let template = env.get_template(name).map_err(|e| e.to_string())?;
    let grant = call
        .body
        .get("grant")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    template
        .render(minijinja::context! { grant => grant })
        .map_err(|e| format!("cannot render: {e}"))
}

/// Keeps the last [`STDERR_KEEP_BYTES`] of a child's stderr, draining all of it so the child
/// never blocks on a full pipe.
async fn read_tail(stderr: Option<ChildStderr>) -> Vec<u8> {
    let Some(mut stderr) = stderr else {
        return Vec::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(buf.get(..n).unwrap_or_default());
                if kept.len() > STDERR_KEEP_BYTES {
                    let excess = kept.len() - STDERR_KEEP_BYTES;
                    kept.drain(..excess);
                }
            }
        }
    }
    kept
}

/// The last [`STDERR_TAIL_CHARS`] characters of stderr on one line, control characters removed,
/// so it can go into a ticket comment or a log line safely.
fn tail_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let count = cleaned.chars().count();
    if count <= STDERR_TAIL_CHARS {
        cleaned
    } else {
        let tail: String = cleaned.chars().skip(count - STDERR_TAIL_CHARS).collect();
        format!("…{tail}")
    }
}

/// "exited with code 3" / "was killed by signal: 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => format!("ended abnormally ({status})"),
    }
}

/// A grant with every field set, used to check templates at construction time.
pub(crate) fn example_grant() -> crate::grants::Grant {
    use jiff::{SignedDuration, Timestamp};

    use crate::grants::{Grant, GrantState};
    use crate::ticket::TicketRef;

    let at = Timestamp::UNIX_EPOCH;
    Grant {
        id: uuid::Uuid::nil(),
        ticket: TicketRef {
            connector: "example".into(),
            id: "10001".into(),
            key: "IT-1".into(),
            url: Some("https://example.invalid/browse/IT-1".into()),
        },
        mapping: "example".into(),
        state: GrantState::Approved,
        subject: "user@example.com".into(),
        target: "WS-0001".into(),
        scope: "local-admin".into(),
        provider: "example".into(),
        duration: SignedDuration::from_secs(3600),
        requester: None,
        approvers: Vec::new(),
        requested_at: at,
        approved_at: Some(at),
        starts_at: Some(at),
        expires_at: Some(at),
        ended_at: None,
        revoke_cause: None,
        reason: None,
        last_event_at: at,
        context: serde_json::Value::Null,
        version: 0,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn grant() -> crate::grants::Grant {
        let mut g = example_grant();
        g.id = uuid::Uuid::now_v7();
        g.subject = "alice@example.com".into();
        g.target = "WS-0042".into();
        g.scope = "local-admin".into();
        g.ticket.key = "IT-42".into();
        g
    }

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn provider(
        dir: &Path,
        grant: &[&str],
        revoke: &[&str],
        timeout: Option<&str>,
    ) -> Result<CommandProvider, Vec<Problem>> {
        let cfg = CommandProviderConfig {
            grant: grant.iter().map(|s| s.to_string()).collect(),
            revoke: revoke.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.map(str::to_owned),
        };
        CommandProvider::from_config("script", &cfg, dir, &dir.join("jitbridge.toml"))
    }

    const RECORD: &str = r#"printf '%s\n' "$@" > args.txt
cat > stdin.json
env > env.txt"#;

    /// Runs a freshly written executable directly (not through `/bin/sh`) to prove relative
    /// program paths resolve against the base directory. The other tests go through `/bin/sh`,
    /// which keeps parallel tests clear of `ETXTBSY` on just-written executables.
    #[tokio::test]
    async fn grant_runs_the_program_with_rendered_argv_and_the_call_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        script(&dir.path().join("scripts"), "grant.sh", RECORD);
        let p = provider(
            dir.path(),
            &[
                "scripts/grant.sh",
                "{{ grant.subject }}",
                "{{ grant.target }}",
                "{{ grant.scope }}",
                "--ticket={{ grant.ticket.key }}",
                "{{ grant.id }}",
            ],
            &["scripts/grant.sh"],
            None,
        )
        .unwrap();
        let g = grant();
        let call = call_for(&g, ProviderAction::Apply);
        p.apply(&call).await.unwrap();

        let args = std::fs::read_to_string(dir.path().join("args.txt")).unwrap();
        let expected = format!(
            "alice@example.com\nWS-0042\nlocal-admin\n--ticket=IT-42\n{}\n",
            g.id
        );
        assert_eq!(args, expected);
        let stdin: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("stdin.json")).unwrap()).unwrap();
        assert_eq!(stdin, call.body);
    }

    #[tokio::test]
    async fn the_program_sees_only_path_and_the_jitbridge_variables() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "revoke.sh", RECORD);
        let p = provider(
            dir.path(),
            &["/bin/sh", "revoke.sh"],
            &["/bin/sh", "revoke.sh", "{{ grant.subject }}"],
            None,
        )
        .unwrap();
        let g = grant();
        let call = call_for(&g, ProviderAction::Revoke);
        p.revoke(&call).await.unwrap();

        let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
        let mut names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        names.sort_unstable();
        // PWD is set by the shell itself, not inherited.
        assert_eq!(
            names,
            [
                "JITBRIDGE_ACTION",
                "JITBRIDGE_GRANT_ID",
                "JITBRIDGE_WEBHOOK_ID",
                "PATH",
                "PWD"
            ]
        );
        assert!(env.contains("JITBRIDGE_ACTION=revoke\n"));
        assert!(env.contains(&format!("JITBRIDGE_GRANT_ID={}\n", g.id)));
        assert!(env.contains(&format!("JITBRIDGE_WEBHOOK_ID={}\n", call.webhook_id)));
        let args = std::fs::read_to_string(dir.path().join("args.txt")).unwrap();
        assert_eq!(args, "alice@example.com\n");
    }

    #[tokio::test]
    async fn ticket_data_stays_one_argument_and_is_not_interpreted_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "grant.sh", RECORD);
        let p = provider(
            dir.path(),
            &["/bin/sh", "grant.sh", "{{ grant.subject }}"],
            &["/bin/sh", "grant.sh"],
            None,
        )
        .unwrap();
        let mut g = grant();
        g.subject = "bob; touch pwned $(touch pwned2) <b>".into();
        p.apply(&call_for(&g, ProviderAction::Apply)).await.unwrap();
        let args = std::fs::read_to_string(dir.path().join("args.txt")).unwrap();
        assert_eq!(args, "bob; touch pwned $(touch pwned2) <b>\n");
        assert!(!dir.path().join("pwned").exists() && !dir.path().join("pwned2").exists());
    }

    #[tokio::test]
    async fn non_zero_exit_is_refused_with_the_code_and_the_end_of_stderr() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "grant.sh",
            "cat > /dev/null\necho 'starting' >&2\necho 'no such user: alice' >&2\nexit 3",
        );
        let p = provider(
            dir.path(),
            &["/bin/sh", "grant.sh"],
            &["/bin/sh", "grant.sh"],
            None,
        )
        .unwrap();
        let err = p
            .apply(&call_for(&grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        let ProviderError::Refused(msg) = err else {
            panic!("expected Refused, got {err:?}")
        };
        assert!(msg.contains("/bin/sh exited with code 3"), "{msg}");
        assert!(msg.ends_with("starting no such user: alice"), "{msg}");
    }

    #[tokio::test]
    async fn long_stderr_is_cut_to_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "grant.sh",
            "i=0; while [ $i -lt 2000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; echo LAST >&2; exit 1",
        );
        let p = provider(
            dir.path(),
            &["/bin/sh", "grant.sh"],
            &["/bin/sh", "grant.sh"],
            None,
        )
        .unwrap();
        let ProviderError::Refused(msg) = p
            .apply(&call_for(&grant(), ProviderAction::Apply))
            .await
            .unwrap_err()
        else {
            panic!("expected Refused")
        };
        assert!(msg.ends_with("LAST") && msg.len() < 500, "{msg}");
    }

    #[tokio::test]
    async fn a_program_that_does_not_read_stdin_still_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "grant.sh", "exit 0");
        let p = provider(
            dir.path(),
            &["/bin/sh", "grant.sh"],
            &["/bin/sh", "grant.sh"],
            None,
        )
        .unwrap();
        assert_eq!(
            p.apply(&call_for(&grant(), ProviderAction::Apply)).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_is_killed_and_reported_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "grant.sh", "exec sleep 30");
        let p = provider(
            dir.path(),
            &["/bin/sh", "grant.sh"],
            &["/bin/sh", "grant.sh"],
            Some("300ms"),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = p
            .apply(&call_for(&grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let ProviderError::Unreachable(msg) = err else {
            panic!("expected Unreachable, got {err:?}")
        };
        assert!(msg.contains("did not finish within 0.3s"), "{msg}");
    }

    #[tokio::test]
    async fn a_missing_program_is_unreachable_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(
            dir.path(),
            &["scripts/missing.sh"],
            &["scripts/missing.sh"],
            None,
        )
        .unwrap();
        let err = p
            .apply(&call_for(&grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        let ProviderError::Unreachable(msg) = err else {
            panic!("expected Unreachable, got {err:?}")
        };
        assert!(msg.contains("scripts/missing.sh"), "{msg}");
    }

    #[tokio::test]
    async fn a_call_for_the_other_action_is_refused_without_running_anything() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "grant.sh", RECORD);
        let p = provider(
            dir.path(),
            &["/bin/sh", "grant.sh"],
            &["/bin/sh", "grant.sh"],
            None,
        )
        .unwrap();
        let err = p
            .apply(&call_for(&grant(), ProviderAction::Revoke))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Refused(_)));
        assert!(!dir.path().join("args.txt").exists());
    }

    #[test]
    fn bad_templates_and_unknown_names_are_configuration_problems() {
        let dir = tempfile::tempdir().unwrap();
        let problems = provider(
            dir.path(),
            &["grant.sh", "{{ grant.subject", "{{ grant.subjekt }}"],
            &["revoke.sh", "{{ ticket.key }}"],
            None,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["providers.script.grant[1]", "providers.script.revoke[1]"]
        );
        assert!(
            problems
                .iter()
                .all(|p| p.file == dir.path().join("jitbridge.toml"))
        );
        // With the syntax error fixed, the unknown name is caught by the trial render.
        let problems = provider(
            dir.path(),
            &["grant.sh", "{{ grant.subjekt }}"],
            &["revoke.sh"],
            None,
        )
        .unwrap_err();
        assert_eq!(problems[0].key, "providers.script.grant[1]");
    }

    #[test]
    fn empty_argv_templated_programs_and_bad_timeouts_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let problems =
            provider(dir.path(), &[], &["{{ grant.scope }}.sh"], Some("forever")).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "providers.script.timeout",
                "providers.script.grant",
                "providers.script.revoke[0]"
            ]
        );
        let problems = provider(dir.path(), &["g.sh"], &["r.sh"], Some("1h")).unwrap_err();
        assert_eq!(problems[0].key, "providers.script.timeout");
    }

    #[test]
    fn unknown_keys_are_rejected_by_the_reader() {
        assert!(
            toml::from_str::<CommandProviderConfig>(
                "grant = [\"a\"]\nrevoke = [\"b\"]\nshell = true"
            )
            .is_err()
        );
        let cfg: CommandProviderConfig =
            toml::from_str("grant = [\"a\"]\nrevoke = [\"b\"]\ntimeout = \"5s\"").unwrap();
        assert_eq!(cfg.timeout.as_deref(), Some("5s"));
    }

    #[test]
    fn stderr_tail_is_one_clean_line() {
        assert_eq!(tail_text(b"a\x1b[31mred\r\n\tb\n"), "a [31mred b");
        let long = "x".repeat(1000);
        assert_eq!(
            tail_text(long.as_bytes()).chars().count(),
            STDERR_TAIL_CHARS + 1
        );
    }
}
