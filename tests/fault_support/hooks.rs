//! Hooks: PATH shims that hold a chosen call, probe for a secret, and sit in front of the logging shims.

use super::*;

/// When a hooked call is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before the real tool runs (it has not run when the hold is reached).
    Before,
    /// The real tool runs in the background; the hold is reached at once.
    During,
    /// After the real tool finished (its exit code in `<hook>.rc`), before
    /// runnerctl sees the result.
    After,
}

#[derive(Debug, Clone)]
pub struct Hook {
    tool: String,
    words: Vec<String>,
    nth: u32,
    when: When,
    /// Shell run by the shim just before it holds (`Before` only).
    script: String,
}

/// A handle on one hook: did it fire, release it.
#[derive(Debug, Clone)]
pub struct HookHandle {
    dir: PathBuf,
    index: usize,
}

impl HookHandle {
    fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("hook{}.{suffix}", self.index))
    }
    pub fn fired(&self) -> bool {
        self.file("fired").exists()
    }
    /// Lets the held call go on (into the real tool, or back to runnerctl).
    pub fn release(&self) {
        fs::write(self.file("release"), "").expect("write release file");
    }
    /// The signals (`TERM`, `INT`, `HUP`) the shim got while it held the
    /// call, in order.
    pub fn signals(&self) -> Vec<String> {
        fs::read_to_string(self.file("signals"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    /// The real tool's exit code, for `During`/`After` hooks that finished.
    pub fn rc(&self) -> Option<i32> {
        fs::read_to_string(self.file("rc"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Shims first on PATH (before [`PathShims`]) that hold chosen calls and
/// probe every call. Each shim execs the next `tool` on PATH after it (the
/// logging shim, or the real tool).
pub struct Hooks {
    dir: TempDir,
    next_dir: Option<PathBuf>,
    hooks: Vec<Hook>,
    secret: Option<String>,
    tools: BTreeSet<String>,
}

impl Hooks {
    /// `next_dir`: the directory whose `tool` the shims exec when it has
    /// one (the [`PathShims`] bin dir); otherwise the real tool.
    pub fn new(next_dir: Option<&Path>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("runnerctl-hooks-")
            .tempdir()
            .expect("hooks dir");
        let mut hooks = Hooks {
            dir,
            next_dir: next_dir.map(Path::to_path_buf),
            hooks: Vec::new(),
            secret: None,
            tools: BTreeSet::new(),
        };
        for tool in ["nix", "git", "skopeo"] {
            hooks.tools.insert(tool.to_string());
        }
        hooks.write_all();
        hooks
    }

    pub fn bin_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Hold the `nth` (1-based) call of `tool` whose argv starts with
    /// `words` (so `git commit` matches runnerctl's `git commit …`, not the
    /// `git -C … cat-file commit …` that Nix runs to fetch an input).
    pub fn hold(&mut self, tool: &str, words: &[&str], nth: u32, when: When) -> HookHandle {
        self.hold_after_running(tool, words, nth, when, "")
    }

    /// [`hold`](Self::hold), and before holding a `When::Before` call the
    /// shim runs the shell `script` (for example, to leave an orphan).
    pub fn hold_after_running(
        &mut self,
        tool: &str,
        words: &[&str],
        nth: u32,
        when: When,
        script: &str,
    ) -> HookHandle {
        self.tools.insert(tool.to_string());
        self.hooks.push(Hook {
            tool: tool.to_string(),
            words: words.iter().map(|w| w.to_string()).collect(),
            nth,
            when,
            script: script.to_string(),
        });
        self.write_all();
        HookHandle {
            dir: self.dir.path().to_path_buf(),
            index: self.hooks.len() - 1,
        }
    }

    /// Record, for every call, whether `secret` appears in the child's
    /// environment (`env-leaks.log`), and for skopeo the mode of every
    /// authfile argument (`authfiles.log`: `MODE PATH` per argument).
    pub fn probe_secret(&mut self, secret: &str) {
        self.secret = Some(secret.to_string());
        self.write_all();
    }

    /// `(mode, path)` of every authfile skopeo was given, as seen from
    /// inside skopeo's shim while the file existed.
    pub fn authfiles(&self) -> Vec<(String, PathBuf)> {
        fs::read_to_string(self.dir.path().join("authfiles.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(m, p)| (m.to_string(), PathBuf::from(p)))
            .collect()
    }

    /// Lines `TOOL ARGV…` of calls whose environment held the secret.
    pub fn env_leaks(&self) -> String {
        fs::read_to_string(self.dir.path().join("env-leaks.log")).unwrap_or_default()
    }

    fn next_for(&self, tool: &str) -> PathBuf {
        if let Some(dir) = &self.next_dir {
            let p = dir.join(tool);
            if p.is_file() {
                return p;
            }
        }
        find_on_path(tool, self.dir.path())
            .unwrap_or_else(|| panic!("{tool} is not on PATH, cannot hook it"))
    }

    fn write_all(&self) {
        for tool in &self.tools {
            self.write(tool);
        }
    }

    fn write(&self, tool: &str) {
        let d = self.dir.path().display().to_string();
        let mut s = String::from("#!/bin/sh\n# runnerctl fault-injection hook\n");
        let _ = writeln!(
            s,
            "next={}\nd={}\ntool={}",
            sh_quote(&self.next_for(tool).display().to_string()),
            sh_quote(&d),
            sh_quote(tool)
        );
        s.push_str(
            "us=$(printf '\\037')\njoined=$us\nfor a in \"$@\"; do joined=\"$joined$a$us\"; done\n",
        );
        if let Some(secret) = &self.secret {
            let _ = writeln!(
                s,
                "if env | grep -F -q -e {}; then printf '%s %s\\n' \"$tool\" \"$*\" >>\"$d/env-leaks.log\"; fi",
                sh_quote(secret)
            );
            if tool == "skopeo" {
                s.push_str(
                    "prev=\nfor a in \"$@\"; do\n  \
                     case \"$prev\" in --authfile|--src-authfile|--dest-authfile)\n    \
                     printf '%s %s\\n' \"$(stat -c %a \"$a\" 2>/dev/null || echo missing)\" \"$a\" >>\"$d/authfiles.log\";;\n  \
                     esac\n  \
                     case \"$a\" in --authfile=*|--src-authfile=*|--dest-authfile=*)\n    \
                     f=${a#*=}; printf '%s %s\\n' \"$(stat -c %a \"$f\" 2>/dev/null || echo missing)\" \"$f\" >>\"$d/authfiles.log\";;\n  \
                     esac\n  \
                     prev=$a\ndone\n",
                );
            }
        }
        for (i, h) in self.hooks.iter().enumerate() {
            if h.tool != tool {
                continue;
            }
            let pattern: String = h
                .words
                .iter()
                .map(|w| sh_quote(w))
                .collect::<Vec<_>>()
                .join("\"$us\"");
            // While held, the shim records the signals it gets (and then
            // ends as the signal would have ended it), so a test can tell a
            // forwarded SIGTERM from a SIGKILL at the end of a grace period.
            let hold = format!(
                "trap 'echo TERM >>\"$d/hook{i}.signals\"; exit 143' TERM\n    \
                 trap 'echo INT >>\"$d/hook{i}.signals\"; exit 130' INT\n    \
                 trap 'echo HUP >>\"$d/hook{i}.signals\"; exit 129' HUP\n    \
                 : >\"$d/hook{i}.fired\"\n    \
                 while [ ! -e \"$d/hook{i}.release\" ]; do sleep 0.05; done\n    \
                 trap - TERM INT HUP\n"
            );
            let action = match h.when {
                When::Before => format!("{}\n    {hold}", h.script),
                When::During => format!(
                    "\"$next\" \"$@\" &\n    p=$!\n    {hold}    wait \"$p\"; rc=$?; echo \"$rc\" >\"$d/hook{i}.rc\"; exit \"$rc\"\n"
                ),
                When::After => format!(
                    "\"$next\" \"$@\"; rc=$?; echo \"$rc\" >\"$d/hook{i}.rc\"\n    {hold}    exit \"$rc\"\n"
                ),
            };
            let _ = write!(
                s,
                "case \"$joined\" in \"$us\"{pattern}\"$us\"*)\n  \
                 n=1; while ! mkdir \"$d/.hook{i}.$n\" 2>/dev/null; do n=$((n+1)); done\n  \
                 if [ \"$n\" -eq {nth} ]; then\n    {action}  fi;;\nesac\n",
                nth = h.nth,
            );
        }
        s.push_str("exec \"$next\" \"$@\"\n");
        write_executable(&self.dir.path().join(tool), &s);
    }
}
