//! Logging and fault-injecting wrappers put first on PATH.

use super::*;

#[derive(Clone)]
pub struct Fault {
    subcommand: Vec<String>,
    times: u32,
    exit_code: i32,
    message: String,
}

#[derive(Clone)]
pub struct Shim {
    real: PathBuf,
    log: bool,
    faults: Vec<Fault>,
}

/// A temp bin dir to put first on PATH, holding wrappers for named tools.
///
/// - [`log_calls`](Self::log_calls): appends each call's argv to
///   `<dir>/<tool>.log` (one line per call, args separated by `\x1f`) and
///   `exec`s the real tool.
/// - [`fail_once`](Self::fail_once) / [`fail_times`](Self::fail_times):
///   the first N calls whose argv contains the subcommand words (as
///   consecutive whole arguments, e.g. `["push"]` or `["flake", "update"]`)
///   print a message on stderr and exit with the given code; later calls
///   pass through.
///
/// The real tool is resolved on the PATH at the time of the first call for
/// that tool (ignoring this dir).
pub struct PathShims {
    dir: TempDir,
    shims: BTreeMap<String, Shim>,
}

pub const FIELD_SEP: char = '\u{1f}';

impl PathShims {
    pub fn new() -> Self {
        PathShims {
            dir: new_tempdir("shims"),
            shims: BTreeMap::new(),
        }
    }

    /// The directory to prepend to PATH.
    pub fn bin_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `bin_dir` followed by the current PATH.
    pub fn path_env(&self) -> String {
        let outer = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string());
        format!("{}:{outer}", self.bin_dir().display())
    }

    /// Logs every call of `tool` (then runs the real one).
    pub fn log_calls(&mut self, tool: &str) -> &mut Self {
        self.shim(tool).log = true;
        self.write(tool);
        self
    }

    /// The first call of `tool` with `subcommand` fails with `exit_code`
    /// and `message` on stderr; later calls pass through.
    pub fn fail_once(
        &mut self,
        tool: &str,
        subcommand: &[&str],
        exit_code: i32,
        message: &str,
    ) -> &mut Self {
        self.fail_times(tool, subcommand, 1, exit_code, message)
    }

    /// Like [`fail_once`](Self::fail_once) for the first `times` calls.
    pub fn fail_times(
        &mut self,
        tool: &str,
        subcommand: &[&str],
        times: u32,
        exit_code: i32,
        message: &str,
    ) -> &mut Self {
        assert!(!subcommand.is_empty(), "fail_times needs a subcommand");
        self.shim(tool).faults.push(Fault {
            subcommand: subcommand.iter().map(|s| s.to_string()).collect(),
            times,
            exit_code,
            message: message.to_string(),
        });
        self.write(tool);
        self
    }

    /// Argv (without the program name) of every logged call of `tool`.
    pub fn calls(&self, tool: &str) -> Vec<Vec<String>> {
        let log = self.dir.path().join(format!("{tool}.log"));
        let text = fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .map(|l| {
                l.split(FIELD_SEP)
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect()
            })
            .collect()
    }

    /// Logged calls of `tool` whose argv contains `subcommand` (consecutive
    /// whole arguments), e.g. `count("nix", &["build"])`.
    pub fn count(&self, tool: &str, subcommand: &[&str]) -> usize {
        self.calls(tool)
            .iter()
            .filter(|argv| {
                argv.windows(subcommand.len())
                    .any(|w| w.iter().zip(subcommand).all(|(a, b)| a == b))
            })
            .count()
    }

    /// How many times a fault of `tool` has fired so far.
    pub fn faults_fired(&self, tool: &str) -> usize {
        let Some(shim) = self.shims.get(tool) else {
            return 0;
        };
        (0..shim.faults.len())
            .map(|i| {
                fs::read_to_string(self.fault_counter(tool, i))
                    .map(|s| s.lines().count())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn fault_counter(&self, tool: &str, index: usize) -> PathBuf {
        self.dir.path().join(format!(".{tool}.fault{index}.fired"))
    }

    fn shim(&mut self, tool: &str) -> &mut Shim {
        let dir = self.dir.path().to_path_buf();
        self.shims.entry(tool.to_string()).or_insert_with(|| Shim {
            real: find_on_path(tool, &dir)
                .unwrap_or_else(|| panic!("{tool} is not on PATH, cannot wrap it")),
            log: false,
            faults: Vec::new(),
        })
    }

    fn write(&self, tool: &str) {
        let Some(shim) = self.shims.get(tool) else {
            return;
        };
        let mut s = String::from("#!/bin/sh\n# runnerctl test shim\n");
        let _ = writeln!(s, "real={}", sh_quote(&shim.real.display().to_string()));
        s.push_str(
            "us=$(printf '\\037')\njoined=$us\nfor a in \"$@\"; do joined=\"$joined$a$us\"; done\n",
        );
        if shim.log {
            let log = self.dir.path().join(format!("{tool}.log"));
            let _ = writeln!(
                s,
                "printf '%s\\n' \"$joined\" >>{}",
                sh_quote(&log.display().to_string())
            );
        }
        for (i, f) in shim.faults.iter().enumerate() {
            let pattern: String = f
                .subcommand
                .iter()
                .map(|w| sh_quote(w))
                .collect::<Vec<_>>()
                .join("\"$us\"");
            let counter = sh_quote(&self.fault_counter(tool, i).display().to_string());
            let _ = write!(
                s,
                "case \"$joined\" in *\"$us\"{pattern}\"$us\"*)\n  \
                 n=$(cat {counter} 2>/dev/null | wc -l)\n  \
                 if [ \"$n\" -lt {times} ]; then\n    \
                 echo fired >>{counter}\n    \
                 printf '%s\\n' {msg} >&2\n    \
                 exit {code}\n  \
                 fi;;\nesac\n",
                times = f.times,
                msg = sh_quote(&f.message),
                code = f.exit_code,
            );
        }
        s.push_str("exec \"$real\" \"$@\"\n");
        write_executable(&self.dir.path().join(tool), s);
    }
}

impl Default for PathShims {
    fn default() -> Self {
        Self::new()
    }
}

/// First executable `tool` on PATH outside `exclude`.
pub fn find_on_path(tool: &str, exclude: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d != exclude)
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
