//! nix/image.nix evaluated against the stand-in package set
//! (tests/nix/stubs.nix). The stand-in builders record their arguments, so
//! these tests see exactly what the image would be built from: the
//! dockerTools call, its config, and every piece in its contents.

mod nix_support;

use nix_support::{
    array_at, at, copy_from_repo, failure_stderr, json_output, str_at, stub_path, OfflineNix,
};
use serde_json::{json, Value};

/// nixpkgs' lastModified in the committed flake.lock: 2026-06-29T09:01:53Z.
const LAST_MODIFIED: i64 = 1_782_723_713;
const NIXPKGS_REV: &str = "b5aa0fbd538984f6e3d201be0005b4463d8b09f8";
const SOURCE_URL: &str = "https://forgejo.example/infra/runners";
const REVISION: &str = "3c1f0a9d2b7e4f6a8c5d1e0b9a7f6e5d4c3b2a10";

const DEFAULT_NIX_CONF: &str = "\
build-users-group =
experimental-features = nix-command flakes
sandbox = false
substituters = https://cache.nixos.org
trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
";

fn image_args() -> Value {
    json!({
        "nixpkgsRev": NIXPKGS_REV,
        "nixpkgsLastModified": LAST_MODIFIED,
        "sourceUrl": SOURCE_URL,
        "revision": REVISION,
    })
}

fn eval_image(args: &Value) -> Value {
    OfflineNix::new().eval_file("eval-image.nix", args)
}

/// The arguments of the dockerTools call.
fn image_call(image: &Value) -> &Value {
    at(image, &["args"])
}

/// The one item of the image's contents that `matches`.
fn content<'a>(image: &'a Value, what: &str, matches: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = array_at(image, &["args", "contents"])
        .iter()
        .filter(|item| matches(item))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {what} in the image contents, found {found:#?}"
    );
    found[0]
}

fn built_by(item: &Value, builder: &str) -> bool {
    item.get("stub").and_then(Value::as_str) == Some(builder)
}

fn nix_conf(image: &Value) -> &str {
    let item = content(image, "/etc/nix/nix.conf", |item| {
        built_by(item, "writeTextDir") && item["args"]["path"] == "etc/nix/nix.conf"
    });
    str_at(item, &["args", "text"])
}

fn run_command<'a>(image: &'a Value, name: &str) -> &'a Value {
    content(image, name, |item| {
        built_by(item, "runCommand") && item["args"]["name"] == name
    })
}

fn root_env(image: &Value) -> &Value {
    content(image, "root buildEnv", |item| built_by(item, "buildEnv"))
}

#[test]
fn nix_conf_has_exactly_the_expected_text() {
    let image = eval_image(&image_args());
    assert_eq!(nix_conf(&image), DEFAULT_NIX_CONF);
}

#[test]
fn nix_conf_substituters_and_keys_can_be_overridden() {
    let mut args = image_args();
    args["substituters"] = json!(["https://cache.example", "https://cache.nixos.org"]);
    args["trustedPublicKeys"] = json!([
        "cache.example-1:AAAA",
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
    ]);
    let image = eval_image(&args);
    assert_eq!(
        nix_conf(&image),
        "build-users-group =\n\
         experimental-features = nix-command flakes\n\
         sandbox = false\n\
         substituters = https://cache.example https://cache.nixos.org\n\
         trusted-public-keys = cache.example-1:AAAA \
         cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n"
    );
}

#[test]
fn config_runs_bash_with_path_certificates_home_user_and_nix_path() {
    let image = eval_image(&image_args());
    let config = at(image_call(&image), &["config"]);
    assert_eq!(config["Cmd"], json!(["/bin/bash"]));
    assert_eq!(
        config["Env"],
        json!([
            // `nix profile install` results are found, before the image's own.
            "PATH=/root/.nix-profile/bin:/nix/var/nix/profiles/default/bin:/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
            "NIX_SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
            "HOME=/root",
            "USER=root",
            // `nix-shell -p` and <nixpkgs> go through the flake registry.
            "NIX_PATH=nixpkgs=flake:nixpkgs"
        ])
    );
}

#[test]
fn labels_name_the_source_revision_and_nixpkgs_snapshot() {
    let image = eval_image(&image_args());
    let labels = at(image_call(&image), &["config", "Labels"]);
    assert_eq!(labels["org.opencontainers.image.source"], SOURCE_URL);
    assert_eq!(labels["org.opencontainers.image.revision"], REVISION);
    assert_eq!(labels["org.nixos.nixpkgs.rev"], NIXPKGS_REV);
    assert_eq!(
        labels["org.opencontainers.image.created"],
        "2026-06-29T09:01:53Z"
    );
    assert_eq!(labels["org.opencontainers.image.version"], "20260629");
}

#[test]
fn created_and_tag_follow_nixpkgs_last_modified_and_layer_times_do_not() {
    let mut later = image_args();
    // One leap day later: 2028-02-29T00:00:00Z.
    later["nixpkgsLastModified"] = json!(1_835_395_200);
    for (args, created, date) in [
        (image_args(), "2026-06-29T09:01:53Z", "20260629"),
        (later, "2028-02-29T00:00:00Z", "20280229"),
    ] {
        let image = eval_image(&args);
        let call = image_call(&image);
        assert_eq!(call["created"], created);
        assert_eq!(call["tag"], date);
        // Layer file times stay put, so unchanged store paths keep identical layers.
        assert_eq!(call["mtime"], "1970-01-01T00:00:01Z");
    }
}

#[test]
fn timestamp_conversion_matches_known_dates_and_the_time_crate() {
    let known = [
        (0_i64, "1970-01-01T00:00:00Z"),
        (86_399, "1970-01-01T23:59:59Z"),
        (68_256_000, "1972-03-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (978_307_199, "2000-12-31T23:59:59Z"),
        (1_782_723_713, "2026-06-29T09:01:53Z"),
        (4_102_444_800, "2100-01-01T00:00:00Z"),
        (4_107_542_400, "2100-03-01T00:00:00Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),
    ];
    // Plus a spread of pseudo-random instants up to the year 9999, checked
    // against the time crate.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let random = (0..300).map(|_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        i64::try_from((state >> 11) % 253_402_300_800).expect("below 2^53")
    });
    let seconds: Vec<i64> = known.iter().map(|(s, _)| *s).chain(random).collect();

    let converted = OfflineNix::new().eval_file("eval-timestamps.nix", &json!(seconds));
    let converted = converted.as_array().expect("a list of conversions");
    assert_eq!(converted.len(), seconds.len());

    for ((s, expected), got) in known.iter().zip(converted) {
        assert_eq!(got["iso8601"], *expected, "iso8601 of {s}");
        assert_eq!(got["date"], expected[..10].replace('-', ""), "date of {s}");
    }
    let rfc3339 = time::format_description::well_known::Rfc3339;
    for (s, got) in seconds.iter().zip(converted) {
        let expected = time::OffsetDateTime::from_unix_timestamp(*s)
            .expect("in range")
            .format(&rfc3339)
            .expect("formattable");
        assert_eq!(got["iso8601"], expected, "iso8601 of {s}");
    }
}

#[test]
fn root_env_links_bin_of_exactly_the_eleven_packages() {
    let image = eval_image(&image_args());
    let env = root_env(&image);
    assert_eq!(env["args"]["pathsToLink"], json!(["/bin"]));

    let paths = array_at(env, &["args", "paths"]);
    let names: Vec<String> = paths
        .iter()
        .map(|path| match path {
            Value::String(store_path) => store_path.clone(),
            built => str_at(built, &["path"]).to_owned(),
        })
        .collect();
    let expected: Vec<String> = [
        "bash",
        "coreutils",
        "git",
        "curl",
        "nix-binaries",
        "gnutar",
        "gzip",
        "xz",
        "zstd",
        "bzip2",
        "nodejs",
    ]
    .iter()
    .map(|name| stub_path(name))
    .collect();
    assert_eq!(names, expected);
    assert!(
        !names.contains(&stub_path("nix")),
        "the whole nix package must not be linked into the image root"
    );
}

#[test]
fn nix_binaries_link_only_the_executables_of_nix() {
    let image = eval_image(&image_args());
    let nix_binaries = array_at(root_env(&image), &["args", "paths"])
        .iter()
        .find(|path| built_by(path, "runCommand") && path["args"]["name"] == "nix-binaries")
        .expect("a nix-binaries runCommand among the root env paths");
    let script = str_at(nix_binaries, &["args", "script"]);
    assert!(
        script.contains(&format!("for exe in {}/bin/*; do", stub_path("nix"))),
        "nix-binaries must link each file of nix's bin/: {script}"
    );
    assert!(script.contains(r#"ln -s "$exe" "$out/bin/""#), "{script}");
    assert!(
        !script.contains("share") && !script.contains("lib/"),
        "nix-binaries links only bin/: {script}"
    );
}

#[test]
fn certificates_are_at_both_bundle_paths() {
    let image = eval_image(&image_args());
    let certs = run_command(&image, "runner-ca-certificates");
    let script = str_at(certs, &["args", "script"]);
    let bundle = format!("{}/etc/ssl/certs/ca-bundle.crt", stub_path("cacert"));
    for target in ["ca-bundle.crt", "ca-certificates.crt"] {
        let link = format!(r#"ln -s {bundle} "$out/etc/ssl/certs/{target}""#);
        assert!(script.contains(&link), "missing `{link}` in:\n{script}");
    }
    // The file SSL_CERT_FILE names is one the image provides.
    let env = array_at(image_call(&image), &["config", "Env"]);
    assert!(env.contains(&json!("SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt")));
}

#[test]
fn scaffold_provides_users_nsswitch_env_tmp_and_root() {
    let image = eval_image(&image_args());
    let scaffold = run_command(&image, "runner-scaffold");
    let env = at(scaffold, &["args", "env"]);
    let script = str_at(scaffold, &["args", "script"]);

    let passwd = str_at(env, &["passwd"]);
    assert!(
        passwd
            .lines()
            .any(|line| line.starts_with("root:x:0:0:") && line.ends_with(":/root:/bin/bash")),
        "no root user with home /root and /bin/bash in:\n{passwd}"
    );
    let group = str_at(env, &["group"]);
    assert!(
        group.lines().any(|line| line == "root:x:0:"),
        "no root group in:\n{group}"
    );
    let nsswitch = str_at(env, &["nsswitch"]);
    for line in ["passwd: files", "group: files", "hosts: files dns"] {
        assert!(
            nsswitch.lines().any(|l| l == line),
            "no `{line}` in:\n{nsswitch}"
        );
    }

    for (file, target) in [
        ("passwdPath", "etc/passwd"),
        ("groupPath", "etc/group"),
        ("nsswitchPath", "etc/nsswitch.conf"),
        ("osReleasePath", "etc/os-release"),
    ] {
        let copy = format!(r#"cp "${file}" "$out/{target}""#);
        assert!(script.contains(&copy), "missing `{copy}` in:\n{script}");
    }
    assert_eq!(
        env["passAsFile"],
        json!(["passwd", "group", "nsswitch", "osRelease"])
    );
    let usr_bin_env = format!(
        r#"ln -s {}/bin/env "$out/usr/bin/env""#,
        stub_path("coreutils")
    );
    assert!(
        script.contains(&usr_bin_env),
        "missing `{usr_bin_env}` in:\n{script}"
    );

    let extra = str_at(image_call(&image), &["extraCommands"]);
    let lines: Vec<&str> = extra.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"mkdir -p -m 1777 tmp"),
        "/tmp is not 1777:\n{extra}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("mkdir -p") && line.ends_with(" root")),
        "/root is not created:\n{extra}"
    );
}

#[test]
fn image_is_layered_uncompressed_and_registers_its_store() {
    let image = eval_image(&image_args());
    assert_eq!(image["stub"], "dockerTools.buildLayeredImage");
    let call = image_call(&image);
    assert_eq!(call["name"], "nixos");
    assert_eq!(call["compressor"], "none");
    assert_eq!(call["includeNixDB"], true);
    // README: "With `maxLayers = 100`, the 99 store paths that the most
    // other paths depend on each get a layer of their own".
    assert_eq!(call["maxLayers"], 100);
    assert_eq!(
        array_at(call, &["contents"]).len(),
        5,
        "contents: root env, nix.conf, certificates, iana-etc, scaffold"
    );
}

#[test]
fn os_release_names_nixos_and_the_nixpkgs_snapshot() {
    let image = eval_image(&image_args());
    let scaffold = run_command(&image, "runner-scaffold");
    let os_release = str_at(at(scaffold, &["args", "env"]), &["osRelease"]);
    let rev = str_at(&image_args(), &["nixpkgsRev"]).to_string();
    let date = str_at(image_call(&image), &["tag"]).to_string();
    for line in [
        "NAME=NixOS".to_string(),
        "ID=nixos".to_string(),
        format!("VERSION_ID=\"{date}\""),
        format!("BUILD_ID=\"{rev}\""),
    ] {
        assert!(
            os_release.lines().any(|l| l == line),
            "no `{line}` in /etc/os-release:\n{os_release}"
        );
    }
}

#[test]
fn services_and_protocols_come_from_iana_etc() {
    let image = eval_image(&image_args());
    let contents = array_at(image_call(&image), &["contents"]);
    let iana = stub_path("iana-etc");
    assert!(
        contents
            .iter()
            .any(|item| item.as_str() == Some(iana.as_str())
                || item["outPath"].as_str() == Some(iana.as_str())),
        "iana-etc ({iana}) is not among the image contents: {contents:?}"
    );
}

/// `(import ./tests/nix/stubs.nix { }).BUILDER ARGS`, its `name` forced.
fn stub_call(builder: &str, args: &str) -> String {
    format!("((import ./tests/nix/stubs.nix {{ }}).{builder} {args}).name")
}

#[test]
fn stand_in_builders_reject_arguments_nixpkgs_does_not_take() {
    let nix = OfflineNix::new();
    for (builder, good, misspelt) in [
        (
            "dockerTools.buildLayeredImage",
            r#"name = "nixos"; compressor = "none"; maxLayers = 100; mtime = "1970-01-01T00:00:01Z";"#,
            "maxLayer",
        ),
        (
            "dockerTools.streamLayeredImage",
            r#"name = "nixos"; contents = [ ]; includeNixDB = true;"#,
            "content",
        ),
        (
            "buildEnv",
            r#"name = "env"; paths = [ ]; pathsToLink = [ "/bin" ];"#,
            "pathToLink",
        ),
    ] {
        // The same call without the misspelt argument evaluates, so the
        // failure below is the argument's doing.
        let name = json_output(&mut nix.command([
            "eval",
            "--json",
            "--impure",
            "--expr",
            &stub_call(builder, &format!("{{ {good} }}")),
        ]));
        assert!(name.is_string(), "{builder}: {name}");

        let stderr = failure_stderr(&mut nix.command([
            "eval",
            "--json",
            "--impure",
            "--expr",
            &stub_call(builder, &format!("{{ {good} {misspelt} = 1; }}")),
        ]));
        assert!(
            stderr.contains(&format!(
                "{builder} (stand-in) called with unexpected argument `{misspelt}`"
            )),
            "{builder} did not name the unexpected argument `{misspelt}`:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("nixpkgs' {builder} takes only")),
            "{builder} does not say what it takes:\n{stderr}"
        );
    }
}

#[test]
fn stand_in_builders_demand_their_required_arguments_and_a_known_compressor() {
    let nix = OfflineNix::new();
    for (builder, args, message) in [
        (
            "buildEnv",
            r#"{ name = "env"; }"#,
            "buildEnv (stand-in) called without required argument `paths`",
        ),
        (
            "dockerTools.buildLayeredImage",
            r#"{ tag = "1"; }"#,
            "dockerTools.buildLayeredImage (stand-in) called without required argument `name`",
        ),
        (
            // Only buildLayeredImage compresses.
            "dockerTools.streamLayeredImage",
            r#"{ name = "nixos"; compressor = "none"; }"#,
            "dockerTools.streamLayeredImage (stand-in) called with unexpected argument `compressor`",
        ),
        (
            "dockerTools.buildLayeredImage",
            r#"{ name = "nixos"; compressor = "xz"; }"#,
            "compressor must be one of `none`, `gz`, `zstd`, not `xz`",
        ),
    ] {
        let stderr = failure_stderr(&mut nix.command([
            "eval",
            "--json",
            "--impure",
            "--expr",
            &stub_call(builder, args),
        ]));
        assert!(
            stderr.contains(message),
            "{builder} {args}: expected {message:?}:\n{stderr}"
        );
    }
}

#[test]
fn a_misspelt_argument_in_nix_fails_the_image_evaluation() {
    let nix = OfflineNix::new();
    let image_expr = |nix_dir: &std::path::Path| {
        format!(
            "import ./tests/nix/inspect.nix ((import ./tests/nix/stubs.nix {{ }}).callPackage \
             {}/image.nix (builtins.fromJSON ''{}''))",
            nix_dir.display(),
            image_args()
        )
    };
    for (file, right, wrong) in [
        ("image.nix", "  maxLayers = 100;\n", "  maxLayer = 100;\n"),
        (
            "root-env.nix",
            "  pathsToLink = [ \"/bin\" ];\n",
            "  pathToLink = [ \"/bin\" ];\n",
        ),
    ] {
        let copy = nix.scratch().join(file.trim_end_matches(".nix"));
        copy_from_repo("nix", &copy);
        let nix_dir = copy.join("nix");
        // The copy as it is evaluates, and builds the image.
        let image = json_output(&mut nix.command([
            "eval",
            "--json",
            "--impure",
            "--expr",
            &image_expr(&nix_dir),
        ]));
        assert_eq!(image["stub"], "dockerTools.buildLayeredImage");

        let path = nix_dir.join(file);
        let text = std::fs::read_to_string(&path).expect("read the copied nix file");
        assert_eq!(
            text.matches(right).count(),
            1,
            "nix/{file} no longer has {right:?}; update this test"
        );
        std::fs::write(&path, text.replace(right, wrong)).expect("write the misspelt copy");
        let stderr = failure_stderr(&mut nix.command([
            "eval",
            "--json",
            "--impure",
            "--expr",
            &image_expr(&nix_dir),
        ]));
        let argument = wrong.split_whitespace().next().expect("an argument name");
        assert!(
            stderr.contains(&format!("called with unexpected argument `{argument}`")),
            "misspelling {argument} in nix/{file} did not fail the evaluation on it:\n{stderr}"
        );
    }
}
